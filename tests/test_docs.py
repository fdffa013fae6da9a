"""The plugin author's guide (docs/plugins.md) follows the hook specs and the component protocols."""

from __future__ import annotations

import inspect
import math
import re
import textwrap
import types
from pathlib import Path

import attrs
import pytest
import torch

import pccore
from pccore.core import hookspecs
from pccore.core.components import KINDS, OPTIONAL_MEMBERS, PROTOCOLS, DataSpec, ImageData, PrecisionTable
from pccore.core.registry import Registry

GUIDE_PATH = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
GUIDE = GUIDE_PATH.read_text()

SPECS = {name: f for name, f in vars(hookspecs).items() if callable(f) and hasattr(f, "pccore_spec")}


class _Source:
    """An annotation shown as written in the source (`from __future__ import annotations` keeps them
    as strings, which inspect would otherwise render quoted)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _unquoted(annotation):
    return _Source(annotation) if isinstance(annotation, str) else annotation


def signature_line(func) -> str:
    """`def name(params) -> ret` as inspect renders the signature, with string annotations unquoted."""
    sig = inspect.signature(func)
    sig = sig.replace(
        parameters=[p.replace(annotation=_unquoted(p.annotation)) for p in sig.parameters.values()],
        return_annotation=_unquoted(sig.return_annotation),
    )
    return f"def {func.__name__}{sig}"


def _sections() -> dict[str, str]:
    """The guide's `### heading` sections, by heading."""
    parts = re.split(r"^### (.+)$", GUIDE, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _members(protocol: type) -> list[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return sorted(names)


def test_signature_line_renders_the_source_form():
    def sample(x: int, *, scale: float = 2.0) -> list[int]:
        return [x]

    sample.__annotations__ = {"x": "int", "scale": "float", "return": "list[int]"}
    assert signature_line(sample) == "def sample(x: int, *, scale: float = 2.0) -> list[int]"


def test_hookspecs_exist_for_every_kind():
    assert sorted(SPECS) == sorted(f"pccore_register_{kind}" for kind in KINDS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_guide_shows_each_hook_signature(name):
    lines = [line.strip() for line in GUIDE.splitlines()]
    shown = f"{signature_line(SPECS[name])}: ..."  # a signature, written so that it compiles
    assert shown in lines, f"docs/plugins.md lacks `{shown}`"
    assert name in _sections(), f"docs/plugins.md lacks a `### {name}` section"


def test_guide_lists_no_hook_that_does_not_exist():
    mentioned = set(re.findall(r"\bpccore_register_\w+", GUIDE))
    headings = {h for h in _sections() if h.startswith("pccore_")}
    signatures = set(re.findall(r"^def (pccore_\w+)\(.*\) ->", GUIDE, flags=re.MULTILINE))
    assert mentioned | headings | signatures <= set(SPECS)


@pytest.mark.parametrize("kind", KINDS)
def test_guide_describes_each_protocol(kind):
    section = _sections()[f"pccore_register_{kind}"]
    protocol = PROTOCOLS[kind]
    assert f"`{protocol.__name__}`" in section
    for member in _members(protocol):
        assert f"`{member}" in section, f"the {kind} section does not describe {protocol.__name__}.{member}"


@pytest.mark.parametrize("kind", KINDS)
def test_guide_describes_each_optional_member(kind):
    section = _sections()[f"pccore_register_{kind}"]
    protocol_doc = inspect.getdoc(PROTOCOLS[kind]) or ""
    for member in OPTIONAL_MEMBERS[kind]:
        assert re.search(rf"^- `{member}\b", section, flags=re.MULTILINE), (
            f"the {kind} section has no bullet describing the optional `{member}`"
        )
        assert f"`{member}" in protocol_doc, f"{PROTOCOLS[kind].__name__}'s docstring lacks `{member}`"


def test_guide_mentions_loading_controls():
    for text in ("PCCORE_STRICT_PLUGINS=1", "--strict-plugins", "PCCORE_DISABLE_PLUGINS=",
                 "[project.entry-points.pccore]", "pccore plugins --json"):
        assert text in GUIDE


def test_guide_example_plugin_works():
    """The guide's first Python block is a working plugin module."""
    source = re.search(r"```python\n(.*?)```", GUIDE, flags=re.DOTALL).group(1)
    module = types.ModuleType("pccore_flat")
    exec(compile(source, str(GUIDE_PATH), "exec"), module.__dict__)
    registry = Registry(strict=True)
    info = registry.register(module, "flat", "pccore-flat", "0.1.0")
    assert info.components == {"precision": ["flat"]}
    table = registry.build("precision", "flat", module.FlatParams(value=0.5)).table(layers=3, steps=4)
    assert torch.equal(table.inference, torch.full((4, 3), 0.5, dtype=torch.float64))
    assert torch.equal(table.learning, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^'value' must be > 0: 0.0$"):
        module.FlatParams(value=0.0)


def _docstring_example(func) -> str:
    doc = inspect.getdoc(func) or ""
    assert "Example::" in doc, f"{func.__name__}'s docstring has no `Example::` block"
    return textwrap.dedent(doc.split("Example::", 1)[1]).strip("\n")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_hookspec_docstring_has_a_working_example(name):
    """Every hook spec documents itself with an example plugin, and that example registers and builds."""
    func = SPECS[name]
    doc = inspect.getdoc(func) or ""
    assert doc.split("\n")[0].strip(), f"{name} has no summary line"
    example = _docstring_example(func)
    assert "@pccore.hookimpl" in example and f"def {name}(" in example

    namespace = {"pccore": pccore, "attrs": attrs, "torch": torch, "math": math,
                 "PrecisionTable": PrecisionTable, "DataSpec": DataSpec, "ImageData": ImageData}
    exec(compile(example, f"<{name} docstring>", "exec"), namespace)
    plugin = types.SimpleNamespace(**{name: namespace[name]})
    registry = Registry(strict=True)
    registry.register(plugin, "example")
    kind = name.removeprefix("pccore_register_")
    (component,) = registry.names(kind)
    assert isinstance(registry.build(kind, component), PROTOCOLS[kind])
