"""Zeros in the precision table are skipped exactly (issue 14).

The engine evaluates only the blocks whose energy has a non-zero weight at a step, asks for gradients of
the states those blocks touch, lets every other state that has moved before coast on its momentum, and
takes a block's prediction from the initial pass while its input has not moved. The references are the
slow unmasked implementation (every layer's energy at every step, torch.optim.SGD), the hand-written
ResNet energy of tests/test_resnet.py, and the engine's own recording mode, which evaluates every block
within the wavefront at every step.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pccore.core.components import NoParams, PrecisionTable
from pccore_plugins.architectures import MLP, MLPParams
from pccore_plugins.normalization import BatchNormParams, FrozenBatchNorm
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate, StandardUpdate
from tests.engine_helpers import engine, tanh_mlp, unmasked_inference
from tests.test_resnet import HandResNet, _assert_states_equal, resnet

STD, FWD = StandardUpdate(NoParams()), ForwardUpdate(NoParams())


def zero_pattern_table(layers, steps, seed, density=0.4):
    """Random positive weights with about (1 - density) of the entries exactly zero."""
    g = torch.Generator().manual_seed(seed)
    values = 0.2 + torch.rand(steps, layers, generator=g, dtype=torch.float64)
    keep = torch.rand(steps, layers, generator=g) < density
    return PrecisionTable(values * keep, 0.5 + torch.rand(layers, generator=g, dtype=torch.float64))


def count_calls(blocks):
    calls = {"n": 0}
    hooks = [b.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1)) for b in blocks]
    return calls, hooks


TABLES = [
    ("pure spike", lambda L, T: Spiking(SpikingParams(base=0.0)).table(L, T)),
    ("random zeros a", lambda L, T: zero_pattern_table(L, T, 1)),
    ("random zeros b", lambda L, T: zero_pattern_table(L, T, 2, density=0.7)),
    ("no zeros", lambda L, T: zero_pattern_table(L, T, 3, density=1.1)),
]


@pytest.mark.parametrize("name,make", TABLES, ids=[t[0] for t in TABLES])
@pytest.mark.parametrize("momentum,nesterov,ce", [(0.0, True, False), (0.3, True, True), (0.6, False, False)])
@pytest.mark.parametrize("update", ["standard", "forward"])
def test_skipping_zeros_equals_the_unmasked_reference(name, make, momentum, nesterov, ce, update):
    """States after T = L + 3 steps against every layer's energy at every step, float64, 1e-12."""
    blocks = tanh_mlp([6, 5, 5, 4, 4, 3])
    table = make(5, 8)
    eng = engine(blocks, table, STD if update == "standard" else FWD, lr=0.3, momentum=momentum,
                 nesterov=nesterov, num_classes=3, output_energy="ce" if ce else "se")
    x0 = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    trace = eng.infer(x0, y)
    reference = unmasked_inference(blocks, x0, F.one_hot(y, 3).double(), table.inference,
                                   lr=0.3, momentum=momentum, nesterov=nesterov, ce=ce)
    for l in range(1, 5):
        torch.testing.assert_close(trace.states[l], reference[l - 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,make", TABLES, ids=[t[0] for t in TABLES])
def test_a_training_step_with_zeros_skipped_equals_the_recording_mode(name, make):
    """Loss, reported energies at each layer's last evaluation, weight gradients and BatchNorm Freezing's
    running statistics: the skipping plan against the plan that evaluates every block in the wavefront."""
    norm = FrozenBatchNorm(BatchNormParams())
    blocks = nn.ModuleList(MLP(MLPParams(hidden=[7, 6, 5], activation="tanh")).build((4,), 3, norm)).double()
    twin = copy.deepcopy(blocks)
    table = make(4, 6)
    x0 = torch.randn(9, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    eng = engine(blocks, table, FWD, lr=0.4, momentum=0.2, norm=norm, num_classes=3)
    out = eng.train_step(x0, y)
    ref = engine(twin, table, FWD, lr=0.4, momentum=0.2, norm=norm, num_classes=3)
    ref.plan = ref.recording_plan
    expected = ref.train_step(x0, y)
    torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=1e-12)
    for a, b in zip(blocks.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
    for a, b in zip(blocks.buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # Each layer reports its energy at the last step that evaluated it: where the recording plan's last
    # step weighs a layer, both report that step's energy.
    last = table.inference[-1]
    for l in range(4):
        if last[l] != 0:
            torch.testing.assert_close(out.energy[l], expected.energy[l], rtol=0, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.1])
def test_multi_part_layers_skip_zeros_exactly(momentum):
    """A two-block ResNet with auxiliary neurons, pure spike and a random zero pattern, against SGD on
    DEEPER.md's hand-written energy of every layer at every step."""
    from tests.test_resnet import engine as resnet_engine

    for table in (Spiking(SpikingParams(base=0.0)).table(6, 9), zero_pattern_table(6, 9, 4)):
        blocks = resnet([1, 1])
        x0 = torch.randn(3, 3, 8, 8, dtype=torch.float64)
        y = torch.tensor([1, 3, 0])
        for update in (STD, FWD):
            trace = resnet_engine(blocks, table, lr=0.5, momentum=momentum, update=update).infer(x0, y)
            expected = HandResNet(blocks, lr=0.5).inference(x0, F.one_hot(y, 5).double(), table.inference,
                                                            momentum=momentum)
            _assert_states_equal(trace.states[1:-1], expected, atol=1e-10)


def test_pure_spike_forward_update_calls_each_block_once_per_step():
    """The floor: one forward pass. Inference pulls each spike's error back through the initial pass's
    graph (the spike's input has not moved yet), and the forward update reuses that graph for the weights."""
    norm = FrozenBatchNorm(BatchNormParams())
    blocks = nn.ModuleList(MLP(MLPParams(hidden=[8, 7, 6, 5], activation="tanh")).build((4,), 3, norm)).double()
    eng = engine(blocks, Spiking(SpikingParams(base=0.0)).table(5, 7), FWD, lr=0.5, momentum=0.1, norm=norm,
                 num_classes=3)
    calls, hooks = count_calls(blocks)
    eng.train_step(torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert calls["n"] == 5
    assert all(p.evaluate == () for p in eng.plan)
    assert [p.reuse for p in eng.plan] == [(5,), (4,), (3,), (2,), (1,), (), ()]
    for h in hooks:
        h.remove()


def test_pure_spike_standard_update_calls_the_spike_block_once_per_step():
    """Standard PC keeps no initial graph: the spiking block is called at its step (except f_1, whose
    input x^0 never moves), then every block once more in the learning phase."""
    blocks = tanh_mlp([4, 6, 6, 6, 3])
    eng = engine(blocks, Spiking(SpikingParams(base=0.0)).table(4, 6), STD, lr=0.5, num_classes=3)
    calls, hooks = count_calls(blocks)
    eng.train_step(torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))
    assert calls["n"] == 4 + 3 + 4  # initial pass, steps t = 0..2 (t = 3 reuses f_1), learning
    for h in hooks:
        h.remove()


def test_dense_forward_update_reuses_the_wavefront_block():
    """Without zeros, block L - t still takes the initial graph at step t (its input has not moved): steps
    t < L evaluate only the layers above the wavefront's edge, later steps every layer but the first."""
    blocks = tanh_mlp([4, 6, 6, 6, 3])
    eng = engine(blocks, Spiking(SpikingParams()).table(4, 6), FWD, lr=0.5, num_classes=3)
    calls, hooks = count_calls(blocks)
    eng.train_step(torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))
    # initial 4; t = 0..5 evaluate {}, {4}, {3, 4}, {2, 3, 4}, {2, 3, 4}, {2, 3, 4}; learning reuses the graph
    assert calls["n"] == 4 + 0 + 1 + 2 + 3 + 3 + 3
    for h in hooks:
        h.remove()


def test_skip_below_treats_small_weights_as_zero():
    """Spiking base 1e-3 with skip_below 1e-2 runs exactly the pure spike; skip_below 1e-4 keeps it dense."""
    blocks = tanh_mlp([5, 6, 6, 4])
    x0, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 3, 1, 2])
    states = {}
    for key, base, skip in (("pure", 0.0, 0.0), ("skipped", 1e-3, 1e-2), ("dense", 1e-3, 1e-4)):
        eng = engine(blocks, Spiking(SpikingParams(base=base)).table(3, 5), FWD, lr=0.4, momentum=0.1,
                     num_classes=4, skip_below=skip)
        states[key] = eng.infer(x0, y).states
    for a, b in zip(states["pure"][1:3], states["skipped"][1:3], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(states["pure"][1], states["dense"][1])


def test_skip_below_must_not_be_negative():
    with pytest.raises(ValueError, match="skip_below must be zero or positive, got -1.0"):
        engine(tanh_mlp([3, 3, 2]), Spiking(SpikingParams()).table(2, 2), FWD, num_classes=2, skip_below=-1.0)


def test_spiking_accepts_a_zero_base():
    table = Spiking(SpikingParams(base=0.0)).table(3, 4)
    assert table.inference.tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]]


def test_a_pure_spike_step_points_along_the_backprop_gradient():
    """With nothing but the spike, S+F on a tanh MLP gives each layer's update the direction of the
    backprop gradient (cosine 1 to 1e-9, no momentum, se output): each spike leaves (1 - lr_x) of the
    backprop error in its layer and hands lr_x of it down. (At lr_x = 1 it would hand all of it on.)"""
    from pccore.inspect.diagnose import diagnose_batch

    blocks = tanh_mlp([6, 8, 8, 8, 3])
    eng = engine(blocks, Spiking(SpikingParams(base=0.0)).table(4, 4), FWD, lr=0.5, num_classes=3)
    report = diagnose_batch(eng, torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,)))
    assert report["cosine_to_bp"] == pytest.approx([1.0] * 4, abs=1e-9)


def test_recipes_and_the_api_carry_skip_below_to_the_engine(tmp_path):
    """inference.skip_below reaches the engine from a recipe and from make_engine, and is checked."""
    import pccore
    from pccore.cli import main
    from pccore.core.registry import get_registry
    from pccore.recipe import load_recipe
    from pccore.run.assemble import assemble

    recipe_path = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml"
    registry = get_registry()
    recipe = load_recipe(recipe_path, ["inference.skip_below=0.01"], registry)
    spec = registry.build("dataset", recipe.data.name, recipe.data.params).spec()
    engine_ = assemble(recipe, spec, torch.device("cpu"), registry).engine
    assert engine_.skip_below == 0.01
    assert [p.active for p in engine_.plan] == [(5,), (4,), (3,), (2,), (1,)]
    made = pccore.make_engine(tanh_mlp([4, 5, 3]), num_classes=3, precision="spiking", update="forward",
                              steps=2, skip_below=0.01)
    assert [p.active for p in made.plan] == [(2,), (1,)]
    assert main(["recipe", "check", str(recipe_path), "--set", "inference.skip_below=-1"]) == 2
