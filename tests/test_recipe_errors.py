"""Every way a recipe can be wrong, through the real command line (`pccore.cli.main`): exit status 2,
one line on stderr naming the file, the key path and what was expected, and no traceback.

The recipe machinery's errors use the fake registry of test_recipe.py; the errors of the built-in
components' own parameter rules (the messages users see) use the real registry, `builtin_registry`.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

import pccore.core.registry
from pccore.cli import main
from pccore.core.components import Component
from pccore.core.errors import PluginError, RecipeError
from pccore.recipe import load_recipe, recipe_from_dict
from tests.test_recipe import FAKE, FAKE_TABLE, FakeRegistry, write

_BUILTIN_REGISTRY = pccore.core.registry.get_registry


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch):
    """The CLI takes no registry argument: make it use the fake one."""
    monkeypatch.setattr(pccore.core.registry, "get_registry", lambda: FAKE)


@pytest.fixture
def builtin_registry(monkeypatch):
    """The real registry, with the built-in plugins, instead of the fake one."""
    monkeypatch.setattr(pccore.core.registry, "get_registry", _BUILTIN_REGISTRY)


def fail(capsys, *argv: str | Path) -> str:
    """Run `pccore recipe check ...`, assert a clean exit 2 and return the error message."""
    code = main(["recipe", "check", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert out == ""
    assert err.startswith("pccore: error: ")
    assert err.count("\n") == 1, err
    return err.removeprefix("pccore: error: ").rstrip("\n")


def check_file(tmp_path: Path, capsys, text: str, *overrides: str) -> tuple[str, str]:
    """Write `text` to bad.toml, check it, return (message, path)."""
    path = write(tmp_path, "bad.toml", text)
    args = [a for o in overrides for a in ("--set", o)]
    return fail(capsys, path, *args), str(path)


# --- reading -------------------------------------------------------------------------------------


def test_recipe_file_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert fail(capsys, missing) == f"recipe file not found: {missing}"


def test_recipe_path_that_is_a_directory(tmp_path, capsys):
    assert fail(capsys, tmp_path) == f"{tmp_path}: is a directory, expected a TOML recipe file"


def test_invalid_toml_names_line_and_column(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "[inference]\nsteps = 3\nlr = = 2\n")
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3, column 6" in message


def test_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'[run]\nname = "caf\xe9"\n')
    message = fail(capsys, path)
    assert message == f"{path}: not UTF-8 text (invalid continuation byte at byte 17); save it as UTF-8"


# --- unknown names -------------------------------------------------------------------------------


def test_unknown_section_with_close_match(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "[precison]\nname = 'spiking'\n")
    expected = f'{path}: precison: unknown section; did you mean "precision"? valid: run, data, model,'
    assert message.startswith(expected)


def test_unknown_top_level_key(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "steps = 3\n")
    assert message.startswith(f"{path}: steps: unknown section; valid: run, data, model,")


def test_section_that_is_not_a_table(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "run = 3\n")
    assert message == f"{path}: run: expected a table [run], got 3"


def test_unknown_key_in_a_core_section(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "[optimizer]\nweight_decy = 3\n")
    assert message == (
        f'{path}: optimizer.weight_decy: unknown key; did you mean "weight_decay"? '
        "valid: lr, weight_decay, warmup, schedule_epochs"
    )


def test_unknown_key_in_the_inference_section_names_its_algorithm(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "[inference]\nstesp = 3\n")
    assert message == (
        f'{path}: inference.stesp: unknown key for inference "states"; did you mean "steps"? '
        "valid: name, steps, lr, momentum, nesterov, decay_last_lr, skip_below"
    )


def test_unknown_key_in_a_component_block(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, '[precision]\nname = "spiking"\npeek = 2.0\n')
    assert message == (
        f'{path}: precision.peek: unknown key for precision "spiking"; did you mean "peak"? '
        "valid: name, peak, base, learning"
    )


def test_key_of_another_component_is_unknown(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "[precision]\npeak = 2.0\n")
    assert message.startswith(f'{path}: precision.peak: unknown key for precision "constant";')
    assert message.endswith("valid: name, learning")


def test_unknown_key_in_a_nested_params_table(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "[data]\ncrop = { paddin = 2 }\n")
    assert message == f'{path}: data.crop.paddin: unknown key; did you mean "padding"? valid: padding, flip'


def test_unknown_component_name(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, '[precision]\nname = "spikng"\n')
    assert message.startswith(f"{path}: precision.name: unknown precision 'spikng'; did you mean 'spiking'?")


def test_component_name_that_is_not_a_string(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "[model]\nname = 5\n")
    assert message == f"{path}: model.name: expected a string (the name of an architecture), got 5"


# --- wrong types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[precision]\nname = "spiking"\npeak = "high"\n', 'precision.peak: expected a number, got "high"'),
        ("[inference]\nsteps = 2.5\n", "inference.steps: expected an integer, got 2.5"),
        ("[inference]\nnesterov = 1\n", "inference.nesterov: expected true or false, got 1"),
        ("[inference]\nlr = true\n", "inference.lr: expected a number, got true"),
        ('[inference]\nlr = "0.1"\n', 'inference.lr: expected a number, got "0.1"'),
        ("[data]\nbatch_size = true\n", "data.batch_size: expected an integer, got true"),
        ("[run]\nname = 3\n", "run.name: expected a string, got 3"),
        ('[run]\nseeds = "0"\n', 'run.seeds: expected a list of integers, got "0"'),
        ('[run]\nseeds = [0, "a"]\n', 'run.seeds[1]: expected an integer, got "a"'),
        ('[run]\ndtype = "float16"\n', 'run.dtype: expected one of "float32", "float64", got "float16"'),
        ('[model]\noutput_energy = "mse"\n', 'model.output_energy: expected one of "se", "ce", got "mse"'),
        ('[model]\nhidden = [16, 2.0]\n', "model.hidden[1]: expected an integer, got 2.0"),
        ("[data]\nroot = 3\n", "data.root: expected a string, got 3"),
        ("[data]\ncrop = 3\n", "data.crop: expected a table, got 3"),
        ("[data]\ncrop = { padding = 1.5 }\n", "data.crop.padding: expected an integer, got 1.5"),
        ('[data]\nmean = [0.1, "x"]\n', 'data.mean[1]: expected a number, got "x"'),
        ("[run]\nname = 1979-05-27\n", "run.name: expected a string, got 1979-05-27"),
        ('[data]\nname = "noise"\nweights = 3\n', "data.weights: expected a table, got 3"),
        ('[data]\nname = "noise"\nweights = { a = "x" }\n', 'data.weights.a: expected a number, got "x"'),
        ('[data]\nname = "noise"\ncache = 3\n', "data.cache: expected a string (a path), got 3"),
        (
            '[update]\nname = "forward"\nmode = "medium"\n',
            'update.mode: expected one of "fast", "slow", got "medium"',
        ),
    ],
)
def test_wrong_type(tmp_path, capsys, text, expected):
    message, path = check_file(tmp_path, capsys, text)
    assert message == f"{path}: {expected}"


def test_missing_required_param(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, '[update]\nname = "leveled"\n')
    assert message == f"{path}: update.level: required key is missing"


# --- out of range --------------------------------------------------------------------------------


SEEDS = "a non-empty list of distinct seeds >= 0 (each seed gets its own folder)"
FOLDER_NAME = 'a folder name (no "/" or "\\", not "." or "..")'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[inference]\nsteps = -1\n", "inference.steps: expected an integer >= 0, got -1"),
        ("[inference]\nlr = 0\n", "inference.lr: expected a number > 0, got 0.0"),
        ("[inference]\nmomentum = 1.0\n", "inference.momentum: expected a number in [0, 1), got 1.0"),
        ("[optimizer]\nlr = -0.001\n", "optimizer.lr: expected a number > 0, got -0.001"),
        (
            "[optimizer]\nweight_decay = -1e-4\n",
            "optimizer.weight_decay: expected a number >= 0, got -0.0001",
        ),
        ("[optimizer]\nwarmup = 1.5\n", "optimizer.warmup: expected a number in [0, 1], got 1.5"),
        ("[optimizer]\nschedule_epochs = 0\n", "optimizer.schedule_epochs: expected an integer >= 1, got 0"),
        ("[data]\nbatch_size = 0\n", "data.batch_size: expected an integer >= 1, got 0"),
        ("[data]\neval_batch_size = -5\n", "data.eval_batch_size: expected an integer >= 1, got -5"),
        ("[train]\nepochs = 0\n", "train.epochs: expected an integer >= 1, got 0"),
        ("[train]\npatience = 0\n", "train.patience: expected an integer >= 1, got 0"),
        ("[train]\nmax_batches = -1\n", "train.max_batches: expected an integer >= 0, got -1"),
        ("[log]\nevery = 0\n", "log.every: expected an integer >= 1, got 0"),
        ("[run]\nseeds = []\n", f"run.seeds: expected {SEEDS}, got []"),
        ("[run]\nseeds = [1, -2]\n", f"run.seeds: expected {SEEDS}, got [1, -2]"),
        ("[run]\nseeds = [1, 2, 1]\n", f"run.seeds: expected {SEEDS}, got [1, 2, 1]"),
        ('[run]\nname = "../elsewhere"\n', f'run.name: expected {FOLDER_NAME}, got "../elsewhere"'),
        ('[run]\nname = ".."\n', f'run.name: expected {FOLDER_NAME}, got ".."'),
        ('[run]\nname = "a\\\\b"\n', f'run.name: expected {FOLDER_NAME}, got "a\\\\b"'),
        ('[run]\ndevice = "gpu"\n', 'run.device: expected "auto", "cpu", "cuda" or "cuda:N", got "gpu"'),
    ],
)
def test_out_of_range(tmp_path, capsys, text, expected):
    message, path = check_file(tmp_path, capsys, text)
    assert message == f"{path}: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[nudging]\nname = "nudge"\nbeta = 0\n', "nudging.beta: 'beta' must be > 0: 0.0"),
        ('[nudging]\nname = "nudge"\nbeta = 1.5\n', "nudging.beta: 'beta' must be <= 1: 1.5"),
        ('[nudging]\nname = "center"\nbeta = -0.1\n', "nudging.beta: 'beta' must be > 0: -0.1"),
        ('[nudging]\nname = "center"\nresample = "step"\n',
         'nudging.resample: expected one of "batch", "epoch", got "step"'),
        ('[precision]\nname = "decaying"\nk = -1\n', "precision.k: 'k' must be >= 0: -1.0"),
        ('[precision]\nname = "decaying"\nvariant = "pcx"\n',
         'precision.variant: expected one of "paper", "reference", got "pcx"'),
        ('[precision]\nname = "spiking"\nbase = -1\n', "precision.base: 'base' must be >= 0: -1.0"),
        ('[precision]\nname = "spiking"\npeak = 0\n', "precision.peak: 'peak' must be > 0: 0.0"),
        ('[normalization]\nname = "frozen"\nmomentum = 0\n', "normalization.momentum: 'momentum' must be > 0: 0.0"),
        ('[normalization]\nname = "batchnorm"\nmomentum = 1.5\n',
         "normalization.momentum: 'momentum' must be <= 1: 1.5"),
        ('[normalization]\nname = "frozen"\neps = 0\n', "normalization.eps: 'eps' must be > 0: 0.0"),
        ('[model]\nname = "vgg5"\nwidth = 0\n', "model.width: 'width' must be > 0: 0.0"),
        ('[model]\nname = "mlp"\nhidden = [0, 4]\n',
         "model.hidden: every hidden width must be at least 1 (got [0, 4])"),
    ],
)
def test_builtin_component_rules_give_these_messages(tmp_path, capsys, builtin_registry, text, expected):
    """The built-in plugins' own validators through the real registry: the exact messages users see."""
    message, path = check_file(tmp_path, capsys, text)
    assert message == f"{path}: {expected}"


INT_LIMIT = (
    "an integer between -2147483647 and 2147483647 (2**31-1, the largest size or count torch indexes tensors with)"
)
FLOAT_LIMIT = "a number of magnitude at most 3.402823e+38 (the largest float32)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[inference]\nlr = nan\n", "inference.lr: expected a finite number, got nan"),
        ("[optimizer]\nweight_decay = inf\n", "optimizer.weight_decay: expected a finite number, got inf"),
        ('[precision]\nname = "spiking"\npeak = -inf\n', "precision.peak: expected a finite number, got -inf"),
        ("[data]\nmean = [0.5, nan]\n", "data.mean[1]: expected a finite number, got nan"),
        ('[data]\nname = "noise"\nweights = { a = 1.0, b = inf }\n',
         "data.weights.b: expected a finite number, got inf"),
        ("[inference]\nlr = 1e39\n", f"inference.lr: expected {FLOAT_LIMIT}, got 1e+39"),
        ('[precision]\nname = "decaying"\nk = -3.5e38\n', f"precision.k: expected {FLOAT_LIMIT}, got -3.5e+38"),
        ("[train]\nepochs = 2147483648\n", f"train.epochs: expected {INT_LIMIT}, got 2147483648"),
        ("[run]\nseeds = [0, 99999999999]\n", f"run.seeds[1]: expected {INT_LIMIT}, got 99999999999"),
        ('[update]\nname = "leveled"\nlevel = -2147483648\n', f"update.level: expected {INT_LIMIT}, got -2147483648"),
        ('[data]\ncrop = { padding = 9223372036854775807 }\n',
         f"data.crop.padding: expected {INT_LIMIT}, got 9223372036854775807"),
        ('[run]\nout_dir = "a\\u0000b"\n', 'run.out_dir: expected a string without NUL characters, got "a\\u0000b"'),
        ('[data]\nname = "noise"\ncache = "\\u0000"\n',
         'data.cache: expected a string without NUL characters, got "\\u0000"'),
    ],
)
def test_numbers_beyond_what_torch_takes_and_nul_characters_are_rejected(tmp_path, capsys, text, expected):
    message, path = check_file(tmp_path, capsys, text)
    assert message == f"{path}: {expected}"


def test_component_params_validator_reports_the_key_path(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, '[precision]\nname = "spiking"\nbase = -1\n')
    assert message == f"{path}: precision.base: 'base' must be >= 0: -1.0"


def test_builtin_component_rules_stop_a_run_before_anything_is_written(tmp_path, capsys, builtin_registry):
    text = '[precision]\nname = "spiking"\nbase = -0.5\n[train]\nepochs = 1\nmax_batches = 1\n'
    path = write(tmp_path, "bad.toml", text)
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"pccore: error: {path}: precision.base: 'base' must be >= 0: -0.5\n"
    assert not (tmp_path / "o").exists()


def test_builtin_component_rules_apply_to_set_overrides(tmp_path, capsys, builtin_registry):
    message, _ = check_file(tmp_path, capsys, '[nudging]\nname = "nudge"\n', "nudging.beta=2")
    assert message == "--set nudging.beta=2: nudging.beta: 'beta' must be <= 1: 2.0"


@attrs.frozen
class OrderedParams:
    low: float = 0.0
    high: float = 1.0

    def __attrs_post_init__(self):
        if self.low >= self.high:
            raise ValueError("low must be below high")


def test_params_post_init_error_names_the_section():
    table = {**FAKE_TABLE, "precision": [Component("ordered", lambda p: p, OrderedParams)]}
    with pytest.raises(RecipeError, match=r"^<recipe>: precision: ValueError: low must be below high$"):
        recipe_from_dict({"precision": {"name": "ordered", "low": 2}}, registry=FakeRegistry(table))


def test_nested_params_validator_reports_the_key_path(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "[data]\ncrop = { padding = -2 }\n")
    assert message == f"{path}: data.crop.padding: 'padding' must be >= 0: -2"


def test_every_problem_is_reported_on_one_line(tmp_path, capsys):
    message, path = check_file(
        tmp_path, capsys, "[inference]\nsteps = -1\n[train]\nepochs = 2.5\n[log]\nevery = 0\n"
    )
    assert message == (
        f"{path}: inference.steps: expected an integer >= 0, got -1; "
        f"{path}: train.epochs: expected an integer, got 2.5; "
        f"{path}: log.every: expected an integer >= 1, got 0"
    )


# --- extends -------------------------------------------------------------------------------------


def test_missing_extends_target(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, 'extends = "base/missing.toml"\n')
    target = tmp_path / "base" / "missing.toml"
    assert message == f"{path}: extends: file not found: {target} (paths are relative to {path})"


def test_cyclic_extends_lists_the_chain(tmp_path, capsys):
    a = write(tmp_path, "a.toml", 'extends = "sub/b.toml"\n')
    write(tmp_path, "sub/b.toml", 'extends = "../a.toml"\n')
    assert fail(capsys, a) == f"cyclic extends: {a} -> {tmp_path / 'sub' / 'b.toml'} -> {a}"


def test_a_recipe_that_extends_itself(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, 'extends = "bad.toml"\n')
    assert message == f"cyclic extends: {path} -> {path}"


def test_extends_that_is_not_a_string(tmp_path, capsys):
    message, path = check_file(tmp_path, capsys, "extends = 3\n")
    assert message == f"{path}: extends: expected a string (a path relative to this file), got 3"


def test_error_in_a_base_file_names_the_base_file(tmp_path, capsys):
    base = write(tmp_path, "base/common.toml", "[inference]\nsteps = -3\n[train]\nepochs = 2\n")
    message, _ = check_file(tmp_path, capsys, 'extends = "base/common.toml"\n[train]\nepochs = 0\n')
    child = tmp_path / "bad.toml"
    assert message == (
        f"{base}: inference.steps: expected an integer >= 0, got -3; "
        f"{child}: train.epochs: expected an integer >= 1, got 0"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[inference]\nsteps = 3\nlr = 0.5\nsteps = 4\n[train]\nepochs = 2\n",
         "inference.steps is defined twice (line 4)"),
        ('[run]\nname = "a"\n[train]\nepochs = 1\n[run]\nseeds = [1]\n', "the table [run] is defined twice (line 5)"),
        ("[model]\nhidden = [\n  8,\n  4,\n]\nhidden = [\n  2,\n]\n", "model.hidden is defined twice (line 6)"),
        ("[data]\ncrop = { padding = 2, padding = 4 }\n",
         "the key padding is defined twice in one inline table (line 2)"),
        ('[data]\n"batch_size" = 1\nbatch_size = 2\n', "data.batch_size is defined twice (line 3)"),
        ("extends = 'a.toml'\nextends = 'b.toml'\n", "extends is defined twice (line 2)"),
    ],
)
def test_a_key_defined_twice_is_named_with_its_line(tmp_path, capsys, text, expected):
    message, path = check_file(tmp_path, capsys, text)
    assert message == f"{path}: invalid TOML: {expected}"


def test_invalid_toml_in_a_base_file_names_the_base_file(tmp_path, capsys):
    base = write(tmp_path, "base.toml", "[run\n")
    message, _ = check_file(tmp_path, capsys, 'extends = "base.toml"\n')
    assert message.startswith(f"{base}: invalid TOML: ")
    assert "line 1" in message


# --- --set ---------------------------------------------------------------------------------------


def test_set_of_a_key_that_does_not_exist(tmp_path, capsys):
    message, _ = check_file(tmp_path, capsys, "", "inference.stesp=3")
    assert message == (
        '--set inference.stesp=3: unknown key inference.stesp (inference "states"); did you mean "steps"? '
        "valid: name, steps, lr, momentum, nesterov, decay_last_lr, skip_below"
    )


def test_set_of_a_param_the_chosen_component_lacks(tmp_path, capsys):
    message, _ = check_file(tmp_path, capsys, '[precision]\nname = "spiking"\n', "precision.k=1.5")
    assert message == (
        '--set precision.k=1.5: unknown key precision.k (precision "spiking"); '
        "valid: name, peak, base, learning"
    )


def test_set_of_a_param_after_switching_component_in_the_same_command(tmp_path, capsys):
    text = '[precision]\nname = "decaying"\n'
    message, _ = check_file(tmp_path, capsys, text, "precision.name=spiking", "precision.k=2")
    assert message.startswith('--set precision.k=2: unknown key precision.k (precision "spiking")')


def test_set_of_an_unknown_section(tmp_path, capsys):
    message, _ = check_file(tmp_path, capsys, "", "infrence.steps=3")
    expected = "--set infrence.steps=3: unknown section 'infrence'; did you mean \"inference\"?"
    assert message.startswith(expected)


def test_set_of_an_unknown_component_name(tmp_path, capsys):
    message, _ = check_file(tmp_path, capsys, "", "precision.name=spikng", "precision.peak=2")
    assert message.startswith("--set precision.name=spikng: precision.name: unknown precision 'spikng'")
    assert "did you mean 'spiking'" in message


@pytest.mark.parametrize("value", ["[1,", '"open', "1.2.3", "{", "", "1 2", "3\nfoo = 4"])
def test_set_with_a_malformed_value(tmp_path, capsys, value):
    message, _ = check_file(tmp_path, capsys, "", f"inference.steps={value}")
    shown = f"inference.steps={value}" if value.isprintable() else repr(f"inference.steps={value}")
    assert message.startswith(f"--set {shown}: malformed value {value!r}: ")


@pytest.mark.parametrize("argument", ["inference.steps", "steps=3", "inference.=3", ".steps=3", "a.b.c=1"])
def test_set_that_is_not_section_key_value(tmp_path, capsys, argument):
    message, _ = check_file(tmp_path, capsys, "", argument)
    assert message == f"--set {argument}: expected SECTION.KEY=VALUE, e.g. --set inference.steps=14"


def test_set_value_of_the_wrong_type_names_the_set_argument(tmp_path, capsys):
    message, _ = check_file(tmp_path, capsys, "", "inference.steps=2.5")
    assert message == "--set inference.steps=2.5: inference.steps: expected an integer, got 2.5"


def test_set_bare_word_of_the_wrong_type(tmp_path, capsys):
    message, _ = check_file(tmp_path, capsys, "", "inference.nesterov=yes")
    assert message == '--set inference.nesterov=yes: inference.nesterov: expected true or false, got "yes"'


def test_set_value_out_of_range(tmp_path, capsys):
    message, _ = check_file(tmp_path, capsys, "", "data.batch_size=0")
    assert message == "--set data.batch_size=0: data.batch_size: expected an integer >= 1, got 0"


# --- the Python API ------------------------------------------------------------------------------


def test_recipe_errors_are_recipe_errors_with_exit_status_2(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, "r.toml", "[train]\nepochs = 0\n"), registry=FAKE)
    assert info.value.exit_code == 2


def test_recipe_from_dict_rejects_extends():
    with pytest.raises(RecipeError, match=r"^<recipe>: extends: extends is resolved only when a recipe is"):
        recipe_from_dict({"extends": "base.toml"}, registry=FAKE)


def test_recipe_from_dict_names_its_source():
    with pytest.raises(RecipeError, match=r"^mine\.toml: inference\.steps: expected an integer, got 1\.5$"):
        recipe_from_dict({"inference": {"steps": 1.5}}, source="mine.toml", registry=FAKE)


def test_recipe_from_dict_of_something_that_is_not_a_table():
    with pytest.raises(RecipeError, match=r"^<recipe>: expected a table of sections, got \[1\]$"):
        recipe_from_dict([1], registry=FAKE)


@attrs.frozen
class ClashParams:
    batch_size: int = 3


def test_params_that_clash_with_the_sections_own_keys_are_a_plugin_error():
    table = {**FAKE_TABLE, "dataset": [*FAKE_TABLE["dataset"], Component("clash", lambda p: p, ClashParams)]}
    with pytest.raises(PluginError, match=r"dataset 'clash' has parameters named batch_size"):
        recipe_from_dict({"data": {"name": "clash"}}, registry=FakeRegistry(table))


def test_params_that_are_not_an_attrs_class_are_a_plugin_error():
    table = {**FAKE_TABLE, "nudging": [Component("plain", lambda p: p, dict)]}
    with pytest.raises(PluginError, match=r"^nudging 'plain': its params <class 'dict'> is not an attrs"):
        recipe_from_dict({"nudging": {"name": "plain"}}, registry=FakeRegistry(table))
