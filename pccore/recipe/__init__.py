"""TOML recipes: the schema, loading (`extends` chains, `--set` overrides), error reporting with key
paths, writing a resolved recipe back as TOML (the `pccore recipe` command is `pccore.inspect.recipe_check`).

Every value is checked strictly (no coercion between strings, numbers and booleans) and every error names
the file, the key path and what was expected. The modules, by responsibility: `schema` (the sections),
`convert` (the strict converter), `problems` (errors with key paths), `build` (a dict into a `Recipe`),
`load` (files, `extends`, `--set`) and `render` (TOML and flat output).
"""

from pccore.recipe.build import recipe_from_dict
from pccore.recipe.load import load_recipe
from pccore.recipe.render import flatten_recipe, recipe_to_dict, recipe_to_toml
from pccore.recipe.schema import (
    COMPONENT_KINDS,
    DEFAULT_COMPONENTS,
    SECTION_CLASSES,
    SECTIONS,
    ComponentRegistry,
    ComponentSection,
    DataSection,
    InferenceSection,
    LogSection,
    ModelSection,
    OptimizerSection,
    Recipe,
    RunSection,
    TrainSection,
)

__all__ = [
    "COMPONENT_KINDS",
    "DEFAULT_COMPONENTS",
    "SECTIONS",
    "SECTION_CLASSES",
    "ComponentRegistry",
    "ComponentSection",
    "DataSection",
    "InferenceSection",
    "LogSection",
    "ModelSection",
    "OptimizerSection",
    "Recipe",
    "RunSection",
    "TrainSection",
    "flatten_recipe",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_dict",
    "recipe_to_toml",
]
