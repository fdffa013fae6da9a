"""Building a `Recipe` from a merged dict of sections: each component section is looked up in the
registry and its inline parameters structured into the component's own parameter class."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from pccore.core.errors import PluginError, RecipeError, UsageError
from pccore.recipe.problems import Problems, structure, unknown
from pccore.recipe.render import render_value
from pccore.recipe.schema import (
    COMPONENT_KINDS,
    DEFAULT_COMPONENTS,
    SECTION_CLASSES,
    SECTIONS,
    ComponentRegistry,
    Recipe,
    core_keys,
    default_registry,
)

Origins = dict[tuple[str, ...], str]
"""Where each section and key came from: (section,) or (section, key) -> a file or `--set` argument."""


def _component_section(
    section: str, raw: Mapping[str, Any], registry: ComponentRegistry, problems: Problems
) -> Any:
    """A component section: look its component up, structure the inline params into its params class."""
    kind = COMPONENT_KINDS[section]
    core = core_keys(section)
    name = raw.get("name", DEFAULT_COMPONENTS[section])
    if not isinstance(name, str):
        article = "an" if kind[0] in "aeiou" else "a"
        expected = f"a string (the name of {article} {kind})"
        problems.add((section, "name"), f"expected {expected}, got {render_value(name)}")
        return None
    try:
        component = registry.component(kind, name)
    except UsageError as err:
        problems.add((section, "name"), str(err))
        return None
    params_cls = component.params
    if not (isinstance(params_cls, type) and attrs.has(params_cls)):
        raise PluginError(f"{kind} {name!r}: its params {params_cls!r} is not an attrs class")
    clash = sorted({f.name for f in attrs.fields(params_cls)} & set(core))
    if clash:
        raise PluginError(
            f"{kind} {name!r} has parameters named {', '.join(clash)}, which [{section}] uses itself; "
            "the plugin must rename them"
        )
    owner = f'{kind} "{name}"'
    params_raw = {k: v for k, v in raw.items() if k not in core}
    params = structure(params_raw, params_cls, (section,), problems, extra_keys=core, owner=owner)
    core_raw = {k: v for k, v in raw.items() if k in core}
    section_obj = structure({**core_raw, "name": name, "params": params}, SECTION_CLASSES[section],
                            (section,), problems)
    return section_obj if params is not None else None


def build_recipe(
    data: Mapping[str, Any], source: Path | None, registry: ComponentRegistry, origins: Origins
) -> Recipe:
    """Structure a merged recipe dict into a `Recipe`, reporting every problem at once."""
    problems = Problems(label=str(source) if source is not None else "<recipe>", origins=origins)
    for key in data:
        if key == "extends":
            problems.add((key,), "extends is resolved only when a recipe is loaded from a file (load_recipe)")
        elif key not in SECTION_CLASSES:
            problems.add((key,), unknown("section", key, SECTIONS))
    sections: dict[str, Any] = {}
    for section in SECTIONS:
        raw = data.get(section, {})
        if not isinstance(raw, Mapping):
            problems.add((section,), f"expected a table [{section}], got {render_value(raw)}")
            continue
        if section in COMPONENT_KINDS:
            sections[section] = _component_section(section, raw, registry, problems)
        else:
            sections[section] = structure(raw, SECTION_CLASSES[section], (section,), problems)
    problems.raise_if_any()
    run = sections["run"]
    if not run.name and source is not None:
        sections["run"] = attrs.evolve(run, name=source.stem)
    return Recipe(**sections, source=source)


def recipe_from_dict(
    data: Mapping[str, Any],
    source: str | os.PathLike[str] | None = None,
    registry: ComponentRegistry | None = None,
) -> Recipe:
    """Build a recipe from a parsed TOML dict (no `extends`), defaults filled; RecipeError on any problem."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source or '<recipe>'}: expected a table of sections, got {render_value(data)}")
    registry = default_registry() if registry is None else registry
    return build_recipe(data, None if source is None else Path(source), registry, {})
