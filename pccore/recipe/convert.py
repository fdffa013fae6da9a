"""The strict converter every recipe value goes through: cattrs, with unknown keys rejected and scalars
never coerced between strings, numbers and booleans (an integer is accepted where a number is expected).

A value of the wrong type raises `Mismatch`, whose message says what the schema wants and what it got.
The same mechanism keeps every number, in core sections and component parameters alike, within what torch
can use: integers within +-(2**31-1), numbers finite and within the float32 range; and strings free of
NUL characters (no file name or path can hold one).
"""

from __future__ import annotations

import collections.abc
import enum
import math
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import BaseValidationError, IterableValidationError, IterableValidationNote

from pccore.core.limits import FLOAT32_MAX, INDEX_LIMIT
from pccore.recipe.render import render_value


class Mismatch(Exception):
    """A value of the wrong type; the message says what the schema wants and what it got."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, got {render_value(value)}")


_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
_LIST_ORIGINS = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_DICT_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union or isinstance(tp, types.UnionType)


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _is_list(tp: Any) -> bool:
    return tp in (list, tuple) or typing.get_origin(tp) in _LIST_ORIGINS


def _is_dict(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) in _DICT_ORIGINS


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def describe(tp: Any) -> str:
    """What a value of type `tp` looks like in TOML, for error messages."""
    simple = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
              Path: "a string (a path)"}
    if tp in simple:
        return simple[tp]
    if _is_literal(tp):
        return "one of " + ", ".join(render_value(a) for a in typing.get_args(tp))
    if _is_union(tp):
        return " or ".join(describe(a) for a in typing.get_args(tp) if a is not type(None))
    if _is_list(tp):
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values"
        return f"a list of {_PLURALS[args[0]]}" if args and args[0] in _PLURALS else "a list"
    if _is_dict(tp) or attrs.has(tp):
        return "a table"
    if _is_enum(tp):
        return "one of " + ", ".join(render_value(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _structure_enum(value: Any, cl: type[enum.Enum]) -> Any:
    for member in cl:
        if type(value) is type(member.value) and value == member.value:
            return member
    raise Mismatch(describe(cl), value)


def _structure_int(value: Any, cl: type) -> Any:
    if _is_enum(cl):
        return _structure_enum(value, cl)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Mismatch("an integer", value)
    if abs(value) > INDEX_LIMIT:
        raise Mismatch(f"an integer between -{INDEX_LIMIT} and {INDEX_LIMIT} (2**31-1, the largest size or "
                       "count torch indexes tensors with)", value)
    return value if cl is int else cl(value)


def _structure_float(value: Any, cl: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Mismatch("a number", value)
    if not math.isfinite(value):
        raise Mismatch("a finite number", value)
    if abs(value) > FLOAT32_MAX:
        raise Mismatch(f"a number of magnitude at most {FLOAT32_MAX:.7g} (the largest float32)", value)
    return float(value) if cl is float else cl(value)


def _structure_bool(value: Any, _cl: type) -> bool:
    if not isinstance(value, bool):
        raise Mismatch("true or false", value)
    return value


def _structure_str(value: Any, cl: type) -> Any:
    if _is_enum(cl):
        return _structure_enum(value, cl)
    if not isinstance(value, str):
        raise Mismatch("a string", value)
    _check_text(value)
    return value if cl is str else cl(value)


def _check_text(value: str) -> None:
    if "\0" in value:
        raise Mismatch("a string without NUL characters", value)


def _structure_path(value: Any, cl: type) -> Any:
    if not isinstance(value, str):
        raise Mismatch(describe(Path), value)
    _check_text(value)
    return cl(value)


def _structure_literal(value: Any, tp: Any) -> Any:
    for choice in typing.get_args(tp):
        if type(value) is type(choice) and value == choice:
            return value
    raise Mismatch(describe(tp), value)


def _union_hook(conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """The first arm of a union that takes the value; None only where the union allows it."""

    def hook(value: Any, tp: Any) -> Any:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return conv.structure(value, arm)
            except (Mismatch, BaseValidationError, ValueError, TypeError):
                continue
        raise Mismatch(describe(tp), value)

    return hook


def _list_factory(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    """Lists and tuples (fixed-length or not), every element structured and every bad index reported."""

    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        origin = typing.get_origin(tp) or tp
        args = typing.get_args(tp)
        fixed = origin is tuple and bool(args) and args[-1] is not Ellipsis

        def element_type(index: int) -> Any:
            if fixed:
                return args[index]
            return args[0] if args else Any

        def hook(value: Any, _tp: Any) -> Any:
            if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
                raise Mismatch(describe(tp), value)
            items, errors = [], []
            for index, item in enumerate(value):
                elem = element_type(index)
                try:
                    items.append(item if elem is Any else conv.structure(item, elem))
                except Exception as exc:
                    exc.__notes__ = [*getattr(exc, "__notes__", []), IterableValidationNote("", index, elem)]
                    errors.append(exc)
            if errors:
                raise IterableValidationError("while structuring a list", errors, tp)
            return tuple(items) if origin is tuple else items

        return hook

    return factory


def _dict_factory(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    """Tables: a mapping is required; typed keys and values are structured."""

    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        inner = conv.gen_structure_mapping(tp) if typing.get_args(tp) else None

        def hook(value: Any, _tp: Any) -> Any:
            if not isinstance(value, Mapping):
                raise Mismatch("a table", value)
            return dict(value) if inner is None else inner(value, tp)

        return hook

    return factory


def _attrs_factory(conv: cattrs.Converter) -> Callable[[type], Callable[[Any, Any], Any]]:
    """attrs classes (sections, component parameters, nested tables): a mapping is required."""

    def factory(cl: type) -> Callable[[Any, Any], Any]:
        inner = conv.gen_structure_attrs_fromdict(cl)

        def hook(value: Any, tp: Any) -> Any:
            if not isinstance(value, Mapping):
                raise Mismatch("a table", value)
            return inner(value, tp)

        return hook

    return factory


def make_converter() -> cattrs.Converter:
    """The one converter every section goes through: unknown keys rejected, scalars never coerced."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(Path, _structure_path)
    conv.register_structure_hook_func(_is_enum, _structure_enum)
    conv.register_structure_hook_func(_is_literal, _structure_literal)
    conv.register_structure_hook_func(_is_union, _union_hook(conv))
    conv.register_structure_hook_factory(_is_list, _list_factory(conv))
    conv.register_structure_hook_factory(_is_dict, _dict_factory(conv))
    conv.register_structure_hook_factory(attrs.has, _attrs_factory(conv))
    return conv


CONVERTER = make_converter()
"""The converter recipes use."""
