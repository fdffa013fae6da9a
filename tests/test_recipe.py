"""Recipes: schema defaults, strict structuring, extends, --set overrides, TOML writing, flattening and
the `pccore recipe check|show` command. Error messages are covered in test_recipe_errors.py.

Most tests use `FakeRegistry`, a tiny registry with hand-made components, so they do not depend on the
built-in plugins; the tests at the end use the real registry and the built-in component names.
"""

from __future__ import annotations

import difflib
import enum
import json
import sys
from pathlib import Path
from typing import Literal

import attrs
import pytest

import pccore.core.registry
from pccore.cli import main
from pccore.core.components import Component, NoParams
from pccore.core.errors import UsageError
from pccore.recipe import (
    COMPONENT_KINDS,
    ComponentSection,
    DataSection,
    InferenceSection,
    LogSection,
    ModelSection,
    OptimizerSection,
    Recipe,
    RunSection,
    TrainSection,
    flatten_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    recipe_to_toml,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]

# --- a fake registry -----------------------------------------------------------------------------
# Its parameter classes exercise the recipe machinery (types, nesting, validators, extreme values); their
# rules need not match the built-in plugins'. The messages of the built-in rules are tested against the
# real registry in test_recipe_errors.py.


@attrs.frozen
class Crop:
    padding: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    flip: bool = False


@attrs.frozen
class FolderParams:
    root: str | None = None
    download: bool = False
    crop: Crop = Crop()
    mean: tuple[float, ...] = (0.5,)


@attrs.frozen
class NoiseParams:
    size: int = 8
    classes: int = 2
    weights: dict[str, float] = attrs.field(factory=dict)
    cache: Path = Path("cache")


@attrs.frozen
class MLPParams:
    hidden: list[int] = attrs.field(factory=lambda: [16])
    activation: Literal["tanh", "relu"] = "tanh"

    @hidden.validator
    def _widths(self, _attribute, value):
        if any(h < 1 for h in value):
            raise ValueError("every width must be at least 1")


@attrs.frozen
class ConvParams:
    width: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    activation: Literal["tanh", "relu"] = "relu"


@attrs.frozen
class ConstantParams:
    learning: Literal["ones", "table"] = "ones"


@attrs.frozen
class SpikeParams:
    peak: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    base: float = attrs.field(default=0.001, validator=attrs.validators.ge(0))
    learning: Literal["ones", "table"] = "ones"


@attrs.frozen
class DecayParams:
    k: float = 1.0
    variant: Literal["paper", "reference"] = "paper"
    learning: Literal["ones", "table"] = "ones"


@attrs.frozen
class NudgeParams:
    beta: float = 1.0


@attrs.frozen
class LevelParams:
    level: int


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@attrs.frozen
class ForwardParams:
    mode: Mode = Mode.FAST


@attrs.frozen
class IncrementalParams:
    variant: str = "plain"


def _make(name: str, params: type = NoParams) -> Component:
    return Component(name, lambda p: p, params)


class FakeRegistry:
    """The two methods recipes use, over a fixed table of components."""

    def __init__(self, table: dict[str, list[Component]]) -> None:
        self.table = {kind: {c.name: c for c in comps} for kind, comps in table.items()}

    def names(self, kind: str) -> list[str]:
        return sorted(self.table[kind])

    def component(self, kind: str, name: str) -> Component:
        if name not in self.table[kind]:
            close = difflib.get_close_matches(name, self.names(kind), n=2)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"unknown {kind} {name!r}{hint} choose one of: {', '.join(self.names(kind))}")
        return self.table[kind][name]


FAKE_TABLE = {
    "dataset": [_make("digits", FolderParams), _make("noise", NoiseParams)],
    "architecture": [_make("mlp", MLPParams), _make("conv", ConvParams)],
    "normalization": [_make("none"), _make("batchnorm", NudgeParams)],
    "precision": [
        _make("constant", ConstantParams),
        _make("spiking", SpikeParams),
        _make("decaying", DecayParams),
    ],
    "nudging": [_make("clamp"), _make("nudge", NudgeParams)],
    "update": [_make("standard"), _make("forward", ForwardParams), _make("leveled", LevelParams)],
    "inference": [_make("states"), _make("incremental", IncrementalParams)],
}
FAKE = FakeRegistry(FAKE_TABLE)


def write(directory: Path, name: str, text: str) -> Path:
    """Write a recipe file (creating folders) and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


DEFAULT_DICT = {
    "run": {
        "name": "",
        "seeds": [0],
        "device": "auto",
        "out_dir": "runs",
        "dtype": "float32",
        "precision": "fp32",
        "compile": False,
        "channels_last": False,
        "cuda_graphs": False,
    },
    "data": {
        "name": "digits",
        "batch_size": 128,
        "eval_batch_size": 1000,
        "validation_fraction": 0.0,
        "download": False,
        "crop": {"padding": 0, "flip": False},
        "mean": [0.5],
    },
    "model": {"name": "mlp", "output_energy": "se", "hidden": [16], "activation": "tanh"},
    "normalization": {"name": "none"},
    "precision": {"name": "constant", "learning": "ones"},
    "nudging": {"name": "clamp"},
    "update": {"name": "standard"},
    "inference": {"name": "states", "steps": 8, "lr": 0.1, "momentum": 0.0, "nesterov": True,
                  "decay_last_lr": False, "skip_below": 0.0},
    "optimizer": {"lr": 0.001, "weight_decay": 0.0001, "warmup": 0.1, "schedule_epochs": 25},
    "train": {"epochs": 50, "patience": 10, "max_batches": 0},
    "log": {"tensorboard": True, "every": 50, "checkpoints": True},
}
"""The default recipe over FAKE, written out by hand from the schema in the brief."""

# --- schema and defaults -------------------------------------------------------------------------


def test_empty_recipe_has_every_documented_default():
    recipe = recipe_from_dict({}, registry=FAKE)
    assert recipe.run == RunSection(
        name="", seeds=[0], device="auto", out_dir="runs", dtype="float32", precision="fp32",
        compile=False, channels_last=False,
    )
    assert recipe.data == DataSection(
        name="digits", params=FolderParams(), batch_size=128, eval_batch_size=1000
    )
    assert recipe.model == ModelSection(name="mlp", params=MLPParams(hidden=[16]), output_energy="se")
    assert recipe.normalization == ComponentSection(name="none", params=NoParams())
    assert recipe.precision == ComponentSection(name="constant", params=ConstantParams("ones"))
    assert recipe.nudging == ComponentSection(name="clamp", params=NoParams())
    assert recipe.update == ComponentSection(name="standard", params=NoParams())
    assert recipe.inference == InferenceSection(
        name="states", params=NoParams(), steps=8, lr=0.1, momentum=0.0, nesterov=True, decay_last_lr=False
    )
    assert recipe.optimizer == OptimizerSection(lr=1e-3, weight_decay=1e-4, warmup=0.1, schedule_epochs=25)
    assert recipe.train == TrainSection(epochs=50, patience=10, max_batches=0)
    assert recipe.log == LogSection(tensorboard=True, every=50, checkpoints=True)
    assert recipe.source is None


def test_component_params_are_structured_into_the_components_class():
    recipe = recipe_from_dict(
        {
            "data": {"name": "digits", "root": "/d", "crop": {"padding": 4}, "mean": [0.1, 0.2, 0.3],
                     "batch_size": 16},
            "model": {"name": "conv", "width": 2, "output_energy": "ce"},
            "precision": {"name": "spiking", "peak": 2, "base": 0.5},
            "nudging": {"name": "nudge", "beta": 0.25},
        },
        registry=FAKE,
    )
    assert recipe.data == DataSection(
        name="digits", params=FolderParams(root="/d", crop=Crop(padding=4), mean=(0.1, 0.2, 0.3)),
        batch_size=16, eval_batch_size=1000,
    )
    assert recipe.model == ModelSection(name="conv", params=ConvParams(width=2.0), output_energy="ce")
    assert recipe.precision.params == SpikeParams(peak=2.0, base=0.5, learning="ones")
    assert recipe.nudging.params == NudgeParams(beta=0.25)


def test_an_int_is_accepted_for_a_float_and_becomes_a_float():
    recipe = recipe_from_dict(
        {"inference": {"lr": 1, "momentum": 0}, "precision": {"name": "spiking", "peak": 3}}, registry=FAKE
    )
    assert type(recipe.inference.lr) is float and recipe.inference.lr == 1.0
    assert type(recipe.inference.momentum) is float
    assert type(recipe.precision.params.peak) is float and recipe.precision.params.peak == 3.0


def test_boundary_values_are_accepted():
    recipe = recipe_from_dict(
        {
            "inference": {"steps": 0, "momentum": 0.999},
            "optimizer": {"weight_decay": 0, "warmup": 1.0, "schedule_epochs": 1},
            "train": {"epochs": 1, "patience": 1, "max_batches": 0},
            "data": {"batch_size": 1, "eval_batch_size": 1},
            "run": {"device": "cuda:3", "seeds": [0, 7]},
        },
        registry=FAKE,
    )
    assert recipe.inference.steps == 0
    assert recipe.optimizer.warmup == 1.0
    assert recipe.data.batch_size == 1
    assert recipe.run.device == "cuda:3"


def test_recipe_equality_ignores_the_source_file():
    a = recipe_from_dict({}, source="a.toml", registry=FAKE)
    b = recipe_from_dict({}, source="elsewhere/a.toml", registry=FAKE)
    assert (a.source, b.source) == (Path("a.toml"), Path("elsewhere/a.toml"))
    assert a == b


def test_a_recipe_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[inference]\r\nsteps = 3\r\n")
    assert load_recipe(path, registry=FAKE).inference.steps == 3


def test_run_name_defaults_to_the_file_stem(tmp_path):
    assert load_recipe(write(tmp_path, "quick_try.toml", ""), registry=FAKE).run.name == "quick_try"
    named = write(tmp_path, "other.toml", '[run]\nname = "mine"\n')
    assert load_recipe(named, registry=FAKE).run.name == "mine"
    assert recipe_from_dict({}, registry=FAKE).run.name == ""


def test_load_recipe_reads_a_file_and_records_its_source(tmp_path):
    path = write(
        tmp_path,
        "r.toml",
        '[precision]\nname = "decaying"\nk = 1.5\nvariant = "reference"\n[inference]\nsteps = 12\nlr = 0.8\n',
    )
    recipe = load_recipe(str(path), registry=FAKE)
    assert recipe.source == path
    assert recipe.precision == ComponentSection("decaying", DecayParams(k=1.5, variant="reference"))
    assert (recipe.inference.steps, recipe.inference.lr) == (12, 0.8)


# --- extends -------------------------------------------------------------------------------------


def test_extends_chain_is_relative_to_each_file_and_later_values_win(tmp_path):
    write(tmp_path, "base/root.toml", "[inference]\nsteps = 3\nlr = 0.5\n[train]\nepochs = 2\n")
    write(
        tmp_path,
        "base/common.toml",
        'extends = "root.toml"\n[inference]\nsteps = 5\n[precision]\nname = "spiking"\npeak = 2.0\n',
    )
    child = write(
        tmp_path,
        "exp/child.toml",
        'extends = "../base/common.toml"\n[precision]\nbase = 0.01\n[train]\npatience = 3\n',
    )
    recipe = load_recipe(child, registry=FAKE)
    assert recipe.inference == InferenceSection(name="states", params=NoParams(), steps=5, lr=0.5)
    assert recipe.train == TrainSection(epochs=2, patience=3)
    assert recipe.precision == ComponentSection("spiking", SpikeParams(peak=2.0, base=0.01))
    assert recipe.run.name == "child"
    assert recipe.source == child


def test_child_naming_a_different_component_replaces_the_base_params(tmp_path):
    base = '[precision]\nname = "spiking"\npeak = 2.0\nbase = 0.5\nlearning = "table"\n'
    write(tmp_path, "base.toml", base)
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[precision]\nname = "decaying"\nk = 1.5\n')
    assert load_recipe(child, registry=FAKE).precision == ComponentSection("decaying", DecayParams(k=1.5))


def test_a_different_component_keeps_the_sections_own_keys(tmp_path):
    write(tmp_path, "base.toml", '[data]\nname = "digits"\nbatch_size = 32\ndownload = true\n')
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[data]\nname = "noise"\nsize = 4\n')
    data = load_recipe(child, registry=FAKE).data
    assert data == DataSection(name="noise", params=NoiseParams(size=4), batch_size=32, eval_batch_size=1000)


def test_naming_the_same_component_again_merges_params(tmp_path):
    write(tmp_path, "base.toml", '[precision]\nname = "spiking"\npeak = 2.0\n')
    text = 'extends = "base.toml"\n[precision]\nname = "spiking"\nbase = 0.5\n'
    child = write(tmp_path, "child.toml", text)
    assert load_recipe(child, registry=FAKE).precision.params == SpikeParams(peak=2.0, base=0.5)


def test_a_base_without_a_name_uses_the_default_component_for_the_comparison(tmp_path):
    write(tmp_path, "base.toml", '[precision]\nlearning = "table"\n')
    same = write(tmp_path, "same.toml", 'extends = "base.toml"\n[precision]\nname = "constant"\n')
    other = write(tmp_path, "other.toml", 'extends = "base.toml"\n[precision]\nname = "spiking"\n')
    assert load_recipe(same, registry=FAKE).precision.params == ConstantParams(learning="table")
    assert load_recipe(other, registry=FAKE).precision.params == SpikeParams(learning="ones")


def test_nested_tables_merge_recursively(tmp_path):
    write(tmp_path, "base.toml", "[data]\ncrop = { padding = 2, flip = true }\n")
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[data]\ncrop = { padding = 4 }\n')
    assert load_recipe(child, registry=FAKE).data.params.crop == Crop(padding=4, flip=True)


# --- --set overrides -----------------------------------------------------------------------------


def test_set_values_are_parsed_as_toml(tmp_path):
    path = write(tmp_path, "r.toml", "")
    recipe = load_recipe(
        path,
        [
            "inference.steps=14",
            "inference.nesterov=false",
            "optimizer.lr=1e-5",
            "run.seeds=[1, 2]",
            'data.root="/data/x y"',
            "data.crop={ padding = 3 }",
        ],
        registry=FAKE,
    )
    assert recipe.inference.steps == 14
    assert recipe.inference.nesterov is False
    assert recipe.optimizer.lr == 1e-5
    assert recipe.run.seeds == [1, 2]
    assert recipe.data.params.root == "/data/x y"
    assert recipe.data.params.crop == Crop(padding=3)


def test_a_bare_word_is_taken_as_a_string(tmp_path):
    path = write(tmp_path, "r.toml", "")
    recipe = load_recipe(
        path, ["precision.name=spiking", "run.device=cuda:1", "run.out_dir=runs/try1"], registry=FAKE
    )
    assert recipe.precision == ComponentSection("spiking", SpikeParams())
    assert recipe.run.device == "cuda:1"
    assert recipe.run.out_dir == "runs/try1"


def test_set_may_name_a_param_of_a_component_chosen_in_the_same_command(tmp_path):
    path = write(tmp_path, "r.toml", "")
    for order in (
        ["precision.peak=3", "precision.name=spiking"],
        ["precision.name=spiking", "precision.peak=3"],
    ):
        assert load_recipe(path, order, registry=FAKE).precision.params == SpikeParams(peak=3.0)


def test_set_naming_another_component_drops_the_params_it_lacks(tmp_path, capsys):
    path = write(tmp_path, "r.toml", '[precision]\nname = "spiking"\npeak = 2.0\n')
    recipe = load_recipe(path, ["precision.name=decaying", "precision.k=2.0"], registry=FAKE)
    assert recipe.precision == ComponentSection("decaying", DecayParams(k=2.0))
    assert capsys.readouterr().err == (
        'pccore: note: --set precision.name=decaying drops precision.peak (not a parameter of precision '
        '"decaying")\n'
    )


@attrs.frozen
class FirstParams:
    shared: int = 1
    only_first: int = 2
    gone: str = "x"


@attrs.frozen
class SecondParams:
    shared: int = 1
    only_second: int = 3


SWAP = FakeRegistry(
    {kind: [*FAKE_TABLE[kind], _make("first", FirstParams), _make("second", SecondParams)] for kind in FAKE_TABLE}
)
"""FAKE plus, in every kind, two components that share one parameter."""


@pytest.mark.parametrize("section", list(COMPONENT_KINDS))
def test_set_renaming_keeps_the_shared_params_in_every_component_section(tmp_path, capsys, section):
    text = f'[{section}]\nname = "first"\nshared = 5\nonly_first = 6\ngone = "y"\n'
    if section == "data":
        text += "batch_size = 7\n"
    path = write(tmp_path, "r.toml", text)
    recipe = load_recipe(path, [f"{section}.name=second"], registry=SWAP)
    assert getattr(recipe, section).params == SecondParams(shared=5, only_second=3)
    assert getattr(recipe, section).name == "second"
    if section == "data":
        assert recipe.data.batch_size == 7
    kind = COMPONENT_KINDS[section]
    assert capsys.readouterr().err == (
        f"pccore: note: --set {section}.name=second drops {section}.only_first, {section}.gone "
        f'(not parameters of {kind} "second")\n'
    )


@attrs.frozen
class WideParams:
    width: int = 2
    activation: Literal["gelu", "relu"] = "gelu"


def test_set_renaming_keeps_a_shared_param_and_checks_it_against_the_new_component(tmp_path):
    wide = FakeRegistry({**FAKE_TABLE, "architecture": [*FAKE_TABLE["architecture"], _make("wide", WideParams)]})
    path = write(tmp_path, "r.toml", '[model]\nname = "conv"\nwidth = 0.5\nactivation = "relu"\n')
    with pytest.raises(UsageError) as caught:
        load_recipe(path, ["model.name=wide"], registry=wide)
    assert str(caught.value) == f"{path}: model.width: expected an integer, got 0.5"
    recipe = load_recipe(path, ["model.name=wide", "model.width=3"], registry=wide)
    assert recipe.model.params == WideParams(width=3, activation="relu")


def test_set_renaming_to_the_same_component_or_an_unknown_one_drops_nothing_silently(tmp_path, capsys):
    path = write(tmp_path, "r.toml", '[precision]\nname = "spiking"\npeak = 2.0\n')
    recipe = load_recipe(path, ["precision.name=spiking"], registry=FAKE)
    assert recipe.precision.params == SpikeParams(peak=2.0)
    with pytest.raises(UsageError) as caught:
        load_recipe(path, ["precision.name=spikin"], registry=FAKE)
    assert str(caught.value).startswith("--set precision.name=spikin: precision.name: unknown precision 'spikin'")
    assert "peak" not in str(caught.value)
    assert capsys.readouterr().err == ""


def test_set_applies_after_extends(tmp_path):
    write(tmp_path, "base.toml", "[inference]\nsteps = 3\nlr = 0.5\n")
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[inference]\nsteps = 5\n')
    recipe = load_recipe(child, ["inference.steps=7"], registry=FAKE)
    assert (recipe.inference.steps, recipe.inference.lr) == (7, 0.5)


def test_spaces_around_a_set_value_are_ignored(tmp_path):
    path = write(tmp_path, "r.toml", '[precision]\nname = "spiking"\n')
    recipe = load_recipe(path, ["precision.peak = 2.5"], registry=FAKE)
    assert recipe.precision.params.peak == 2.5


# --- writing: dict, TOML, flat -------------------------------------------------------------------


def test_recipe_to_dict_fills_every_default_in_schema_order():
    result = recipe_to_dict(recipe_from_dict({}, registry=FAKE))
    assert result == DEFAULT_DICT
    assert list(result) == list(DEFAULT_DICT)
    assert list(result["data"]) == [
        "name", "batch_size", "eval_batch_size", "validation_fraction", "download", "crop", "mean"
    ]


def test_recipe_to_toml_writes_the_expected_text():
    recipe = recipe_from_dict(
        {
            "run": {"name": 'say "hi"', "seeds": [0, 1], "out_dir": "C:\\runs"},
            "precision": {"name": "spiking", "peak": 1e-5, "base": 2.5e-7},
            "data": {"root": "tab\there", "crop": {"padding": 2}},
            "optimizer": {"lr": 1e16},
        },
        registry=FAKE,
    )
    text = recipe_to_toml(recipe)
    assert (
        '[run]\nname = "say \\"hi\\""\nseeds = [\n    0,\n    1,\n]\ndevice = "auto"\nout_dir = "C:\\\\runs"\n'
    ) in text
    assert '[precision]\nname = "spiking"\npeak = 1e-05\nbase = 2.5e-07\nlearning = "ones"\n' in text
    assert (
        '[data]\nname = "digits"\nbatch_size = 128\neval_batch_size = 1000\nvalidation_fraction = 0.0\n'
        'root = "tab\there"\n'
        "download = false\nmean = [\n    0.5,\n]\n\n[data.crop]\npadding = 2\nflip = false\n\n[model]\n"
    ) in text
    assert "\nlr = 1e+16\n" in text
    assert '\n\n[model]\nname = "mlp"\noutput_energy = "se"\nhidden = [\n    16,\n]\nactivation = "tanh"\n\n' in text
    assert text.endswith("[log]\ntensorboard = true\nevery = 50\ncheckpoints = true\n")


def test_recipe_to_toml_parses_back_to_recipe_to_dict():
    recipe = recipe_from_dict(
        {"precision": {"name": "decaying", "k": -3.25e38}, "data": {"root": "ü \u0001 \\ \""}},
        registry=FAKE,
    )
    assert tomllib.loads(recipe_to_toml(recipe)) == recipe_to_dict(recipe)


def test_the_largest_allowed_numbers_round_trip_exactly(tmp_path):
    data = {
        "run": {"name": "big"},
        "precision": {"name": "decaying", "k": 3.4028234663852886e38},
        "update": {"name": "leveled", "level": -(2**31 - 1)},
        "train": {"epochs": 2**31 - 1},
    }
    recipe = recipe_from_dict(data, registry=FAKE)
    again = load_recipe(write(tmp_path, "again.toml", recipe_to_toml(recipe)), registry=FAKE)
    assert again == recipe
    assert (again.precision.params.k, again.update.params.level, again.train.epochs) == (
        3.4028234663852886e38, -(2**31 - 1), 2**31 - 1
    )


ROUND_TRIP = {
    "defaults": "",
    "everything": """
[run]
name = "full"
seeds = [3, 1, 4]
device = "cuda:0"
out_dir = "out/dir"
dtype = "float64"
precision = "bf16"
compile = true
channels_last = true
[data]
name = "digits"
root = "C:\\\\data\\\\\\"quoted\\"\\n\\u00e9"
download = true
crop = { padding = 4, flip = true }
mean = [0.4914, 0.4822, 0.4465]
batch_size = 7
eval_batch_size = 9
[model]
name = "conv"
width = 0.125
activation = "tanh"
output_energy = "ce"
[normalization]
name = "batchnorm"
beta = 0.3
[precision]
name = "spiking"
peak = 1e-5
base = 2.5e-7
learning = "table"
[nudging]
name = "nudge"
beta = 1e-300
[update]
name = "leveled"
level = -3
[inference]
steps = 0
lr = 0.8
momentum = 0.1
nesterov = false
decay_last_lr = true
[optimizer]
lr = 7.5e-4
weight_decay = 0
warmup = 0.0
schedule_epochs = 1
[train]
epochs = 1
patience = 1
max_batches = 3
[log]
tensorboard = false
every = 1
checkpoints = false
""",
    "decaying": '[precision]\nname = "decaying"\nk = 1.5\nvariant = "reference"\n[data]\nname = "noise"\n',
    "containers": """
[data]
name = "noise"
weights = { a = 1, "b c" = 0.5 }
cache = "some/where"
[update]
name = "forward"
mode = "slow"
""",
}


@pytest.mark.parametrize("text", list(ROUND_TRIP.values()), ids=list(ROUND_TRIP))
def test_toml_round_trip_gives_an_equal_recipe(tmp_path, text):
    original = load_recipe(write(tmp_path, "orig.toml", text), registry=FAKE)
    written = recipe_to_toml(original)
    again = load_recipe(write(tmp_path, "again.toml", written), registry=FAKE)
    assert again == original
    assert recipe_to_toml(again) == written


def test_round_trip_of_the_everything_recipe_keeps_exact_values(tmp_path):
    recipe = load_recipe(write(tmp_path, "e.toml", ROUND_TRIP["everything"]), registry=FAKE)
    assert recipe.data.params.root == 'C:\\data\\"quoted"\n\u00e9'
    assert recipe.precision.params == SpikeParams(peak=1e-5, base=2.5e-7, learning="table")
    assert recipe.nudging.params == NudgeParams(beta=1e-300)
    assert recipe.update.params == LevelParams(level=-3)
    assert recipe.optimizer.weight_decay == 0.0
    assert recipe.run.seeds == [3, 1, 4]


def test_table_path_and_enum_params():
    recipe = recipe_from_dict(
        {
            "data": {"name": "noise", "weights": {"a": 1, "b c": 0.5}, "cache": "some/where"},
            "update": {"name": "forward", "mode": "slow"},
        },
        registry=FAKE,
    )
    assert recipe.data.params == NoiseParams(weights={"a": 1.0, "b c": 0.5}, cache=Path("some/where"))
    assert type(recipe.data.params.weights["a"]) is float
    assert recipe.update.params.mode is Mode.SLOW
    as_dict = recipe_to_dict(recipe)
    assert as_dict["data"] == {
        "name": "noise", "batch_size": 128, "eval_batch_size": 1000, "validation_fraction": 0.0, "size": 8,
        "classes": 2,
        "weights": {"a": 1.0, "b c": 0.5}, "cache": "some/where",
    }
    assert as_dict["update"] == {"name": "forward", "mode": "slow"}
    text = recipe_to_toml(recipe)
    assert '\ncache = "some/where"\n\n[data.weights]\na = 1.0\n"b c" = 0.5\n\n[model]\n' in text
    assert flatten_recipe(recipe)["data/weights/b c"] == 0.5


def test_flatten_recipe_gives_slash_separated_scalars():
    recipe = recipe_from_dict(
        {"run": {"seeds": [0, 1]}, "precision": {"name": "spiking", "peak": 2}, "data": {"root": "/d"}},
        registry=FAKE,
    )
    assert flatten_recipe(recipe) == {
        "run/name": "",
        "run/seeds": "[0, 1]",
        "run/device": "auto",
        "run/out_dir": "runs",
        "run/dtype": "float32",
        "run/precision": "fp32",
        "run/compile": False,
        "run/channels_last": False,
        "run/cuda_graphs": False,
        "data/name": "digits",
        "data/batch_size": 128,
        "data/eval_batch_size": 1000,
        "data/validation_fraction": 0.0,
        "data/root": "/d",
        "data/download": False,
        "data/crop/padding": 0,
        "data/crop/flip": False,
        "data/mean": "[0.5]",
        "model/name": "mlp",
        "model/output_energy": "se",
        "model/hidden": "[16]",
        "model/activation": "tanh",
        "normalization/name": "none",
        "precision/name": "spiking",
        "precision/peak": 2.0,
        "precision/base": 0.001,
        "precision/learning": "ones",
        "nudging/name": "clamp",
        "update/name": "standard",
        "inference/name": "states",
        "inference/steps": 8,
        "inference/lr": 0.1,
        "inference/momentum": 0.0,
        "inference/nesterov": True,
        "inference/decay_last_lr": False,
        "inference/skip_below": 0.0,
        "optimizer/lr": 0.001,
        "optimizer/weight_decay": 0.0001,
        "optimizer/warmup": 0.1,
        "optimizer/schedule_epochs": 25,
        "train/epochs": 50,
        "train/patience": 10,
        "train/max_batches": 0,
        "log/tensorboard": True,
        "log/every": 50,
        "log/checkpoints": True,
    }


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
def fake_registry(monkeypatch):
    """Make the CLI (which takes no registry argument) use FAKE."""
    monkeypatch.setattr(pccore.core.registry, "get_registry", lambda: FAKE)
    return FAKE


def test_recipe_show_prints_the_resolved_toml(tmp_path, capsys, fake_registry):
    path = write(tmp_path, "quick.toml", '[precision]\nname = "spiking"\npeak = 2\n')
    assert main(["recipe", "show", str(path), "--set", "inference.steps=9"]) == 0
    out, _ = capsys.readouterr()
    shown = tomllib.loads(out)
    expected = {
        **DEFAULT_DICT,
        "run": {**DEFAULT_DICT["run"], "name": "quick"},
        "precision": {"name": "spiking", "peak": 2.0, "base": 0.001, "learning": "ones"},
        "inference": {**DEFAULT_DICT["inference"], "steps": 9},
    }
    assert shown == expected
    assert out == recipe_to_toml(load_recipe(path, ["inference.steps=9"], registry=FAKE))


# --- with the real registry and the built-in plugins ---------------------------------------------


def test_builtin_components_load_from_a_recipe(tmp_path):
    from pccore.core.registry import get_registry

    registry = get_registry()
    path = write(
        tmp_path,
        "builtin.toml",
        """
[data]
name = "synthetic"
[model]
name = "vgg5"
activation = "relu"
width = 0.5
[precision]
name = "spiking"
peak = 2
base = 0.01
learning = "table"
[nudging]
name = "nudge"
beta = 0.5
""",
    )
    recipe = load_recipe(path)
    spiking = registry.component("precision", "spiking").params
    assert recipe.precision == ComponentSection("spiking", spiking(peak=2.0, base=0.01, learning="table"))
    assert recipe.nudging.params == registry.component("nudging", "nudge").params(beta=0.5)
    assert (recipe.model.params.activation, recipe.model.params.width) == ("relu", 0.5)
    assert recipe.data.params == registry.component("dataset", "synthetic").params()
    again = load_recipe(write(tmp_path, "again.toml", recipe_to_toml(recipe)))
    assert again == recipe


def test_builtin_precision_can_be_switched_with_set(tmp_path):
    path = write(tmp_path, "r.toml", '[precision]\nname = "spiking"\npeak = 2.0\n')
    recipe = load_recipe(path, ["precision.name=decaying", "precision.k=1.5", "precision.variant=reference"])
    assert recipe.precision.name == "decaying"
    assert (recipe.precision.params.k, recipe.precision.params.variant) == (1.5, "reference")
    assert recipe.precision.params.learning == "ones"


def test_builtin_model_switched_with_set_keeps_width_and_activation(capsys):
    quickstart = REPO / "recipes" / "quickstart.toml"
    assert main(["recipe", "show", str(quickstart), "--set", "model.name=vgg10"]) == 0
    out, err = capsys.readouterr()
    model = tomllib.loads(out)["model"]
    assert model == {"name": "vgg10", "output_energy": "se", "activation": "gelu", "width": 0.125}
    assert err == ""
    assert main(["recipe", "show", str(quickstart), "--set", "model.name=mlp"]) == 0
    out, err = capsys.readouterr()
    model = tomllib.loads(out)["model"]
    assert model == {"name": "mlp", "output_energy": "se", "hidden": [128, 128], "activation": "gelu",
                     "init": "default"}
    assert err == 'pccore: note: --set model.name=mlp drops model.width (not a parameter of architecture "mlp")\n'


def test_recipe_check_prints_an_ok_line_and_the_model(tmp_path, capsys):
    path = write(tmp_path, "quick.toml", '[precision]\nname = "spiking"\n[train]\nepochs = 3\n')
    argv = ["recipe", "check", str(path), "--set", "inference.steps=4", "--set", "run.seeds=[0, 1]"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    # the default mlp on the default digits (3x32x32, 10 classes): 3072*128 + 128, 128*128 + 128, 128*10 + 10
    assert out == (
        f"OK {path} (quick): data digits, model mlp, normalization none, precision spiking, "
        "nudging clamp, update standard, inference states; 4 inference steps, 3 epochs, seeds [0, 1]\n"
        "mlp on 3x32x32, 10 classes: L = 3 layers, 411,146 parameters\n"
    )
    assert 3072 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10 == 411_146
    assert err == ""


# VGG19 of BEYOND.md C by hand: 16 convs (in*out*9 + out each), then one linear layer to the classes; with
# BatchNorm Freezing each conv has 2*out affine parameters more.
VGG19_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), *[(256, 256)] * 3, (256, 512),
               *[(512, 512)] * 7]
VGG19_CIFAR10 = sum(i * o * 9 + o for i, o in VGG19_CONVS) + 512 * 1 * 1 * 10 + 10
VGG19_TINY_BF = sum(i * o * 9 + o + 2 * o for i, o in VGG19_CONVS) + 512 * 2 * 2 * 200 + 200


@pytest.mark.parametrize("recipe,expected", [
    ("vgg5_cifar10_sf.toml", f"vgg19 on 3x32x32, 10 classes: L = 17 layers, {VGG19_CIFAR10:,} parameters"),
    ("vgg15_tinyimagenet_sf_bf.toml",
     f"vgg19 on 3x64x64, 200 classes: L = 17 layers, {VGG19_TINY_BF:,} parameters"),
])
def test_recipe_check_reports_layers_and_every_digit_of_the_parameter_count(capsys, recipe, expected):
    assert main(["recipe", "check", str(REPO / "recipes" / recipe), "--set", 'model.name="vgg19"']) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("OK ")
    assert out[1] == expected
    assert (VGG19_CIFAR10, VGG19_TINY_BF) == (20_029_514, 20_445_192)


def test_recipe_check_json_holds_the_model(capsys):
    path = REPO / "recipes" / "vgg15_tinyimagenet_sf_bf.toml"
    assert main(["recipe", "check", str(path), "--json", "--set", "model.width=0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "recipe": str(path),
        "name": "vgg15_tinyimagenet_sf_bf",
        "components": {"data": "tinyimagenet", "model": "vgg15", "normalization": "frozen",
                       "precision": "spiking", "nudging": "clamp", "update": "forward", "inference": "states"},
        "inference_steps": 15,
        "epochs": 50,
        "seeds": [0, 1, 2, 3, 4],
        # VGG15 at half width on 64x64: 13 convs with BatchNorm, 256*2*2 -> 2048 (+ BatchNorm) -> 200
        "model": {"name": "vgg15", "input_shape": [3, 64, 64], "num_classes": 200, "layers": 15,
                  "parameters": sum(i * o * 9 + 3 * o for i, o in [
                      (3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 128), (128, 256),
                      (256, 256), (256, 256), (256, 256), (256, 256), (256, 256)])
                  + 1024 * 2048 + 3 * 2048 + 2048 * 200 + 200},
    }


def test_recipe_check_builds_the_model_on_the_meta_device(capsys, monkeypatch):
    from pccore_plugins.architectures import VGG

    devices = set()
    build = VGG.build

    def spy(self, *args):
        blocks = build(self, *args)
        devices.update(p.device.type for b in blocks for p in b.parameters())
        return blocks

    monkeypatch.setattr(VGG, "build", spy)
    path = REPO / "recipes" / "vgg15_tinyimagenet_sf_bf.toml"
    assert main(["recipe", "check", str(path), "--set", 'model.name="vgg19"']) == 0
    assert devices == {"meta"}


def test_recipe_check_refuses_an_input_too_small_for_the_model_naming_the_smallest(capsys):
    quickstart = REPO / "recipes" / "quickstart.toml"  # digits at 16x16
    assert main(["recipe", "check", str(quickstart), "--set", 'model.name="vgg19"']) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("pccore: error: model 'vgg19': vgg19: input 3x16x16 is too small for its layout; the smallest "
                   "image it accepts is 32x32 (height and width at least 32)\n")


def test_builtin_mlp_hidden_is_a_list_of_ints(tmp_path):
    recipe = load_recipe(write(tmp_path, "r.toml", '[model]\nname = "mlp"\nhidden = [8, 4]\n'))
    assert recipe.model.params.hidden == [8, 4]


def test_builtin_error_through_the_cli(tmp_path, capsys):
    path = write(tmp_path, "bad.toml", '[precision]\nname = "spiking"\npeak = "high"\n')
    assert main(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: precision.peak: expected a number, got \"high\"" in err
    assert "Traceback" not in err


SHIPPED = sorted((REPO / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_recipes_load_and_round_trip(tmp_path, path):
    recipe = load_recipe(path)
    assert recipe.run.name
    again = load_recipe(write(tmp_path, path.name, recipe_to_toml(recipe)))
    assert again == recipe


def test_recipe_class_lists_every_section():
    names = [f.name for f in attrs.fields(Recipe)]
    assert names == [
        "run", "data", "model", "normalization", "precision", "nudging", "update",
        "inference", "optimizer", "train", "log", "source",
    ]
