"""TOML syntax errors explained: tomllib reports where parsing stopped; for a key or table defined twice
this names the key (`inference.steps is defined twice`) and the line that repeats it."""

from __future__ import annotations

import ast
import re
import sys

from pccore.recipe.problems import one_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

_POSITION = re.compile(r"\s*\(at (?:line (\d+), column \d+|end of document)\)$")
_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_KEY = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER_LINE = re.compile(rf"\s*\[\[?\s*({_KEY})\s*\]\]?\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"\s*({_KEY})\s*=")
_MAX_SCANNED_LINES = 5000
"""Files longer than this are not rescanned to find the repeated key (the message stays tomllib's)."""


def _dotted(key: str) -> str:
    """A TOML key as written (`a . "b c"`) -> `a."b c"` with bare parts unquoted where possible."""
    parts = re.findall(_PART, key)
    out = []
    for part in parts:
        if part[0] in "\"'":
            inner = ast.literal_eval(part) if part[0] == '"' else part[1:-1]
            part = inner if re.fullmatch(r"[A-Za-z0-9_-]+", inner) else part
        out.append(part)
    return ".".join(out)


def _first_failing_line(text: str, message: str) -> int | None:
    """The shortest prefix of whole lines that already fails with `message`: its last line repeats the
    key (tomllib reports some repeats only at the end of the document)."""
    lines = text.splitlines(keepends=True)
    if len(lines) > _MAX_SCANNED_LINES:
        return None
    for count in range(1, len(lines) + 1):
        try:
            tomllib.loads("".join(lines[:count]))
        except tomllib.TOMLDecodeError as err:
            if _POSITION.sub("", str(err)) == message:
                return count
    return None


def _repeated_key(text: str, line: int) -> tuple[str, int] | None:
    """The full key (with its table) of the statement that ends on line `line`, and the line it starts on."""
    lines = text.splitlines()
    for index in range(line - 1, -1, -1):
        header = _HEADER_LINE.match(lines[index])
        if header:
            return _dotted(header.group(1)), index + 1
        key = _KEY_LINE.match(lines[index])
        if key:
            for above in range(index - 1, -1, -1):
                table = _HEADER_LINE.match(lines[above])
                if table:
                    return f"{_dotted(table.group(1))}.{_dotted(key.group(1))}", index + 1
            return _dotted(key.group(1)), index + 1
    return None


def explain(text: str, err: tomllib.TOMLDecodeError) -> str:
    """tomllib's message, or for a repeated key or table one that names it and the line repeating it."""
    message = one_line(str(err))
    bare = _POSITION.sub("", message)
    declared = re.fullmatch(r"Cannot (?:declare|redefine namespace) (\(.*\))(?: twice)?", bare)
    inline = re.fullmatch(r"Duplicate inline table key '(.*)'", bare)
    if not (declared or inline or bare == "Cannot overwrite a value"):
        return message
    line = _first_failing_line(text, bare)
    if declared:
        key = ".".join(ast.literal_eval(declared.group(1)))
        what = f"the table [{key}] is defined twice"
    elif inline:
        what = f"the key {inline.group(1)} is defined twice in one inline table"
    else:
        found = _repeated_key(text, line) if line is not None else None
        if found is None:
            return message
        what, line = f"{found[0]} is defined twice", found[1]
    return f"{what} (line {line})" if line is not None else what
