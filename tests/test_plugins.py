"""The plugin manager: entry-point loading, failures, strictness, disabling, conflicts, lookup, CLI."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest
import torch

import pccore
from pccore.cli import main
from pccore.core import registry as plugins
from pccore.core.components import KINDS, Component, PrecisionTable
from pccore.core.errors import PluginError, UsageError
from pccore.core.registry import PluginFailure, PluginInfo, Registry, get_registry, load_registry, reset_registry
from tests.fakedist import make_dist

REPO = Path(__file__).resolve().parents[1]
INSTALLED = sorted({ep.dist.metadata["Name"] for ep in importlib.metadata.entry_points(group="pccore")})
"""Distributions with pccore plugins installed before any test runs; disabling them isolates a test."""
EXAMPLE = REPO / "examples" / "pccore-example-schedule"

GOOD = """
    import attrs, torch
    import pccore
    from pccore.core.components import PrecisionTable

    @attrs.define(frozen=True)
    class FlatParams:
        value: float = 2.0

    class Flat:
        def __init__(self, params):
            self.value = params.value
        def table(self, layers, steps):
            return PrecisionTable(torch.full((steps, layers), self.value, dtype=torch.float64),
                                  torch.ones(layers, dtype=torch.float64))

    @pccore.hookimpl
    def pccore_register_precision():
        return [pccore.Component("{name}", Flat, FlatParams, "every weight equal")]
"""

RAISES_ON_IMPORT = """
    raise RuntimeError("boom at import")
"""


@pytest.fixture(autouse=True)
def clean_plugin_env(monkeypatch):
    """Default settings, restored afterwards even when the CLI sets PCCORE_STRICT_PLUGINS itself."""
    monkeypatch.setenv(plugins.STRICT_ENV, "0")
    monkeypatch.setenv(plugins.DISABLE_ENV, "")
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Make a fake distribution in its own folder on sys.path; its modules are forgotten afterwards."""
    made: list[str] = []

    def build(name: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "1.0"):
        root = make_dist(tmp_path / f"site{len(made)}-{name}", name, version, entry_points, modules)
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        made.extend(modules)
        return root

    yield build
    for module in made:
        sys.modules.pop(module, None)


def _good(module: str, component: str) -> dict[str, str]:
    return {module: GOOD.replace("{name}", component)}


def _json_plugins(capsys, *argv: str) -> list[dict]:
    assert main([*argv, "plugins", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --- loading through entry points ------------------------------------------------------------------


def test_working_plugin_is_registered_and_attributed(fake):
    fake("pccore-flat", {"flat": "flat_plugin"}, _good("flat_plugin", "flat_test"), version="2.3")
    registry = load_registry(strict=True, disabled=INSTALLED)

    assert registry.names("precision") == ["flat_test"]
    assert registry.names("update") == []
    info = registry.provider("precision", "flat_test")
    assert info == PluginInfo("flat", "pccore-flat", "2.3", {"precision": ["flat_test"]}, "flat_plugin")
    assert registry.plugins == [info]
    assert registry.failures == []
    record = registry.component("precision", "flat_test")
    assert record.description == "every weight equal"
    table = registry.build("precision", "flat_test", None).table(2, 3)
    assert torch.equal(table.inference, torch.full((3, 2), 2.0, dtype=torch.float64))
    params = record.params(value=0.5)
    assert torch.equal(registry.build("precision", "flat_test", params).table(1, 1).inference,
                       torch.tensor([[0.5]], dtype=torch.float64))


def test_working_plugin_in_cli_json(fake, capsys):
    fake("pccore-flat", {"flat": "flat_plugin"}, _good("flat_plugin", "flat_test"), version="2.3")
    data = _json_plugins(capsys)
    mine = [p for p in data if p["distribution"] == "pccore-flat"]
    assert mine == [{"plugin": "flat", "distribution": "pccore-flat", "version": "2.3",
                     "entry_point": "flat_plugin", "components": {"precision": ["flat_test"]}}]
    assert all("error" not in p for p in data)


def test_duplicate_entry_points_are_loaded_once(fake):
    fake("pccore-flat", {"flat": "flat_plugin"}, _good("flat_plugin", "flat_test"))
    fake("pccore-flat-copy", {"flat": "flat_plugin"}, {})
    registry = load_registry(strict=True, disabled=INSTALLED)
    assert [p.name for p in registry.plugins] == ["flat"]
    assert registry.names("precision") == ["flat_test"]


# --- broken plugins --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "modules", "error"),
    [
        ("broken_plugin", {"broken_plugin": RAISES_ON_IMPORT}, "RuntimeError: boom at import"),
        ("no_such_module_xyz", {}, "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
        ("broken_attr:missing", {"broken_attr": "x = 1\n"},
         "AttributeError: module 'broken_attr' has no attribute 'missing'"),
    ],
)
def test_plugin_that_fails_to_import_is_reported_and_skipped(fake, capsys, value, modules, error):
    fake("pccore-broken", {"broken": value}, modules)
    fake("pccore-flat", {"flat": "flat_plugin"}, _good("flat_plugin", "flat_test"))
    registry = load_registry(strict=False, disabled=INSTALLED)

    assert registry.failures == [PluginFailure("pccore-broken", "broken", value, error)]
    assert registry.names("precision") == ["flat_test"]
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"pccore: warning: plugin 'broken' from distribution 'pccore-broken' (entry point broken = {value}) "
        f"failed: {error}; continuing without it (PCCORE_STRICT_PLUGINS=1 makes this an error, "
        "PCCORE_DISABLE_PLUGINS=broken silences it)"
    ]


def test_failed_plugin_is_mentioned_when_a_name_is_missing(fake):
    fake("pccore-broken", {"broken": "broken_plugin"}, {"broken_plugin": RAISES_ON_IMPORT})
    registry = load_registry(strict=False, disabled=INSTALLED)
    with pytest.raises(UsageError) as err:
        registry.component("precision", "anything")
    assert str(err.value) == (
        "unknown precision 'anything'; no precision components are installed "
        "(1 plugin(s) failed to load; run `pccore plugins` to see why)"
    )


def test_strict_loading_raises_for_a_broken_plugin(fake, monkeypatch):
    fake("pccore-broken", {"broken": "broken_plugin"}, {"broken_plugin": RAISES_ON_IMPORT})
    expected = (
        "plugin 'broken' from distribution 'pccore-broken' (entry point broken = broken_plugin) failed: "
        "RuntimeError: boom at import (strict plugin loading is on)"
    )
    with pytest.raises(PluginError) as err:
        load_registry(strict=True, disabled=INSTALLED)
    assert str(err.value) == expected

    monkeypatch.setenv("PCCORE_STRICT_PLUGINS", "1")
    monkeypatch.setenv("PCCORE_DISABLE_PLUGINS", ",".join(INSTALLED))
    with pytest.raises(PluginError) as err:
        load_registry()
    assert str(err.value) == expected
    with pytest.raises(PluginError) as err:
        get_registry()
    assert str(err.value) == expected


def test_strict_plugins_flag_on_the_command_line(fake, capsys, monkeypatch):
    fake("pccore-broken", {"broken": "broken_plugin"}, {"broken_plugin": RAISES_ON_IMPORT})
    monkeypatch.setenv("PCCORE_DISABLE_PLUGINS", ",".join(INSTALLED))
    assert main(["plugins", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert "pccore: warning: plugin 'broken'" in captured.err

    assert main(["--strict-plugins", "plugins"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "pccore: error: plugin 'broken' from distribution 'pccore-broken' (entry point broken = "
        "broken_plugin) failed: RuntimeError: boom at import (strict plugin loading is on)\n"
    )


def test_hook_returning_garbage_through_an_entry_point(fake, capsys):
    fake("pccore-garbage", {"garbage": "garbage_plugin"}, {"garbage_plugin": """
        import pccore

        @pccore.hookimpl
        def pccore_register_update():
            return ["not a component"]
    """})
    registry = load_registry(strict=False, disabled=INSTALLED)
    assert registry.failures == [PluginFailure(
        "pccore-garbage", "garbage", "garbage_plugin",
        "pccore_register_update() returned a str ('not a component'), expected pccore.Component",
    )]
    assert registry.plugins == []
    assert "plugin 'garbage' from distribution 'pccore-garbage'" in capsys.readouterr().err
    with pytest.raises(PluginError, match="returned a str"):
        load_registry(strict=True, disabled=INSTALLED)


@attrs.define
class _P:
    pass


def _flat(params):
    return object()


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: pccore.hookimpl(v) for k, v in hooks.items()})


def _raise():
    raise ValueError("bad config")


@pytest.mark.parametrize(
    ("plugin", "error"),
    [
        (_plugin(pccore_register_precision=lambda: 42),
         "pccore_register_precision() returned int, expected an iterable of pccore.Component"),
        (_plugin(pccore_register_precision=lambda: "flat"),
         "pccore_register_precision() returned str, expected an iterable of pccore.Component"),
        (_plugin(pccore_register_precision=lambda: Component("flat", _flat, _P)),
         "pccore_register_precision() returned Component, expected an iterable of "
         "pccore.Component"),
        (_plugin(pccore_register_nudging=lambda: [Component("flat", 5, _P)]),
         "nudging 'flat': factory 5 is not callable"),
        (_plugin(pccore_register_nudging=lambda: [Component("flat", _flat, dict)]),
         "nudging 'flat': params <class 'dict'> is not an attrs class"),
        (_plugin(pccore_register_dataset=lambda: [Component("two words", _flat, _P)]),
         "dataset component name 'two words' must be a non-empty string without spaces"),
        (_plugin(pccore_register_dataset=lambda: [Component("a", _flat), Component("a", _flat)]),
         "dataset 'a' is registered twice by the same plugin"),
        (_plugin(pccore_register_architecture=_raise), "ValueError: bad config"),
        (types.SimpleNamespace(pccore_register_precision=lambda: []),
         "pccore_register_precision is not decorated with @pccore.hookimpl"),
    ],
)
def test_malformed_registrations_are_reported(plugin, error, capsys):
    registry = Registry(strict=False)
    assert registry.register(plugin, "odd", distribution="pccore-odd") is None
    assert registry.failures == [PluginFailure("pccore-odd", "odd", "SimpleNamespace", error)]
    assert registry.plugins == []
    assert all(registry.names(kind) == [] for kind in KINDS)
    assert capsys.readouterr().err.startswith("pccore: warning: plugin 'odd' from distribution 'pccore-odd'")

    strict = Registry(strict=True)
    with pytest.raises(PluginError) as err:
        strict.register(plugin, "odd", distribution="pccore-odd")
    assert error in str(err.value)


def test_unknown_hook_name_is_reported():
    registry = Registry(strict=False)
    plugin = _plugin(pccore_register_precison=lambda: [])
    assert registry.register(plugin, "typo") is None
    (failure,) = registry.failures
    assert "pccore_register_precison" in failure.error
    assert failure.error.endswith("the hooks are: " + ", ".join(f"pccore_register_{k}" for k in KINDS))


def test_failed_plugin_leaves_no_components_behind():
    """A plugin whose second hook fails contributes nothing, not half of its components."""
    registry = Registry(strict=False)
    plugin = _plugin(pccore_register_precision=lambda: [Component("flat", _flat)],
                     pccore_register_update=_raise)
    assert registry.register(plugin, "half") is None
    assert registry.names("precision") == []
    ok = _plugin(pccore_register_precision=lambda: [Component("flat", _flat)])
    assert registry.register(ok, "again") == PluginInfo("again", "(local)", "", {"precision": ["flat"]},
                                                        "SimpleNamespace")


# --- conflicts and disabling -----------------------------------------------------------------------


def test_name_collision_with_a_builtin_names_both_distributions(fake):
    fake("pccore-clash", {"clash": "clash_plugin"}, _good("clash_plugin", "spiking"))
    with pytest.raises(PluginError) as err:
        load_registry(strict=False)
    message = str(err.value)
    assert message.startswith("precision 'spiking' is registered twice: by plugin ")
    assert "from distribution 'pccore'" in message
    assert "from distribution 'pccore-clash'" in message
    assert "PCCORE_DISABLE_PLUGINS=" in message


def test_name_collision_between_two_plugins_exact_message(fake):
    fake("pccore-one", {"one": "one_plugin"}, _good("one_plugin", "flat_test"))
    fake("pccore-two", {"two": "two_plugin"}, _good("two_plugin", "flat_test"))
    with pytest.raises(PluginError) as err:
        load_registry(strict=False, disabled=INSTALLED)
    # The folder prepended last comes first on sys.path, so pccore-two is loaded first.
    assert str(err.value) == (
        "precision 'flat_test' is registered twice: by plugin 'two' from distribution 'pccore-two' and by "
        "plugin 'one' from distribution 'pccore-one'. Uninstall one of them, or disable one with "
        "PCCORE_DISABLE_PLUGINS=one"
    )
    registry = load_registry(strict=True, disabled=[*INSTALLED, "one"])
    assert registry.provider("precision", "flat_test").distribution == "pccore-two"


def test_collision_through_register():
    registry = Registry()
    registry.register(_plugin(pccore_register_update=lambda: [Component("sgd", _flat)]), "a", "dist-a", "1")
    with pytest.raises(PluginError, match="update 'sgd' is registered twice: by plugin 'a' from distribution "
                                          "'dist-a' and by plugin 'b' from distribution 'dist-b'"):
        registry.register(_plugin(pccore_register_update=lambda: [Component("sgd", _flat)]), "b", "dist-b")
    assert [p.name for p in registry.plugins] == ["a"]


def test_disabled_plugins_are_not_even_imported(fake, monkeypatch, capsys):
    fake("pccore-off", {"off_ep": "off_plugin"}, {"off_plugin": RAISES_ON_IMPORT})
    fake("Pccore_Off.Too", {"also_off": "off_too_plugin"}, {"off_too_plugin": RAISES_ON_IMPORT})
    fake("pccore-flat", {"flat": "flat_plugin"}, _good("flat_plugin", "flat_test"))
    monkeypatch.setenv("PCCORE_DISABLE_PLUGINS", " off_ep, pccore-off-too ," + ",".join(INSTALLED))
    registry = load_registry(strict=True)
    assert registry.failures == []
    assert "off_plugin" not in sys.modules and "off_too_plugin" not in sys.modules
    assert "pccore-off:off_ep" in registry.disabled
    assert "Pccore_Off.Too:also_off" in registry.disabled
    assert [p.name for p in registry.plugins] == ["flat"]
    assert capsys.readouterr().err == ""


def test_disabling_an_unknown_name_warns(capsys):
    registry = load_registry(strict=False, disabled=[*INSTALLED, "no-such-plugin"])
    assert registry.plugins == []
    assert ("pccore: warning: PCCORE_DISABLE_PLUGINS names 'no-such-plugin', which matches no installed "
            "plugin") in capsys.readouterr().err


# --- lookup --------------------------------------------------------------------------------------


def _three_schedules() -> Registry:
    registry = Registry(strict=True)
    names = ["spiking", "constant", "decaying"]
    registry.register(_plugin(pccore_register_precision=lambda: [Component(n, _flat) for n in names]), "pc")
    return registry


def test_unknown_name_suggests_close_matches():
    registry = _three_schedules()
    assert registry.names("precision") == ["constant", "decaying", "spiking"]
    with pytest.raises(UsageError) as err:
        registry.component("precision", "spikng")
    assert str(err.value) == (
        "unknown precision 'spikng'; did you mean 'spiking'? Choose one of: constant, decaying, spiking"
    )
    assert err.value.exit_code == 2
    with pytest.raises(UsageError) as err:
        registry.build("precision", "xyz", None)
    assert str(err.value) == "unknown precision 'xyz'; Choose one of: constant, decaying, spiking"
    with pytest.raises(UsageError) as err:
        registry.provider("precision", "constnt")
    assert "did you mean 'constant'?" in str(err.value)


def test_unknown_kind_suggests_close_matches():
    with pytest.raises(UsageError) as err:
        Registry().names("precison")
    assert str(err.value) == (
        "unknown component kind 'precison'; did you mean 'precision'? Choose one of: architecture, dataset, "
        "inference, normalization, nudging, precision, update"
    )


def test_build_checks_the_component_interface():
    registry = _three_schedules()
    with pytest.raises(PluginError) as err:
        registry.build("precision", "spiking", None)
    assert str(err.value) == (
        "precision 'spiking' from distribution '(local)' is broken: its factory returned a builtins.object, "
        "which lacks table (required by PrecisionSchedule)"
    )


def test_every_kind_has_a_hook():
    from pccore.core import hookspecs

    specs = sorted(n for n, f in vars(hookspecs).items() if hasattr(f, "pccore_spec"))
    assert specs == sorted(f"pccore_register_{kind}" for kind in KINDS)


def test_builtin_components_come_from_the_pccore_distribution():
    registry = load_registry(strict=True, disabled=[])
    expected = {
        "precision": {"constant", "spiking", "decaying"},
        "update": {"standard", "forward", "backprop"},
        "normalization": {"none", "batchnorm", "frozen"},
        "nudging": {"clamp", "nudge", "center"},
        "architecture": {"vgg5", "vgg7", "vgg9", "vgg10", "vgg11", "vgg13", "vgg15", "vgg19", "mlp"},
        "dataset": {"synthetic", "digits", "cifar10", "cifar100", "tinyimagenet", "mnist", "fashionmnist",
                    "imagenet32", "imagenette", "imagenet10", "galaxy10"},
    }
    for kind, names in expected.items():
        assert names <= set(registry.names(kind)), kind
        for name in names:
            assert registry.provider(kind, name).distribution == "pccore"


# --- the process-wide registry and the command ------------------------------------------------------


def test_get_registry_is_cached_per_setting(monkeypatch):
    monkeypatch.setenv("PCCORE_DISABLE_PLUGINS", "pccore")
    first = get_registry()
    assert get_registry() is first
    monkeypatch.setenv("PCCORE_DISABLE_PLUGINS", "pccore,update")
    assert get_registry() is not first
    monkeypatch.setenv("PCCORE_DISABLE_PLUGINS", "pccore")
    assert get_registry() is first
    reset_registry()
    assert get_registry() is not first


def test_human_listing():
    registry = Registry(strict=False)
    sched = _plugin(pccore_register_precision=lambda: [Component("b", _flat), Component("a", _flat)],
                    pccore_register_update=lambda: [Component("u", _flat)])
    registry.register(sched, "sched", "pccore-sched", "1.2", "pccore_sched")
    registry.register(_plugin(), "empty", "pccore-empty", "", "pccore_empty")
    registry.register(_plugin(pccore_register_update=_raise), "bad", "pccore-bad", "0.1", "pccore_bad")
    registry.disabled.append("pccore-off:off")
    assert plugins._human(registry) == "\n".join([
        "empty  (pccore-empty; pccore_empty)",
        "    (no components)",
        "sched  (pccore-sched 1.2; pccore_sched)",
        "    precision:     a, b",
        "    update:        u",
        "",
        "disabled by PCCORE_DISABLE_PLUGINS: pccore-off:off",
        "",
        "failed to load:",
        "    plugin 'bad' from distribution 'pccore-bad' (entry point bad = pccore_bad) failed: "
        "ValueError: bad config",
    ])
    assert plugins._human(Registry()) == "no plugins installed"


def test_plugins_command_human_form(fake, capsys, monkeypatch):
    fake("pccore-flat", {"flat": "flat_plugin"}, _good("flat_plugin", "flat_test"), version="2.3")
    fake("pccore-broken", {"broken": "broken_plugin"}, {"broken_plugin": RAISES_ON_IMPORT})
    monkeypatch.setenv("PCCORE_DISABLE_PLUGINS", "pccore")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[out.index("flat  (pccore-flat 2.3; flat_plugin)") + 1] == "    precision:     flat_test"
    failed = out[out.index("failed to load:") + 1]
    assert failed.startswith("    plugin 'broken' from distribution 'pccore-broken'")


def test_plugins_command_in_a_subprocess(fake, tmp_path):
    """End to end: a fresh interpreter finds the fake distribution and pccore's own entry points."""
    root = fake("pccore-flat", {"flat": "flat_plugin"}, _good("flat_plugin", "flat_test"), version="2.3")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    env.pop("PCCORE_DISABLE_PLUGINS")
    done = subprocess.run([sys.executable, "-m", "pccore.cli", "plugins", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = {(p["distribution"], p["plugin"]): p for p in json.loads(done.stdout)}
    assert data["pccore-flat", "flat"]["components"] == {"precision": ["flat_test"]}
    assert data["pccore", "precision"]["version"] == pccore.__version__
    assert {"constant", "spiking", "decaying"} <= set(data["pccore", "precision"]["components"]["precision"])


# --- the example plugin package --------------------------------------------------------------------


@pytest.fixture
def example_schedule(tmp_path, monkeypatch):
    """The example package: installed if CI installed it, otherwise from the source tree plus a fake
    dist-info, so the test runs either way without installing anything."""
    try:
        importlib.metadata.distribution("pccore-example-schedule")
    except importlib.metadata.PackageNotFoundError:
        make_dist(tmp_path / "meta", "pccore-example-schedule", "0.1.0",
                  {"example_schedule": "pccore_example_schedule"})
        monkeypatch.syspath_prepend(str(tmp_path / "meta"))
        monkeypatch.syspath_prepend(str(EXAMPLE))
        importlib.invalidate_caches()
        yield
        sys.modules.pop("pccore_example_schedule", None)
    else:
        yield


def test_example_package_metadata_matches_the_fake():
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert project["name"] == "pccore-example-schedule"
    assert project["version"] == "0.1.0"
    assert project["entry-points"]["pccore"] == {"example_schedule": "pccore_example_schedule"}


def test_example_plugin_is_listed(example_schedule, capsys):
    data = _json_plugins(capsys)
    assert [p for p in data if p["distribution"] == "pccore-example-schedule"] == [{
        "plugin": "example_schedule", "distribution": "pccore-example-schedule", "version": "0.1.0",
        "entry_point": "pccore_example_schedule", "components": {"precision": ["linear_ramp"]},
    }]


def _example_only() -> Registry:
    return load_registry(strict=True, disabled=[d for d in INSTALLED if d != "pccore-example-schedule"])


def test_example_linear_ramp_table(example_schedule):
    registry = _example_only()
    params_class = registry.component("precision", "linear_ramp").params
    assert attrs.asdict(params_class()) == {"start": 0.1, "end": 1.0, "ramp": 3}

    # L = 3, T = 4: the error reaches layer 3 at t = 0, layer 2 at t = 1, layer 1 at t = 2;
    # with start 0.25, end 1, ramp 2 a layer reads 0.25, 0.625, 1.0 on its first three steps.
    table = registry.build("precision", "linear_ramp", params_class(start=0.25, end=1.0, ramp=2)).table(3, 4)
    assert isinstance(table, PrecisionTable)
    assert table.inference.dtype == torch.float64 and table.learning.dtype == torch.float64
    assert torch.equal(table.inference, torch.tensor([
        [0.25, 0.25, 0.25],
        [0.25, 0.25, 0.625],
        [0.25, 0.625, 1.0],
        [0.625, 1.0, 1.0],
    ], dtype=torch.float64))
    assert torch.equal(table.learning, torch.ones(3, dtype=torch.float64))

    # Fewer steps than layers, ramp 1: only the top layer gets past `start`.
    table = registry.build("precision", "linear_ramp", params_class(start=0.0, end=1.0, ramp=1)).table(4, 2)
    assert torch.equal(table.inference, torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
                                                     dtype=torch.float64))


def test_example_linear_ramp_rejects_bad_parameters(example_schedule):
    registry = _example_only()
    params_class = registry.component("precision", "linear_ramp").params
    with pytest.raises(ValueError, match="'ramp' must be >= 1: 0"):
        params_class(ramp=0)
    with pytest.raises(ValueError, match="end must be a finite number, got nan"):
        params_class(end=float("nan"))


def test_registering_twice_or_under_a_taken_name_is_reported():
    registry = Registry(strict=False)
    first = _plugin(pccore_register_update=lambda: [Component("sgd", _flat)])
    registry.register(first, "a")
    assert registry.register(first, "b") is None
    assert registry.register(_plugin(), "a") is None
    assert [f.error for f in registry.failures] == [
        "the same object is already registered as plugin '(local):a'",
        "a plugin named 'a' from '(local)' is already registered",
    ]
    assert [p.name for p in registry.plugins] == ["a"]


def test_hook_with_arguments_the_spec_lacks_is_reported():
    registry = Registry(strict=False)
    assert registry.register(_plugin(pccore_register_precision=lambda layers: []), "args") is None
    (failure,) = registry.failures
    assert failure.error.startswith("PluginValidationError: Plugin '(local):args' for hook "
                                    "'pccore_register_precision'")
    assert "{'layers'}" in failure.error
