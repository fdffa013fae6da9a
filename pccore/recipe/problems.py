"""Error reporting with key paths: every problem found while a recipe is structured is collected with the
file (or `--set` argument) its value came from, its key path and what was expected, and all of them are
raised at once as one RecipeError."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)

from pccore.core.errors import RecipeError
from pccore.recipe.convert import CONVERTER, Mismatch
from pccore.recipe.render import render_value
from pccore.recipe.schema import ComponentSection, OutOfRange

KeyPath = tuple[str | int, ...]
"""A key path: section and key names, and list indices."""


def one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed, so a message stays on one line."""
    return " ".join(str(text).split())


def dotted(path: KeyPath) -> str:
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


def unknown(what: str, word: str, valid: Sequence[str]) -> str:
    """One phrase for an unknown key or name: close matches first, then every valid name."""
    return f"unknown {what}; {_close(word, valid)}valid: {', '.join(valid) if valid else '(none)'}"


@attrs.define
class Problems:
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
        """Note one problem at `path`."""
        self.lines.append(f"{self.where(path)}: {dotted(path)}: {one_line(message)}")

    def raise_if_any(self) -> None:
        """RecipeError listing every problem noted, if there is any."""
        if self.lines:
            raise RecipeError("; ".join(self.lines))


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
    exc: BaseException, path: KeyPath, problems: Problems, extra_keys: Sequence[str], owner: str
) -> None:
    """Turn a structuring failure into messages; `extra_keys` are also valid at `path` (core keys)."""
    for leaf_path, leaf in _leaves(exc, path):
        if isinstance(leaf, ForbiddenExtraKeysError):
            top = leaf_path == path
            valid = [*(extra_keys if top else ()), *(f.name for f in attrs.fields(leaf.cl) if f.init)]
            what = f"key for {owner}" if top and owner else "key"
            for key in sorted(leaf.extra_fields):
                problems.add((*leaf_path, key), unknown(what, key, valid))
        elif isinstance(leaf, Mismatch):
            problems.add(leaf_path, str(leaf))
        elif isinstance(leaf, KeyError):
            problems.add(leaf_path, "required key is missing")
        else:
            problems.add(leaf_path, f"{type(leaf).__name__}: {leaf}")


def _check_validators(obj: Any, path: KeyPath, problems: Problems) -> None:
    """Run every attrs validator of `obj` (and of nested attrs values) and report failures by path."""
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if field.validator is not None:
            try:
                field.validator(obj, field, value)
            except OutOfRange as err:
                problems.add((*path, field.name), f"expected {err}, got {render_value(value)}")
            except (ValueError, TypeError) as err:
                text = one_line(str(err))
                shown = render_value(value)
                problems.add((*path, field.name), text if text.endswith(shown) else f"{text} (got {shown})")
        if isinstance(obj, ComponentSection) and field.name == "params":
            continue
        if attrs.has(type(value)):
            _check_validators(value, (*path, field.name), problems)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if attrs.has(type(item)):
                    _check_validators(item, (*path, field.name, index), problems)


def structure(
    raw: Mapping[str, Any],
    cls: type,
    path: KeyPath,
    problems: Problems,
    extra_keys: Sequence[str] = (),
    owner: str = "",
) -> Any:
    """Structure `raw` into `cls` strictly, then run its validators; None (and problems noted) on error."""
    before = len(problems.lines)
    try:
        with attrs.validators.disabled():
            obj = CONVERTER.structure(dict(raw), cls)
    except BaseValidationError as exc:
        _report_failure(exc, path, problems, extra_keys, owner)
        return None
    _check_validators(obj, path, problems)
    return obj if len(problems.lines) == before else None
