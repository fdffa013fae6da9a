"""The house's layout: the layering rule (import-linter), light imports, the plugin namespace, old paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pccore
import pccore.plugin

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_PLUGINS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pccore"]
                         .values())
"""Every module the `pccore` entry-point group registers for the built-in plugins."""
HEAVY = ["optuna", "tensorboard", "torch.utils.tensorboard", "matplotlib"]
"""Libraries a plugin, the command line's start-up or `pccore plugins` must not pay for."""
ABOVE_THE_CORE = [
    "pccore.api",
    "pccore.parallel.distributed",
    "torch.distributed.elastic",
    "torch.distributed.launcher",
    "pccore.run.training",
    "pccore.run.seeds",
    "pccore.experiments.tune.command",
    "pccore.experiments.tune.worker",
    "pccore.experiments.sweep",
    "pccore.experiments.report",
    "pccore.inspect.bench",
]
"""pccore's process-group code (and torch's launcher), its training loop, tune, sweep, report and bench."""


def _loaded_after(code: str, timeout: float = 120) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = code + "\nimport sys, json\nprint('MODULES=' + json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


@pytest.mark.parametrize("plugin", BUILTIN_PLUGINS)
def test_a_builtin_plugin_loads_only_the_core(plugin: str) -> None:
    loaded = _loaded_after(f"import {plugin}")
    assert plugin in loaded and "pccore.plugin" in loaded
    assert not [m for m in HEAVY + ABOVE_THE_CORE if m in loaded]
    above = sorted(m for m in loaded if m.startswith("pccore.") and m.split(".")[1] not in ("core", "plugin"))
    assert above == []


def test_import_pccore_and_help_load_no_torch() -> None:
    loaded = _loaded_after(textwrap.dedent("""
        import contextlib, io
        import pccore
        from pccore.cli import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["--help"])
    """))
    assert "pccore.cli" in loaded
    assert not [m for m in ("torch", "numpy", *HEAVY) if m in loaded]


@pytest.mark.parametrize("argv", [["plugins"], ["plugins", "--json"], ["recipe", "check", "recipes/quickstart.toml"]])
def test_listing_plugins_and_checking_a_recipe_load_no_search_tensorboard_or_plotting(argv: list[str]) -> None:
    loaded = _loaded_after(textwrap.dedent(f"""
        import contextlib, io
        from pccore.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main({argv!r}) == 0
    """))
    assert not [m for m in HEAVY if m in loaded]


def test_the_api_names_resolve_lazily_and_all_of_them_exist() -> None:
    loaded = _loaded_after("import pccore")
    assert "pccore.api" not in loaded and "torch" not in loaded
    for name in pccore.__all__:
        assert getattr(pccore, name) is not None, name
    assert set(pccore.__all__) <= set(dir(pccore))
    assert pccore.make_engine.__module__ == "pccore.api"
    assert pccore.PCEngine.__name__ == "PCEngine"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = pccore.no_such_name


def test_the_plugin_namespace_holds_what_the_builtin_plugins_use() -> None:
    from pccore.core import components, errors

    for name in pccore.plugin.__all__:
        assert hasattr(pccore.plugin, name), name
    assert pccore.plugin.Component is components.Component and pccore.plugin.UsageError is errors.UsageError
    assert pccore.plugin.hookimpl is pccore.hookimpl


@pytest.mark.parametrize(("old", "name"), [("pccore.components", "PrecisionTable"), ("pccore.hookspecs", "hookimpl")])
def test_old_internal_paths_still_work_and_warn(old: str, name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c",
         f"from {old} import {name}; import pccore.core.{old.split('.')[1]} as new; "
         f"assert {name} is getattr(new, '{name}')"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "DeprecationWarning" in done.stderr and f"{old} is deprecated" in done.stderr


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([command, "--no-cache"], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_the_layering_rule_holds() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_a_core_module_importing_the_training_loop_breaks_the_rule(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of pccore whose engine imports pccore.run fails lint-imports."""
    shutil.copytree(ROOT / "pccore", tmp_path / "pccore", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "plugins", tmp_path / "pccore_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    engine = tmp_path / "pccore" / "core" / "engine.py"
    engine.write_text(engine.read_text() + "\n\ndef _upward():\n    from pccore.run import training  # noqa\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    probe = subprocess.run([sys.executable, "-c", "import pccore; print(pccore.__file__)"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path, env=env)
    if not probe.stdout.startswith(str(tmp_path)):
        pytest.skip(f"the installed pccore shadows the copy on PYTHONPATH ({probe.stdout.strip()})")
    done = _lint_imports(tmp_path, env)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and "pccore.core.engine -> pccore.run.training" in done.stdout


def test_every_pccore_import_in_the_sources_names_a_module_that_exists() -> None:
    """lint-imports does not see an import of a module that does not exist (a path left over from a move),
    so this checks every `from pccore... import` and `import pccore...` of the sources, in functions too."""
    import ast
    import importlib.util

    missing = []
    for folder in ("pccore", "plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else (
                    [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
                for name in names:
                    if name.split(".")[0] in ("pccore", "pccore_plugins") and importlib.util.find_spec(name) is None:
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert missing == []
