"""Study files: what `pccore tune` searches, read from TOML and checked before any trial runs.

A study file names a recipe (relative to the study file), how many finished trials to aim for, the
sampler and pruner, fixed overrides (`[set]`) and the searched keys (`[space]`). Every key of `[set]` and
`[space]` is checked against the recipe and its chosen components with the recipe loader itself, so the
errors name the key with the close matches `pccore recipe check` gives; every searched bound and choice is
checked as a value of its key too. A space entry is a range `{ low, high }` (integers when both bounds are
integers; `log = true` or `step = ...` optional) or a choice list `{ choices = [...] }`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from pccore.core.errors import RecipeError, UsageError
from pccore.recipe import Recipe, load_recipe
from pccore.recipe.load import parse_toml_file
from pccore.recipe.problems import Problems, structure, unknown
from pccore.recipe.render import render_value
from pccore.recipe.schema import COMPONENT_KINDS, expect

FIXED_KEYS = ("data.validation_fraction", "data.validation_seed")
"""Keys a study may set but not search: the split defines the objective, so every trial must share it."""

RANGE_KEYS = ("low", "high", "log", "step")
CHOICE_KEYS = ("choices",)


@attrs.frozen
class StudySettings:
    """The top-level keys of a study file."""

    recipe: str
    trials: int | None = attrs.field(
        default=None, validator=expect(lambda v: v is None or v >= 1, "an integer >= 1")
    )
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["none", "median", "hyperband"] = "median"
    startup_trials: int = attrs.field(
        default=10, validator=expect(lambda v: v >= 1, "an integer >= 1")
    )  # TPE's random start (Optuna's default): a small study lowers it so that TPE takes over within its budget
    seed: int = attrs.field(default=0, validator=expect(lambda v: v >= 0, "an integer >= 0"))
    name: str = attrs.field(
        default="",
        validator=expect(lambda v: v not in (".", "..") and not set(v) & set("/\\"),
                         'a folder name (no "/" or "\\", not "." or "..")'),
    )


@attrs.frozen
class Range:
    """A searched interval: integers when `low` and `high` are, else real numbers."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int)

    def values(self) -> list[Any]:
        """The values checked against the recipe before any trial runs: the two bounds."""
        return [self.low, self.high]


@attrs.frozen
class Choice:
    """A searched list of values."""

    choices: tuple[Any, ...]

    def values(self) -> list[Any]:
        return list(self.choices)


SpaceEntry = Range | Choice


@attrs.frozen
class Study:
    """A checked study file: its settings, recipe path, fixed overrides and search space (dotted keys)."""

    path: Path
    settings: StudySettings
    recipe_path: Path
    fixed: dict[str, Any]
    space: dict[str, SpaceEntry]

    @property
    def name(self) -> str:
        """The study's name: `name` in the file, or the file's stem."""
        return self.settings.name or self.path.stem

    def recipe_for(self, params: Mapping[str, Any], label: str, registry: Any = None) -> Recipe:
        """The recipe with `[set]` and then `params` (dotted keys) applied; errors name the overrides as
        `label` followed by `key=value`."""
        overrides = [f"{key}={render_value(value)}" for key, value in {**self.fixed, **params}.items()]
        return load_recipe(self.recipe_path, overrides, registry=registry, overrides_label=label)

    def as_dict(self) -> dict[str, Any]:
        """The study as plain data (stored with the study, printed by `pccore tune show`)."""
        return {
            "study_file": str(self.path),
            "recipe": str(self.recipe_path),
            "set": dict(self.fixed),
            "space": {key: attrs.asdict(entry) for key, entry in self.space.items()},
        }


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"study file not found: {path}" if not path.exists() else f"{path}: not a file")
    return parse_toml_file(path, str(path), "the study file")


def _dotted_table(path: Path, table_name: str, table: Any, leaf_is_table: bool) -> dict[str, Any]:
    """`[set]` or `[space]` with dotted keys: `"train.epochs" = 3` as written, and `train.epochs = 3`
    (which TOML reads as a nested table) flattened to the same key."""
    if not isinstance(table, Mapping):
        raise RecipeError(f"{path}: {table_name}: expected a table [{table_name}], got {render_value(table)}")
    flat: dict[str, Any] = {}
    for key, value in table.items():
        nested = "." not in key and isinstance(value, Mapping) and (
            not leaf_is_table or all(isinstance(v, Mapping) for v in value.values())
        )
        if nested and value:
            for field, item in value.items():
                flat[f"{key}.{field}"] = item
        else:
            flat[key] = value
    for key in flat:
        section, dot, field = key.partition(".")
        if not dot or not section or not field or "." in field:
            raise RecipeError(f"{path}: [{table_name}] {key}: expected a key SECTION.KEY, e.g. \"inference.lr\"")
    return flat


def _range(path: Path, key: str, entry: Mapping[str, Any]) -> Range:
    where = f"{path}: [space] {key}"
    if "low" not in entry or "high" not in entry:
        raise UsageError(f"{where}: a range needs both low and high, got {render_value(dict(entry))}")
    low, high = entry["low"], entry["high"]
    kinds = {type(v) for v in (low, high)}
    if not kinds <= {int, float} or len(kinds) != 1:
        raise UsageError(
            f"{where}: low and high must both be integers (an integer range) or both numbers with a decimal "
            f"point (a real range), got low = {render_value(low)} and high = {render_value(high)}"
        )
    if not low < high:
        raise UsageError(f"{where}: low must be below high, got low = {render_value(low)}, high = {render_value(high)}")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise UsageError(f"{where}: log: expected true or false, got {render_value(log)}")
    if log and low <= 0:
        raise UsageError(f"{where}: a log range needs low > 0, got low = {render_value(low)}")
    step = entry.get("step")
    if step is not None:
        if log:
            raise UsageError(f"{where}: a range takes log = true or a step, not both")
        if type(step) is not type(low) or step <= 0:
            kind = "an integer" if isinstance(low, int) else "a number with a decimal point"
            raise UsageError(f"{where}: step: expected {kind} > 0 (like low and high), got {render_value(step)}")
        if isinstance(low, int) and (high - low) % step:
            raise UsageError(f"{where}: high - low = {high - low} is not a multiple of step = {step}")
    return Range(low, high, log, step)


def _choice(path: Path, key: str, choices: Any) -> Choice:
    where = f"{path}: [space] {key}"
    if not isinstance(choices, list) or not choices:
        raise UsageError(f"{where}: choices must be a non-empty list, got {render_value(choices)}")
    kinds = {type(c) for c in choices}
    if not kinds <= {bool, int, float, str}:
        raise UsageError(f"{where}: choices must be strings, numbers or booleans, got {render_value(choices)}")
    if len(kinds) > 1:
        hint = "; write every number with a decimal point (0.0, not 0)" if kinds == {int, float} else ""
        raise UsageError(f"{where}: choices must all have one type, got {render_value(choices)}{hint}")
    return Choice(tuple(choices))


def _space_entry(path: Path, key: str, entry: Any) -> SpaceEntry:
    """A `[space]` value as a Range or a Choice; anything else is an error naming the key."""
    shape = 'a range { low = ..., high = ... } (log = true or step = ... optional) or { choices = [...] }'
    if not isinstance(entry, Mapping):
        raise UsageError(f"{path}: [space] {key}: expected {shape}, got {render_value(entry)}")
    valid = CHOICE_KEYS if "choices" in entry else RANGE_KEYS
    for name in entry:
        if name not in valid:
            what = f"key in [space] {key}" + (" (a choice list takes only choices)" if valid == CHOICE_KEYS else "")
            raise UsageError(f"{path}: [space] {key}: {unknown(what, name, list(valid))}")
    if "choices" in entry:
        return _choice(path, key, entry["choices"])
    return _range(path, key, entry)


def read_study(path: str | Path, trials: int | None = None) -> Study:
    """Read a study file: its settings (`trials` overrides the file's), `[set]` and `[space]`, each entry's
    shape checked (the keys are checked against the recipe by `check_study`)."""
    path = Path(path)
    raw = _read(path)
    settings_raw = {k: v for k, v in raw.items() if k not in ("set", "space")}
    problems = Problems(label=str(path))
    settings = structure(settings_raw, StudySettings, (), problems, extra_keys=("set", "space"))
    problems.raise_if_any()
    if trials is not None:
        if trials < 1:
            raise UsageError(f"--trials {trials}: expected an integer >= 1")
        settings = attrs.evolve(settings, trials=trials)
    if settings.trials is None:
        raise UsageError(f"{path}: trials: required (the number of finished trials the study aims for), or "
                         "pass --trials N")
    fixed = _dotted_table(path, "set", raw.get("set", {}), leaf_is_table=False)
    space_raw = _dotted_table(path, "space", raw.get("space", {}), leaf_is_table=True)
    if not space_raw:
        raise UsageError(f"{path}: [space] is empty: give at least one key to search, e.g. "
                         '"inference.lr" = { low = 0.05, high = 1.0, log = true }')
    space = {key: _space_entry(path, key, entry) for key, entry in space_raw.items()}
    both = sorted(set(fixed) & set(space))
    if both:
        raise UsageError(f"{path}: {', '.join(both)} is in both [set] and [space]; a key is either fixed or searched")
    fixed_searched = [key for key in FIXED_KEYS if key in space]
    if fixed_searched:
        raise UsageError(f"{path}: [space] {fixed_searched[0]}: the validation split cannot be searched (every trial "
                         "must be scored on the same images); set it in [set]")
    recipe_path = Path(os.path.normpath(path.parent / settings.recipe))
    if not recipe_path.is_file():
        raise UsageError(f"{path}: recipe: file not found: {recipe_path} (paths are relative to the study file)")
    return Study(path, settings, recipe_path, fixed, space)


def check_study(study: Study, registry: Any = None) -> Recipe:
    """Check every key and value of `[set]` and `[space]` against the recipe before any trial runs (the
    recipe loader's own messages, naming the study file's table), and that the recipe holds a validation
    split; returns the recipe with `[set]` applied."""
    base = study.recipe_for({}, f"{study.path} [set]", registry)
    if base.data.validation_fraction <= 0:
        raise UsageError(
            f"{study.path}: the tuner optimises the validation top-1, but {study.recipe_path} with [set] has "
            'data.validation_fraction = 0; add "data.validation_fraction" = 0.2 (say) to [set], or set it in the '
            "recipe"
        )
    names = {key: entry for key, entry in study.space.items() if key.endswith(".name")}
    for key, entry in study.space.items():
        section = key.partition(".")[0]
        name_key = f"{section}.name"
        alternatives = [{}]
        if section in COMPONENT_KINDS and name_key in names and key != name_key:
            alternatives = [{name_key: name} for name in names[name_key].values()]
        for value in entry.values():
            for alternative in alternatives:
                study.recipe_for({**alternative, key: value}, f"{study.path} [space]", registry)
    return base
