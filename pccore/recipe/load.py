"""Loading recipes: reading TOML files, resolving `extends` chains and applying `--set` overrides, with
every value tagged by the file or argument it came from so that errors can name it."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pccore.core.errors import RecipeError, UsageError
from pccore.recipe.build import Origins, build_recipe
from pccore.recipe.problems import one_line, unknown
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
    param_names,
)
from pccore.recipe.syntax import explain

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    """Parse one TOML file, turning every way it can fail into a RecipeError naming the file."""
    if not path.exists():
        raise RecipeError(f"recipe file not found: {label}")
    if path.is_dir():
        raise RecipeError(f"{label}: is a directory, expected a TOML recipe file")
    return parse_toml_file(path, label, "the recipe")


def parse_toml_file(path: Path, label: str, what: str) -> dict[str, Any]:
    """Read and parse the TOML file `path` (`what` it is, for messages), turning every way that fails into a
    RecipeError naming `label`: unreadable, not UTF-8, or invalid TOML (a repeated key named with its line)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (some editors write one) is skipped
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{label}: invalid TOML: {explain(text, err)}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{label}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise RecipeError(f"{label}: cannot read {what}: {err.strerror or err}") from None


def _origins_of(data: Mapping[str, Any], where: str) -> Origins:
    """Tag every section and every key of a parsed file with where it came from."""
    origins: Origins = {}
    for section, value in data.items():
        origins[(section,)] = where
        if isinstance(value, Mapping):
            for key in value:
                origins[(section, key)] = where
    return origins


def _merge_tables(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of two tables; the child's values win."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def _renames(section: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether `new` names another component than `old` does in a component section."""
    return section in COMPONENT_KINDS and "name" in new and new["name"] != old.get(
        "name", DEFAULT_COMPONENTS[section]
    )


def _merge_extends(
    base: Mapping[str, Any], base_origins: Origins, child: Mapping[str, Any], child_origins: Origins
) -> tuple[dict[str, Any], Origins]:
    """Merge a child recipe over the one it extends. A component section in which the child names a
    different component drops the base's parameters (they were chosen for another component) but keeps
    the section's own keys."""
    out = dict(base)
    for section, value in child.items():
        old = out.get(section)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if _renames(section, old, value):
                old = {k: v for k, v in old.items() if k in core_keys(section)}
            out[section] = _merge_tables(old, value)
        else:
            out[section] = value
    return out, {**base_origins, **child_origins}


def _load_chain(path: Path, label: str, chain: list[tuple[Path, str]]) -> tuple[dict[str, Any], Origins]:
    """Read a recipe file and everything it extends, merged; `chain` holds the files that led here."""
    resolved = path.resolve()
    for seen, _ in chain:
        if seen == resolved:
            names = " -> ".join([lbl for _, lbl in chain] + [label])
            raise RecipeError(f"cyclic extends: {names}")
    data = _read_toml(path, label)
    parent = data.pop("extends", None)
    origins = _origins_of(data, label)
    if parent is None:
        return data, origins
    if not isinstance(parent, str):
        raise RecipeError(f"{label}: extends: expected a string (a path relative to this file), got "
                          f"{render_value(parent)}")
    target = path.parent / parent
    target_label = os.path.normpath(target)
    if not target.exists():
        raise RecipeError(f"{label}: extends: file not found: {target_label} (paths are relative to {label})")
    base, base_origins = _load_chain(target, target_label, [*chain, (resolved, label)])
    return _merge_extends(base, base_origins, data, origins)


# --- --set overrides -----------------------------------------------------------------------------

_BARE_WORD = re.compile(r"[A-Za-z_./~][^\s\"'\[\]{},=#]*")


def _shown(argument: str) -> str:
    """An override as typed, quoted Python-style if it holds newlines or other unprintable characters."""
    return argument if argument.isprintable() else repr(argument)


def parse_override_value(text: str, label: str) -> Any:
    """An override's value: a TOML value, or a bare word (taken as a string). `label` names the override
    in the error message (e.g. `--set inference.lr=x`)."""
    try:
        parsed = tomllib.loads("v = " + text)
    except tomllib.TOMLDecodeError as err:
        if _BARE_WORD.fullmatch(text.strip()):
            return text.strip()
        raise RecipeError(
            f"{label}: malformed value {text!r}: not a single TOML value ({one_line(str(err))}); "
            'write numbers, true/false, [lists] or "quoted strings"'
        ) from None
    if set(parsed) != {"v"}:
        raise RecipeError(f"{label}: malformed value {text!r}: not a single TOML value")
    return parsed["v"]


def _parse_overrides(overrides: Sequence[str], label: str) -> list[tuple[str, str, Any, str]]:
    """`section.key=value` strings -> (section, key, value, where) tuples; `where` is the override as
    messages name it: `label` and the argument (`--set inference.lr=x`)."""
    parsed = []
    for argument in overrides:
        where = f"{label} {_shown(argument)}"
        key, sep, text = argument.partition("=")
        section, dot, field = key.strip().partition(".")
        if not sep or not dot or not section or not field or "." in field:
            raise RecipeError(f"{where}: expected SECTION.KEY=VALUE, e.g. --set inference.steps=14")
        if section not in SECTION_CLASSES:
            raise RecipeError(f"{where}: {unknown(f'section {section!r}', section, SECTIONS)}")
        parsed.append((section, field, parse_override_value(text, where), where))
    return parsed


def _chosen_name(section: str, data: Mapping[str, Any], table: Mapping[str, Any]) -> Any:
    """The component a section names once the overrides in `table` apply."""
    current = data.get(section)
    current_name = current.get("name") if isinstance(current, Mapping) else None
    return table.get("name", current_name or DEFAULT_COMPONENTS[section])


def _check_keys(
    parsed: list[tuple[str, str, Any, str]],
    data: Mapping[str, Any],
    origins: Origins,
    table: Mapping[str, dict[str, Any]],
    where: Origins,
    registry: ComponentRegistry,
) -> None:
    """Allow only keys the schema or the chosen component (after a `name` override in the same command)
    has."""
    for section, field, _value, shown in parsed:
        valid = core_keys(section)
        name = _chosen_name(section, data, table[section]) if section in COMPONENT_KINDS else None
        if section in COMPONENT_KINDS and field not in valid:
            if not isinstance(name, str):
                continue
            try:
                component = registry.component(COMPONENT_KINDS[section], name)
            except UsageError as err:
                name_origin = where.get((section, "name")) or origins.get((section, "name"), "recipe")
                raise RecipeError(f"{name_origin}: {section}.name: {one_line(str(err))}") from None
            valid = [*valid, *param_names(component)]
        if field not in valid:
            owner = f" ({COMPONENT_KINDS[section]} \"{name}\")" if section in COMPONENT_KINDS else ""
            raise RecipeError(f"{shown}: {unknown(f'key {section}.{field}{owner}', field, valid)}")


def _kept_params(
    section: str, old: Mapping[str, Any], new_name: Any, argument: str, registry: ComponentRegistry
) -> dict[str, Any]:
    """The section after `--set SECTION.name=NEW` renamed its component: its own keys, and the old
    component's parameters that the new one also has (their values are checked like any other); the rest
    are dropped, with a note on stderr. A name that is no component keeps no parameters (the name is
    reported)."""
    core = core_keys(section)
    params = [k for k in old if k not in core]
    try:
        accepted = set(param_names(registry.component(COMPONENT_KINDS[section], new_name)))
    except (UsageError, TypeError):
        accepted = set()
    else:
        dropped = [k for k in params if k not in accepted]
        if dropped:
            keys = ", ".join(f"{section}.{k}" for k in dropped)
            what = "a parameter" if len(dropped) == 1 else "parameters"
            print(f"pccore: note: {argument} drops {keys} (not {what} of {COMPONENT_KINDS[section]} "
                  f"\"{new_name}\")", file=sys.stderr)
    return {k: v for k, v in old.items() if k in core or k in accepted}


def _apply_overrides(
    data: dict[str, Any], origins: Origins, overrides: Sequence[str], registry: ComponentRegistry, label: str
) -> tuple[dict[str, Any], Origins]:
    """Apply `--set` overrides over the merged recipe."""
    parsed = _parse_overrides(overrides, label)
    table: dict[str, dict[str, Any]] = {}
    where: Origins = {}
    for section, field, value, shown in parsed:
        table.setdefault(section, {})[field] = value
        where[(section, field)] = shown
    _check_keys(parsed, data, origins, table, where, registry)
    out = dict(data)
    for section, values in table.items():
        old = out.get(section, {})
        if not isinstance(old, Mapping):
            out[section] = values
            continue
        if _renames(section, old, values):
            old = _kept_params(section, old, values["name"], where[(section, "name")], registry)
        out[section] = _merge_tables(old, values)
    return out, {**origins, **where}


def load_recipe(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    registry: ComponentRegistry | None = None,
    overrides_label: str = "--set",
) -> Recipe:
    """Read a TOML recipe, resolve its `extends` chain, apply `--set` overrides and check it all.

    `--set SECTION.name=OTHER` keeps the section's parameters that OTHER also accepts and drops the rest
    (saying which on stderr); a file that extends another and names a different component drops all of
    the base's parameters for that section. Messages name an override as `overrides_label` followed by
    the override (`--set inference.lr=x`; a study file names its own tables).
    """
    source = Path(path)
    registry = default_registry() if registry is None else registry
    data, origins = _load_chain(source, str(source), [])
    if overrides:
        data, origins = _apply_overrides(data, origins, overrides, registry, overrides_label)
    return build_recipe(data, source, registry, origins)
