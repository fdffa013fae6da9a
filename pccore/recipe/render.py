"""Writing a resolved recipe back out: as a plain dict, as TOML (with tomli-w), as flat HParams scalars,
and single values on one line for messages."""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from typing import Any

import attrs
import tomli_w

from pccore.recipe.schema import SECTIONS, ComponentSection, Recipe

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def render_value(value: Any) -> str:
    """A value on one line as the user would write it in TOML (error messages, HParams text); `repr` for
    anything TOML cannot hold."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = [f"{k if _BARE_KEY.fullmatch(str(k)) else render_value(str(k))} = {render_value(v)}"
                 for k, v in value.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    try:
        return tomli_w.dumps({"v": value}).removeprefix("v = ").removesuffix("\n")
    except TypeError:
        return repr(value)


def _plain(value: Any) -> Any:
    """A value as plain TOML-able data: attrs instances become tables, tuples lists, enums values."""
    if attrs.has(type(value)):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in attrs.fields(type(value))
            if f.init and getattr(value, f.name) is not None
        }
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    return value


def recipe_to_dict(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The recipe as a plain dict of sections, every default filled, component params inline."""
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        obj = getattr(recipe, section)
        table = _plain(obj)
        if isinstance(obj, ComponentSection):
            params = table.pop("params")
            table = {**table, **params}
        out[section] = table
    return out


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML text that `load_recipe` reads back into an equal recipe."""
    return tomli_w.dumps(recipe_to_dict(recipe))


def flatten_recipe(recipe: Recipe) -> dict[str, int | float | str | bool]:
    """The recipe as flat `section/key` scalars (lists as TOML strings), for TensorBoard HParams."""
    flat: dict[str, int | float | str | bool] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{prefix}/{key}", item)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = render_value(value)

    for section, table in recipe_to_dict(recipe).items():
        visit(section, table)
    return flat
