"""The Python API: recipes trained from Python match the command line bit for bit, overrides in both
forms, engines around the user's own blocks (built-in and third-party components, checked parameters),
trained engines loaded back, and `help(pccore)` listing the public names."""

from __future__ import annotations

import copy
import json
import pydoc
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from torch import nn

import pccore
from pccore.cli import main
from pccore.core.components import NoParams, PrecisionTable
from pccore.core.engine import PCEngine
from pccore.core.errors import RecipeError, UsageError
from pccore.core.registry import Registry, get_registry
from pccore.recipe import load_recipe as load_recipe_file
from pccore.recipe import recipe_from_dict, recipe_to_dict
from pccore.run.checkpoint import load_checkpoint
from pccore.run.data import BatchFeeder
from pccore.run.evaluation import evaluate
from pccore_plugins import architectures, datasets, inference, normalization, nudging, precision, update
from pccore_plugins.normalization import FreezableBatchNorm1d, FrozenBatchNorm
from pccore_plugins.nudging import Clamp
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate
from tests.test_training import write_recipe

VOLATILE = {"run_dir", "wall_s", "seconds"}
"""Summary keys that differ between two identical runs (where they ran, how long they took)."""


def _stable(value):
    """A summary without its volatile keys, at every depth."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value




def _weights(run_dir: Path, name: str = "checkpoint.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "seed_0" / name)["model"]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- training a recipe ---------------------------------------------------------------------------


def test_train_from_python_matches_the_command_line(tmp_path, capsys, one_thread):
    recipe = write_recipe(tmp_path, normalization="frozen")
    cli_dir, api_dir, dict_dir = tmp_path / "cli", tmp_path / "api", tmp_path / "dict"
    assert main(["run", str(recipe), "--set", "train.epochs=2", "--set", "inference.lr=0.2",
                 "--out", str(cli_dir)]) == 0
    capsys.readouterr()
    summary = pccore.train(recipe, {"train.epochs": 2, "inference.lr": 0.2}, out=api_dir, quiet=True)
    assert capsys.readouterr().out == ""  # quiet
    raw = recipe_to_dict(load_recipe_file(recipe))
    from_dict = pccore.train(raw, ["train.epochs=2", "inference.lr=0.2"], out=dict_dir, quiet=True)

    cli_summary = json.loads((cli_dir / "summary.json").read_text())
    assert summary["run_dir"] == str(api_dir)
    assert _stable(summary) == _stable(cli_summary) == _stable(from_dict)
    assert summary["seeds"][0]["epochs"] == 2
    for run_dir in (api_dir, dict_dir):
        assert _same_weights(_weights(run_dir), _weights(cli_dir))
        assert (run_dir / "recipe.toml").read_text() == (cli_dir / "recipe.toml").read_text()

    # the trained engine comes back with the best weights: its accuracy is the summary's best top-1
    engine = pccore.load_engine(api_dir, device="cpu")
    assert not engine.model.training
    resolved = pccore.load_recipe(api_dir / "recipe.toml")
    data = get_registry().build("dataset", resolved.data.name, resolved.data.params).load()
    feeder = BatchFeeder(data, train=False, batch_size=512, device=torch.device("cpu"))
    top1, _ = evaluate(engine, feeder.epoch(0, 0), 5)
    assert top1 == summary["seeds"][0]["best_top1"]
    last = pccore.load_engine(api_dir, checkpoint="last", device="cpu")
    assert _same_weights(last.model.state_dict(), _weights(api_dir))
    assert evaluate(last, feeder.epoch(0, 0), 5)[0] == summary["seeds"][0]["final_top1"]

    # resuming a finished run skips every seed and reports the same summary
    assert _stable(pccore.resume(api_dir, quiet=True)) == _stable(summary)


def test_load_engine_names_what_is_missing(tmp_path, one_thread):
    recipe = write_recipe(tmp_path, epochs=1)
    out = tmp_path / "run"
    pccore.train(recipe, ["log.checkpoints=false"], out=out, quiet=True)
    with pytest.raises(UsageError, match=r"best.pt does not exist .*log.checkpoints = false keeps no weights"):
        pccore.load_engine(out)
    with pytest.raises(UsageError, match='checkpoint must be "best" or "last"'):
        pccore.load_engine(out, checkpoint="final")


# --- load_recipe ---------------------------------------------------------------------------------


def test_mapping_overrides_equal_set_strings(tmp_path):
    path = write_recipe(tmp_path)
    mapping = {"inference.steps": 5, "precision.name": "decaying", "precision.k": 1.5, "run.seeds": [1, 2],
               "run.name": 'we"ird\tname', "model.hidden": (16, 8), "log.tensorboard": False}
    strings = ["inference.steps=5", "precision.name=decaying", "precision.k=1.5", "run.seeds=[1, 2]",
               'run.name="we\\"ird\\tname"', "model.hidden=[16, 8]", "log.tensorboard=false"]
    from_mapping = pccore.load_recipe(path, mapping)
    assert from_mapping == load_recipe_file(path, strings)
    assert from_mapping.run.name == 'we"ird\tname' and from_mapping.precision.params.k == 1.5
    assert pccore.load_recipe(str(path), strings) == from_mapping


def test_numpy_values_count_as_python_values(tmp_path):
    mapping = {"inference.steps": np.int64(5), "inference.lr": np.float32(0.5), "inference.nesterov": np.bool_(False),
               "run.seeds": np.arange(2)}
    for source in (write_recipe(tmp_path), {}):
        recipe = pccore.load_recipe(source, mapping)
        assert (recipe.inference.steps, recipe.inference.lr, recipe.inference.nesterov) == (5, 0.5, False)
        assert recipe.run.seeds == [0, 1] and type(recipe.run.seeds[0]) is int


def test_dict_recipes_take_both_override_forms():
    raw = {"model": {"name": "mlp", "hidden": [8]}, "precision": {"name": "spiking"}}
    assert pccore.load_recipe(raw, ["precision.name=decaying", "inference.steps=3"]) == pccore.load_recipe(
        raw, {"precision.name": "decaying", "inference.steps": 3}
    )
    recipe = pccore.load_recipe(raw, ["inference.lr=0.25"])
    assert recipe.inference.lr == 0.25 and recipe.model.params.hidden == [8]
    assert raw == {"model": {"name": "mlp", "hidden": [8]}, "precision": {"name": "spiking"}}  # not mutated
    assert pccore.load_recipe(recipe, {"train.epochs": 2}) == attrs.evolve(
        recipe, train=attrs.evolve(recipe.train, epochs=2)
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"inference.stepz": 3}, 'inference.stepz: unknown key for inference "states"; did you mean "steps"?'),
        ({"inference": 3}, "expected a key SECTION.KEY"),
        (["inference.steps"], "expected SECTION.KEY=VALUE"),
        (["inference.steps=[1,"], "not a single TOML value"),
        (["inference.steps=1\nlr = 2"], "not a single TOML value"),
        ({"inference.lr": -1.0}, "inference.lr: expected a number > 0, got -1.0"),
        ({"run.name": None}, "run.name: expected a string, got None"),
    ],
)
def test_bad_overrides_say_which_key(tmp_path, overrides, message):
    with pytest.raises(RecipeError) as err:
        pccore.load_recipe({"model": {"name": "mlp"}}, overrides)
    assert message in str(err.value)


def test_bad_overrides_on_a_file_say_which_key(tmp_path):
    with pytest.raises(RecipeError,
                       match=r"unknown key inference.stepz \(inference \"states\"\); did you mean \"steps\"\?"):
        pccore.load_recipe(write_recipe(tmp_path), {"inference.stepz": 3})
    with pytest.raises(RecipeError, match=r"override run.name: cannot write a object \(<object object"):
        pccore.load_recipe(write_recipe(tmp_path), {"run.name": object()})


def test_a_recipe_of_another_type_is_refused():
    with pytest.raises(UsageError, match="not int"):
        pccore.load_recipe(3)


# --- make_engine ---------------------------------------------------------------------------------


def _blocks(norm: bool = False) -> nn.ModuleList:
    torch.manual_seed(1)
    return nn.ModuleList([
        nn.Sequential(nn.Linear(4, 6), *([nn.BatchNorm1d(6)] if norm else []), nn.Tanh()),
        nn.Sequential(nn.Linear(6, 5), nn.Tanh()),
        nn.Linear(5, 3),
    ]).double()


def test_make_engine_equals_an_engine_assembled_by_hand():
    blocks = _blocks(norm=True)
    by_hand_blocks = copy.deepcopy(blocks)
    engine = pccore.make_engine(blocks, num_classes=3, precision={"name": "spiking", "peak": 2.0},
                                update="forward", normalization="frozen", steps=4, lr=0.5, momentum=0.1)
    norm = FrozenBatchNorm(normalization.BatchNormParams())
    norm.prepare(by_hand_blocks)
    by_hand = PCEngine(by_hand_blocks, Spiking(SpikingParams(peak=2.0)).table(3, 4), ForwardUpdate(NoParams()),
                       norm, Clamp(NoParams()), steps=4, lr=0.5, momentum=0.1, num_classes=3)
    assert isinstance(engine, PCEngine) and engine.model is blocks
    assert torch.equal(engine.table.inference, by_hand.table.inference)
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    out, ref = engine.train_step(x, y), by_hand.train_step(x, y)
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.energy, ref.energy)
    for p, q in zip(blocks.parameters(), by_hand_blocks.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_make_engine_defaults_are_the_recipe_defaults():
    engine = pccore.make_engine(_blocks(), num_classes=3)
    defaults = recipe_from_dict({})
    inference = defaults.inference
    assert (engine.T, engine._lrs[0][0], engine.momentum, engine.nesterov, engine.output_energy) == (
        inference.steps, inference.lr, inference.momentum, inference.nesterov, defaults.model.output_energy
    )
    registry = get_registry()
    for kind, attribute in (("update", "update"), ("normalization", "norm"), ("nudging", "nudging")):
        assert type(getattr(engine, attribute)) is type(registry.build(kind, getattr(defaults, kind).name))
    schedule = registry.build("precision", defaults.precision.name)
    assert torch.equal(engine.table.inference, schedule.table(3, inference.steps).inference)


def test_the_users_optimizer_and_batchnorm_stay_valid():
    """An optimizer made before make_engine keeps working: BatchNorm Freezing adapts the user's
    BatchNorm in place, and its running statistics move once per batch."""
    blocks = _blocks(norm=True)
    bn = blocks[0][1]
    optimizer = torch.optim.SGD(blocks.parameters(), lr=0.1)
    before = bn.weight.detach().clone()
    engine = pccore.make_engine(list(blocks), num_classes=3, normalization="frozen", update="forward",
                                precision="spiking", steps=3)
    assert type(engine.model[0][1]) is FreezableBatchNorm1d and engine.model[0][1] is bn
    for _ in range(2):
        engine.train_step(torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,)))
        optimizer.step()
    assert not torch.equal(bn.weight.detach(), before)
    assert int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"precision": {"name": "spiking", "peak": -1.0}}, "make_engine: precision.peak: 'peak' must be > 0: -1.0"),
        ({"precision": "spikng"}, "make_engine: precision.name: unknown precision 'spikng'; did you mean"),
        ({"steps": -1}, "make_engine: inference.steps: expected an integer >= 0, got -1"),
        ({"momentum": 1.0}, "make_engine: inference.momentum: expected a number in [0, 1), got 1.0"),
        ({"output_energy": "mse"}, "make_engine: model.output_energy"),
        ({"update": {"name": "forward", "beta": 1}}, 'unknown key for update "forward"'),
    ],
)
def test_make_engine_checks_components_like_a_recipe(kwargs, message):
    with pytest.raises(RecipeError) as err:
        pccore.make_engine(_blocks(), num_classes=3, **kwargs)
    assert message in str(err.value)


def test_make_engine_messages_are_the_recipes():
    with pytest.raises(RecipeError) as from_engine:
        pccore.make_engine(_blocks(), num_classes=3, precision={"name": "decaying", "k": -1, "variant": "x"})
    with pytest.raises(RecipeError) as from_recipe:
        recipe_from_dict({"precision": {"name": "decaying", "k": -1, "variant": "x"}})
    assert str(from_engine.value).removeprefix("make_engine: ") == str(from_recipe.value).removeprefix(
        "<recipe>: "
    )


def test_make_engine_finds_third_party_components():
    @attrs.define(frozen=True)
    class FlatParams:
        value: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))

    class Flat:
        def __init__(self, params):
            self.value = params.value

        def table(self, layers, steps):
            return PrecisionTable(torch.full((steps, layers), self.value, dtype=torch.float64),
                                  torch.ones(layers, dtype=torch.float64))

    class FlatPlugin:
        @pccore.hookimpl
        def pccore_register_precision(self):
            return [pccore.Component("flat", Flat, FlatParams)]

    registry = Registry(strict=True)
    for module in (architectures, datasets, inference, normalization, nudging, precision, update):
        registry.register(module, module.__name__.rsplit(".", 1)[1], "pccore")
    registry.register(FlatPlugin(), "flat", "pccore-flat")
    engine = pccore.make_engine(_blocks(), num_classes=3, precision={"name": "flat", "value": 0.5}, steps=2,
                                registry=registry)
    assert torch.equal(engine.table.inference, torch.full((2, 3), 0.5, dtype=torch.float64))
    with pytest.raises(RecipeError, match=r"make_engine: precision.value: 'value' must be > 0: 0.0"):
        pccore.make_engine(_blocks(), num_classes=3, precision={"name": "flat", "value": 0.0}, registry=registry)


def test_make_engine_takes_component_objects():
    schedule = Spiking(SpikingParams(base=0.5))
    engine = pccore.make_engine(_blocks(), num_classes=3, precision=schedule, steps=3)
    assert torch.equal(engine.table.inference, schedule.table(3, 3).inference)
    with pytest.raises(UsageError, match="precision: expected a component name, .* implementing PrecisionSchedule"):
        pccore.make_engine(_blocks(), num_classes=3, precision=42)


@pytest.mark.parametrize(
    "blocks,kwargs,message",
    [
        ([], {}, "blocks is empty"),
        (nn.Linear(2, 2), {}, "blocks must be a list of nn.Module blocks f_1..f_L, not a Linear"),
        ([nn.Linear(2, 2), "relu"], {}, "blocks[1] is a str, expected an nn.Module"),
        ([nn.Tanh()], {}, "the blocks have no parameters"),
        ([nn.Linear(2, 2)], {"num_classes": 0}, "num_classes must be an integer >= 1"),
    ],
)
def test_make_engine_refuses_bad_blocks(blocks, kwargs, message):
    with pytest.raises(UsageError) as err:
        pccore.make_engine(blocks, **{"num_classes": 2, **kwargs})
    assert message in str(err.value)


def test_make_engine_refuses_batchnorm_without_a_policy_for_it():
    with pytest.raises(UsageError, match=r"^normalization 'none': the blocks hold 1 BatchNorm layer"):
        pccore.make_engine(_blocks(norm=True), num_classes=3)


# --- looking inside ------------------------------------------------------------------------------


def test_schedule_and_diagnosis_equal_the_commands_json(tmp_path, capsys, one_thread):
    path = write_recipe(tmp_path)
    sets = ["--set", "inference.steps=4", "--set", "run.dtype='float64'"]
    overrides = {"inference.steps": 4, "run.dtype": "float64"}
    assert main(["schedule", str(path), *sets, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pccore.precision_schedule(path, overrides)
    assert main(["diagnose", str(path), *sets, "--json", "--smoke"]) == 0
    assert json.loads(capsys.readouterr().out) == pccore.diagnose_recipe(path, overrides, smoke=True)


def test_diagnose_batch_on_a_users_engine_leaves_it_untouched():
    blocks = _blocks(norm=True)
    engine = pccore.make_engine(blocks, num_classes=3, precision="spiking", update="forward",
                                normalization="frozen", steps=3, lr=0.5)
    state = copy.deepcopy(blocks.state_dict())
    report = pccore.diagnose_batch(engine, torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,)))
    assert (report["layers"], report["steps"]) == (3, 3)
    assert len(report["energy"]) == 3 and report["energy"][0][:2] == [0.0, 0.0]  # the wavefront
    assert min(report["cosine_to_bp"]) > 0.9
    assert _same_weights(blocks.state_dict(), state)


def test_benchmark_reports_both_algorithms(tmp_path, one_thread):
    report = pccore.benchmark(write_recipe(tmp_path), steps=1, warmup=0, device="cpu", memory=False)
    assert report["recipe"] == str(tmp_path / "tiny.toml")
    assert report["ratio"] == report["pc_step_s"] / report["bp_step_s"]
    assert report["pc_peak_mb"] is None and report["memory"] == "not measured"
    with pytest.raises(UsageError, match="--steps must be at least 1"):
        pccore.benchmark(write_recipe(tmp_path), steps=0)


# --- documentation -------------------------------------------------------------------------------


def test_help_lists_every_public_name_with_a_docstring():
    text = pydoc.render_doc(pccore, renderer=pydoc.plaintext)
    for name in pccore.__all__:
        if name == "__version__":
            assert f"VERSION\n    {pccore.__version__}" in text
            continue
        listed = f"\n    {name}(" in text or f"class {name}(" in text or f"\n    {name} = " in text
        assert listed, f"help(pccore) does not list {name}"
        assert (getattr(pccore, name).__doc__ or "").strip(), f"pccore.{name} has no docstring"
