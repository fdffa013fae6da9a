"""TOML recipes: the schema, loading (`extends` chains, `--set` overrides), error reporting with key
paths, writing a resolved recipe back as TOML, and the `pccore recipe check|show` command.

A recipe has eleven sections. Six of them name a component (`[data]` a dataset, `[model]` an
architecture, `[normalization]`, `[precision]`, `[nudging]`, `[update]`) and carry that component's
parameters inline; the other five are plain settings. Every value is checked strictly (no coercion
between strings, numbers and booleans) and every error names the file, the key path and what was
expected.
"""

from __future__ import annotations

import argparse
import collections.abc
import datetime
import difflib
import enum
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from pccore.components import Component
from pccore.errors import PluginError, RecipeError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


class ComponentRegistry(Protocol):
    """What recipes need from a registry: look a component up by kind and name."""

    def component(self, kind: str, name: str) -> Component:
        """The component record; UsageError (with close matches) for an unknown name."""
        ...

    def names(self, kind: str) -> list[str]:
        """The names of every component of a kind."""
        ...


# --- validators ----------------------------------------------------------------------------------


class _OutOfRange(ValueError):
    """A value of the right type outside its allowed range; the message says what is expected."""


def _expect(predicate: Callable[[Any], bool], expected: str) -> Callable[[Any, Any, Any], None]:
    """An attrs validator that raises `_OutOfRange(expected)` when `predicate(value)` is false."""

    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if not predicate(value):
            raise _OutOfRange(expected)

    return check


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

# --- schema --------------------------------------------------------------------------------------


@attrs.frozen
class RunSection:
    """How a recipe is run: its name, seeds, device, output folder and numeric settings."""

    name: str = ""
    seeds: list[int] = attrs.field(
        factory=lambda: [0],
        validator=_expect(lambda v: len(v) >= 1 and all(s >= 0 for s in v), "a non-empty list of seeds >= 0"),
    )
    device: str = attrs.field(
        default="auto", validator=_expect(_DEVICE.fullmatch, '"auto", "cpu", "cuda" or "cuda:N"')
    )
    out_dir: str = "runs"
    dtype: Literal["float32", "float64"] = "float32"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    channels_last: bool = False


@attrs.frozen
class ComponentSection:
    """A section that names a registered component; `params` is an instance of its parameter class."""

    name: str
    params: Any


@attrs.frozen
class DataSection(ComponentSection):
    """The dataset component plus the batch sizes the core uses to iterate it."""

    batch_size: int = attrs.field(default=128, validator=_expect(lambda v: v >= 1, "an integer >= 1"))
    eval_batch_size: int = attrs.field(default=1000, validator=_expect(lambda v: v >= 1, "an integer >= 1"))


@attrs.frozen
class ModelSection(ComponentSection):
    """The architecture component plus the energy of the output layer (squared error or cross-entropy)."""

    output_energy: Literal["se", "ce"] = "se"


@attrs.frozen
class InferenceSection:
    """The state optimizer of the inference phase: T steps of SGD with momentum."""

    steps: int = attrs.field(default=8, validator=_expect(lambda v: v >= 0, "an integer >= 0"))
    lr: float = attrs.field(default=0.1, validator=_expect(lambda v: v > 0, "a number > 0"))
    momentum: float = attrs.field(default=0.0, validator=_expect(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    nesterov: bool = True
    decay_last_lr: bool = False


@attrs.frozen
class OptimizerSection:
    """The weight optimizer (AdamW) and its warmup-cosine schedule."""

    lr: float = attrs.field(default=1e-3, validator=_expect(lambda v: v > 0, "a number > 0"))
    weight_decay: float = attrs.field(default=1e-4, validator=_expect(lambda v: v >= 0, "a number >= 0"))
    warmup: float = attrs.field(default=0.1, validator=_expect(lambda v: 0 <= v <= 1, "a number in [0, 1]"))
    schedule_epochs: int = attrs.field(default=25, validator=_expect(lambda v: v >= 1, "an integer >= 1"))


@attrs.frozen
class TrainSection:
    """How long to train: epochs, early-stopping patience, and an optional cap on batches per epoch."""

    epochs: int = attrs.field(default=50, validator=_expect(lambda v: v >= 1, "an integer >= 1"))
    patience: int = attrs.field(default=10, validator=_expect(lambda v: v >= 1, "an integer >= 1"))
    max_batches: int = attrs.field(default=0, validator=_expect(lambda v: v >= 0, "an integer >= 0"))


@attrs.frozen
class LogSection:
    """What a run writes: TensorBoard events (every `every` batches) and checkpoints."""

    tensorboard: bool = True
    every: int = attrs.field(default=50, validator=_expect(lambda v: v >= 1, "an integer >= 1"))
    checkpoints: bool = True


@attrs.frozen
class Recipe:
    """A fully resolved recipe; `source` is the file it was loaded from (not part of equality)."""

    run: RunSection
    data: DataSection
    model: ModelSection
    normalization: ComponentSection
    precision: ComponentSection
    nudging: ComponentSection
    update: ComponentSection
    inference: InferenceSection
    optimizer: OptimizerSection
    train: TrainSection
    log: LogSection
    source: Path | None = attrs.field(default=None, eq=False)


SECTION_CLASSES: dict[str, type] = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "normalization": ComponentSection,
    "precision": ComponentSection,
    "nudging": ComponentSection,
    "update": ComponentSection,
    "inference": InferenceSection,
    "optimizer": OptimizerSection,
    "train": TrainSection,
    "log": LogSection,
}
"""Every section of a recipe, in the order they are written."""

SECTIONS: tuple[str, ...] = tuple(SECTION_CLASSES)

COMPONENT_KINDS: dict[str, str] = {
    "data": "dataset",
    "model": "architecture",
    "normalization": "normalization",
    "precision": "precision",
    "nudging": "nudging",
    "update": "update",
}
"""The kind of component each component section names."""

DEFAULT_COMPONENTS: dict[str, str] = {
    "data": "digits",
    "model": "mlp",
    "normalization": "none",
    "precision": "constant",
    "nudging": "clamp",
    "update": "standard",
}
"""The component a section names when it has no `name` key."""


def _core_keys(section: str) -> list[str]:
    """The keys a section owns itself (for a component section: `name` and its extra settings)."""
    return [f.name for f in attrs.fields(SECTION_CLASSES[section]) if f.name != "params"]


# --- strict structuring --------------------------------------------------------------------------


class _Mismatch(Exception):
    """A value of the wrong type; the message says what the schema wants and what it got."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, got {_render(value)}")


_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union or isinstance(tp, types.UnionType)


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


_LIST_ORIGINS = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_DICT_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _is_list(tp: Any) -> bool:
    return tp in (list, tuple) or typing.get_origin(tp) in _LIST_ORIGINS


def _is_dict(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) in _DICT_ORIGINS


def _describe(tp: Any) -> str:
    """What a value of type `tp` looks like in TOML, for error messages."""
    simple = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
              Path: "a string (a path)"}
    if tp in simple:
        return simple[tp]
    if _is_literal(tp):
        return "one of " + ", ".join(_render(a) for a in typing.get_args(tp))
    if _is_union(tp):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if _is_list(tp):
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values"
        return f"a list of {_PLURALS[args[0]]}" if args and args[0] in _PLURALS else "a list"
    if _is_dict(tp) or attrs.has(tp):
        return "a table"
    if _is_enum(tp):
        return "one of " + ", ".join(_render(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _structure_enum(value: Any, cl: type[enum.Enum]) -> Any:
    for member in cl:
        if type(value) is type(member.value) and value == member.value:
            return member
    raise _Mismatch(_describe(cl), value)


def _structure_int(value: Any, cl: type) -> Any:
    if _is_enum(cl):
        return _structure_enum(value, cl)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Mismatch("an integer", value)
    return value if cl is int else cl(value)


def _structure_float(value: Any, cl: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Mismatch("a number", value)
    return float(value) if cl is float else cl(value)


def _structure_bool(value: Any, _cl: type) -> bool:
    if not isinstance(value, bool):
        raise _Mismatch("true or false", value)
    return value


def _structure_str(value: Any, cl: type) -> Any:
    if _is_enum(cl):
        return _structure_enum(value, cl)
    if not isinstance(value, str):
        raise _Mismatch("a string", value)
    return value if cl is str else cl(value)


def _structure_path(value: Any, cl: type) -> Any:
    if not isinstance(value, str):
        raise _Mismatch(_describe(Path), value)
    return cl(value)


def _structure_literal(value: Any, tp: Any) -> Any:
    for choice in typing.get_args(tp):
        if type(value) is type(choice) and value == choice:
            return value
    raise _Mismatch(_describe(tp), value)


def _make_converter() -> cattrs.Converter:
    """The one converter every section goes through: unknown keys rejected, scalars never coerced."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(Path, _structure_path)
    conv.register_structure_hook_func(_is_enum, _structure_enum)
    conv.register_structure_hook_func(_is_literal, _structure_literal)

    def union(value: Any, tp: Any) -> Any:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return conv.structure(value, arm)
            except (_Mismatch, BaseValidationError, ValueError, TypeError):
                continue
        raise _Mismatch(_describe(tp), value)

    conv.register_structure_hook_func(_is_union, union)

    def list_factory(tp: Any) -> Callable[[Any, Any], Any]:
        origin = typing.get_origin(tp) or tp
        args = typing.get_args(tp)
        fixed = origin is tuple and bool(args) and args[-1] is not Ellipsis

        def element_type(index: int) -> Any:
            if fixed:
                return args[index]
            return args[0] if args else Any

        def hook(value: Any, _tp: Any) -> Any:
            if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
                raise _Mismatch(_describe(tp), value)
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

    conv.register_structure_hook_factory(_is_list, list_factory)

    def dict_factory(tp: Any) -> Callable[[Any, Any], Any]:
        inner = conv.gen_structure_mapping(tp) if typing.get_args(tp) else None

        def hook(value: Any, _tp: Any) -> Any:
            if not isinstance(value, Mapping):
                raise _Mismatch("a table", value)
            return dict(value) if inner is None else inner(value, tp)

        return hook

    conv.register_structure_hook_factory(_is_dict, dict_factory)

    def attrs_factory(cl: type) -> Callable[[Any, Any], Any]:
        inner = conv.gen_structure_attrs_fromdict(cl)

        def hook(value: Any, tp: Any) -> Any:
            if not isinstance(value, Mapping):
                raise _Mismatch("a table", value)
            return inner(value, tp)

        return hook

    conv.register_structure_hook_factory(attrs.has, attrs_factory)
    return conv


_CONVERTER = _make_converter()

# --- error reporting -----------------------------------------------------------------------------

KeyPath = tuple[str | int, ...]
"""A key path: section and key names, and list indices."""


def _dotted(path: KeyPath) -> str:
    """`("run", "seeds", 1)` -> `run.seeds[1]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _close(word: str, valid: Sequence[str]) -> str:
    """`did you mean "x"? ` for a misspelling, or an empty string."""
    matches = difflib.get_close_matches(word, list(valid), n=3, cutoff=0.6)
    if not matches:
        return ""
    quoted = " or ".join(f'"{m}"' for m in matches)
    return f"did you mean {quoted}? "


def _unknown(what: str, word: str, valid: Sequence[str]) -> str:
    """One phrase for an unknown key or name: close matches first, then every valid name."""
    return f"unknown {what}; {_close(word, valid)}valid: {', '.join(valid) if valid else '(none)'}"


@attrs.define
class _Problems:
    """Collects errors while a recipe is structured, each tagged with where its value came from."""

    label: str
    origins: dict[tuple[str, ...], str] = attrs.field(factory=dict)
    lines: list[str] = attrs.field(factory=list)

    def where(self, path: KeyPath) -> str:
        """The file (or `--set` argument) that provided the value at `path`."""
        keys = tuple(p for p in path[:2] if isinstance(p, str))
        for depth in range(len(keys), 0, -1):
            if keys[:depth] in self.origins:
                return self.origins[keys[:depth]]
        return self.label

    def add(self, path: KeyPath, message: str) -> None:
        self.lines.append(f"{self.where(path)}: {_dotted(path)}: {_one_line(message)}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise RecipeError("; ".join(self.lines))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _leaves(exc: BaseException, path: KeyPath) -> list[tuple[KeyPath, BaseException]]:
    """Every leaf error under a cattrs validation error, with the key path that leads to it."""
    if isinstance(exc, BaseValidationError):
        found = []
        for sub in exc.exceptions:
            step: KeyPath = ()
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    step += (note.name,)
                elif isinstance(note, IterableValidationNote):
                    step += (note.index,)
            found += _leaves(sub, path + step)
        return found
    return [(path, exc)]


def _report_failure(
    exc: BaseException, path: KeyPath, problems: _Problems, extra_keys: Sequence[str], owner: str
) -> None:
    """Turn a structuring failure into messages; `extra_keys` are also valid at `path` (core keys)."""
    for leaf_path, leaf in _leaves(exc, path):
        if isinstance(leaf, ForbiddenExtraKeysError):
            top = leaf_path == path
            valid = [*(extra_keys if top else ()), *(f.name for f in attrs.fields(leaf.cl) if f.init)]
            what = f"key for {owner}" if top and owner else "key"
            for key in sorted(leaf.extra_fields):
                problems.add((*leaf_path, key), _unknown(what, key, valid))
        elif isinstance(leaf, _Mismatch):
            problems.add(leaf_path, str(leaf))
        elif isinstance(leaf, KeyError):
            problems.add(leaf_path, "required key is missing")
        else:
            problems.add(leaf_path, f"{type(leaf).__name__}: {leaf}")


def _check_validators(obj: Any, path: KeyPath, problems: _Problems) -> None:
    """Run every attrs validator of `obj` (and of nested attrs values) and report failures by path."""
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if field.validator is not None:
            try:
                field.validator(obj, field, value)
            except _OutOfRange as err:
                problems.add((*path, field.name), f"expected {err}, got {_render(value)}")
            except (ValueError, TypeError) as err:
                text = _one_line(str(err))
                shown = _render(value)
                problems.add((*path, field.name), text if text.endswith(shown) else f"{text} (got {shown})")
        if isinstance(obj, ComponentSection) and field.name == "params":
            continue
        if attrs.has(type(value)):
            _check_validators(value, (*path, field.name), problems)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if attrs.has(type(item)):
                    _check_validators(item, (*path, field.name, index), problems)


def _structure(
    raw: Mapping[str, Any],
    cls: type,
    path: KeyPath,
    problems: _Problems,
    extra_keys: Sequence[str] = (),
    owner: str = "",
) -> Any:
    """Structure `raw` into `cls` strictly, then run its validators; None (and problems noted) on error."""
    before = len(problems.lines)
    try:
        with attrs.validators.disabled():
            obj = _CONVERTER.structure(dict(raw), cls)
    except BaseValidationError as exc:
        _report_failure(exc, path, problems, extra_keys, owner)
        return None
    _check_validators(obj, path, problems)
    return obj if len(problems.lines) == before else None


# --- building a recipe from a dict ---------------------------------------------------------------


def _default_registry() -> ComponentRegistry:
    from pccore.plugins import get_registry

    return get_registry()


def _component_section(
    section: str, raw: Mapping[str, Any], registry: ComponentRegistry, problems: _Problems
) -> Any:
    """A component section: look its component up, structure the inline params into its params class."""
    kind = COMPONENT_KINDS[section]
    core = _core_keys(section)
    name = raw.get("name", DEFAULT_COMPONENTS[section])
    if not isinstance(name, str):
        article = "an" if kind[0] in "aeiou" else "a"
        expected = f"a string (the name of {article} {kind})"
        problems.add((section, "name"), f"expected {expected}, got {_render(name)}")
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
    params = _structure(params_raw, params_cls, (section,), problems, extra_keys=core, owner=owner)
    core_raw = {k: v for k, v in raw.items() if k in core}
    section_obj = _structure({**core_raw, "name": name, "params": params}, SECTION_CLASSES[section],
                             (section,), problems)
    return section_obj if params is not None else None


def _build(
    data: Mapping[str, Any],
    source: Path | None,
    registry: ComponentRegistry | None,
    origins: dict[tuple[str, ...], str],
) -> Recipe:
    """Structure a merged recipe dict into a `Recipe`, reporting every problem at once."""
    registry = _default_registry() if registry is None else registry
    problems = _Problems(label=str(source) if source is not None else "<recipe>", origins=origins)
    for key in data:
        if key == "extends":
            problems.add((key,), "extends is resolved only when a recipe is loaded from a file (load_recipe)")
        elif key not in SECTION_CLASSES:
            problems.add((key,), _unknown("section", key, SECTIONS))
    sections: dict[str, Any] = {}
    for section in SECTIONS:
        raw = data.get(section, {})
        if not isinstance(raw, Mapping):
            problems.add((section,), f"expected a table [{section}], got {_render(raw)}")
            continue
        if section in COMPONENT_KINDS:
            sections[section] = _component_section(section, raw, registry, problems)
        else:
            sections[section] = _structure(raw, SECTION_CLASSES[section], (section,), problems)
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
        raise RecipeError(f"{source or '<recipe>'}: expected a table of sections, got {_render(data)}")
    return _build(data, None if source is None else Path(source), registry, {})


# --- reading files, extends, overrides -----------------------------------------------------------


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    """Parse one TOML file, turning every way it can fail into a RecipeError naming the file."""
    if not path.exists():
        raise RecipeError(f"recipe file not found: {label}")
    if path.is_dir():
        raise RecipeError(f"{label}: is a directory, expected a TOML recipe file")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{label}: invalid TOML: {_one_line(str(err))}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{label}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise RecipeError(f"{label}: cannot read the recipe: {err.strerror or err}") from None


def _origins_of(data: Mapping[str, Any], where: str) -> dict[tuple[str, ...], str]:
    """Tag every section and every key of a parsed file with where it came from."""
    origins: dict[tuple[str, ...], str] = {}
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


def _merge(
    base: Mapping[str, Any],
    base_origins: dict[tuple[str, ...], str],
    child: Mapping[str, Any],
    child_origins: dict[tuple[str, ...], str],
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Merge a child recipe over its base. A component section in which the child names a different
    component drops the base's parameters (they belong to another component) but keeps its core keys."""
    out = dict(base)
    for section, value in child.items():
        old = out.get(section)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if section in COMPONENT_KINDS and "name" in value and value["name"] != old.get(
                "name", DEFAULT_COMPONENTS[section]
            ):
                old = {k: v for k, v in old.items() if k in _core_keys(section)}
            out[section] = _merge_tables(old, value)
        else:
            out[section] = value
    return out, {**base_origins, **child_origins}


def _load_chain(path: Path, label: str, chain: list[tuple[Path, str]]) -> tuple[dict[str, Any], dict]:
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
                          f"{_render(parent)}")
    target = path.parent / parent
    target_label = os.path.normpath(target)
    if not target.exists():
        raise RecipeError(f"{label}: extends: file not found: {target_label} (paths are relative to {label})")
    base, base_origins = _load_chain(target, target_label, [*chain, (resolved, label)])
    return _merge(base, base_origins, data, origins)


_BARE_WORD = re.compile(r"[A-Za-z_./~][^\s\"'\[\]{},=#]*")


def _shown(argument: str) -> str:
    """An override as typed, quoted Python-style if it holds newlines or other unprintable characters."""
    return argument if argument.isprintable() else repr(argument)


def _parse_value(text: str, argument: str) -> Any:
    """An override's value: a TOML value, or a bare word (taken as a string)."""
    try:
        parsed = tomllib.loads("v = " + text)
    except tomllib.TOMLDecodeError as err:
        if _BARE_WORD.fullmatch(text.strip()):
            return text.strip()
        raise RecipeError(
            f"--set {_shown(argument)}: malformed value {text!r}: not a TOML value ({_one_line(str(err))}); "
            'write numbers, true/false, [lists] or "quoted strings"'
        ) from None
    if set(parsed) != {"v"}:
        raise RecipeError(f"--set {_shown(argument)}: malformed value {text!r}: expected a single TOML value")
    return parsed["v"]


def _parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str, Any, str]]:
    """`section.key=value` strings -> (section, key, value, argument) tuples."""
    parsed = []
    for argument in overrides:
        key, sep, text = argument.partition("=")
        section, dot, field = key.strip().partition(".")
        if not sep or not dot or not section or not field or "." in field:
            raise RecipeError(
                f"--set {_shown(argument)}: expected SECTION.KEY=VALUE, e.g. --set inference.steps=14"
            )
        if section not in SECTION_CLASSES:
            unknown = _unknown(f"section {section!r}", section, SECTIONS)
            raise RecipeError(f"--set {_shown(argument)}: {unknown}")
        parsed.append((section, field, _parse_value(text, argument), argument))
    return parsed


def _apply_overrides(
    data: dict[str, Any],
    origins: dict[tuple[str, ...], str],
    overrides: Sequence[str],
    registry: ComponentRegistry,
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Apply `--set` overrides over the merged recipe, allowing only keys the schema or the chosen
    component (after a `name` override in the same command) has."""
    parsed = _parse_overrides(overrides)
    table: dict[str, dict[str, Any]] = {}
    where: dict[tuple[str, ...], str] = {}
    for section, field, value, argument in parsed:
        table.setdefault(section, {})[field] = value
        where[(section, field)] = f"--set {_shown(argument)}"
    for section, field, _value, argument in parsed:
        valid = _core_keys(section)
        if section in COMPONENT_KINDS and field not in valid:
            current = data.get(section)
            current_name = current.get("name") if isinstance(current, Mapping) else None
            name = table[section].get("name", current_name or DEFAULT_COMPONENTS[section])
            if not isinstance(name, str):
                continue
            try:
                component = registry.component(COMPONENT_KINDS[section], name)
            except UsageError as err:
                name_origin = where.get((section, "name")) or origins.get((section, "name"), "recipe")
                raise RecipeError(f"{name_origin}: {section}.name: {_one_line(str(err))}") from None
            valid = [*valid, *(f.name for f in attrs.fields(component.params) if f.init)]
        if field not in valid:
            owner = f" ({COMPONENT_KINDS[section]} \"{name}\")" if section in COMPONENT_KINDS else ""
            raise RecipeError(
                f"--set {_shown(argument)}: {_unknown(f'key {section}.{field}{owner}', field, valid)}"
            )
    return _merge(data, origins, table, where)


def load_recipe(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    registry: ComponentRegistry | None = None,
) -> Recipe:
    """Read a TOML recipe, resolve its `extends` chain, apply `--set` overrides and check it all."""
    source = Path(path)
    registry = _default_registry() if registry is None else registry
    data, origins = _load_chain(source, str(source), [])
    if overrides:
        data, origins = _apply_overrides(data, origins, overrides, registry)
    return _build(data, source, registry, origins)


# --- writing -------------------------------------------------------------------------------------


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


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    """One TOML value (inline form): str, bool, int, float (round-trips), list, table, date/time."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _render(value: Any) -> str:
    """A value as the user would write it in TOML, for error messages."""
    try:
        return _toml_value(value)
    except TypeError:
        return repr(value)


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML text that `load_recipe` reads back into an equal recipe."""
    blocks = []
    for section, table in recipe_to_dict(recipe).items():
        lines = [f"[{section}]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


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
            flat[prefix] = _toml_value(value)

    for section, table in recipe_to_dict(recipe).items():
        visit(section, table)
    return flat


# --- command -------------------------------------------------------------------------------------


def recipe_command(args: argparse.Namespace) -> int:
    """`pccore recipe check RECIPE` validates and prints one OK line; `show` prints the resolved TOML."""
    recipe = load_recipe(args.recipe, args.overrides or ())
    if args.recipe_command == "show":
        sys.stdout.write(recipe_to_toml(recipe))
        return 0
    if args.recipe_command == "check":
        parts = ", ".join(f"{section} {getattr(recipe, section).name}" for section in COMPONENT_KINDS)
        print(f"OK {args.recipe} ({recipe.run.name}): {parts}; {recipe.inference.steps} inference steps, "
              f"{recipe.train.epochs} epochs, seeds {_toml_value(recipe.run.seeds)}")
        return 0
    raise UsageError(f"unknown recipe action {args.recipe_command!r}; choose check or show")
