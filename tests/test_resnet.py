"""ResNets with auxiliary skip neurons (DEEPER.md, section A) on the multi-part engine.

The references here are written from DEEPER.md's formulas with functional convolutions on the models'
weights, independently of the blocks' own forward code: the energy of every layer and part, the
inference by torch.optim.SGD over every state at every step (no wavefront), and the weight energies of
the update rules.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pccore.core.components import InferenceSettings, NoParams, PrecisionTable
from pccore.core.engine import PCEngine
from pccore_plugins.normalization import BatchNormParams, FrozenBatchNorm, NoNormalization
from pccore_plugins.nudging import Clamp
from pccore_plugins.resnet import (
    AuxFirstLayer,
    AuxSecondLayer,
    Head,
    NamedResNetParams,
    ResidualBlock,
    ResNet,
    ResNetParams,
    Stem,
)
from pccore_plugins.update import ForwardUpdate, StandardUpdate
from tests.engine_helpers import unmasked_inference

NONE = NoNormalization(NoParams())


def resnet(stages, *, width=0.0625, aux=True, norm=NONE, shape=(3, 8, 8), classes=5, activation="tanh"):
    params = ResNetParams(blocks=list(stages), width=width, aux=aux, activation=activation)
    return nn.ModuleList(ResNet(stages, params).build(shape, classes, norm)).double()


def engine(blocks, table, *, lr=0.4, momentum=0.0, update=None, norm=NONE, classes=5):
    return PCEngine(blocks, table, update or StandardUpdate(NoParams()), norm, Clamp(NoParams()),
                    steps=table.steps, lr=lr, momentum=momentum, nesterov=True, num_classes=classes)


def random_table(layers, steps, generator):
    inference = 0.2 + torch.rand(steps, layers, generator=generator, dtype=torch.float64)
    learning = 0.5 + torch.rand(layers, generator=generator, dtype=torch.float64)
    return PrecisionTable(inference, learning)


def pure_spike(layers, steps):
    """1 on layer L - t at step t, exactly 0 elsewhere."""
    inference = torch.zeros(steps, layers, dtype=torch.float64)
    for t in range(min(steps, layers)):
        inference[t, layers - 1 - t] = 1.0
    return PrecisionTable(inference, torch.ones(layers, dtype=torch.float64))


# --- the hand-written model of DEEPER.md ---------------------------------------------------------


class HandResNet:
    """DEEPER.md's network and energy, written with functional ops on the weights of `blocks` (an
    aux = true ResNet without normalisation, tanh activation)."""

    def __init__(self, blocks: nn.ModuleList, lr: float):
        self.stem = blocks[0].conv.weight
        self.pairs = []  # (conv1 weight, stride, P weight or None, conv2 weight) per basic block
        for first, second in zip(blocks[1:-1:2], blocks[2:-1:2], strict=True):
            project = None if first.project is None else first.project.weight
            self.pairs.append((first.conv.weight, first.conv.stride[0], project, second.conv.weight))
        self.fc_w, self.fc_b = blocks[-1].fc.weight, blocks[-1].fc.bias
        self.lr = lr
        self.N = 2 + 2 * len(self.pairs)

    def predict(self, l, states):
        """mu^l from the states below it (x^0 = states[0]; multi-part states are (main, aux) pairs)."""
        if l == 1:
            return F.conv2d(states[0], self.stem, padding=1)
        if l == self.N:
            main, aux = states[l - 1]
            return torch.tanh(main + aux).mean(dim=(2, 3)) @ self.fc_w.T + self.fc_b
        block, second = divmod(l - 2, 2)
        w1, stride, p, w2 = self.pairs[block]
        if not second:
            below = states[l - 1]
            s = below if block == 0 else below[0] + below[1]
            return (F.conv2d(torch.tanh(s), w1, stride=stride, padding=1),
                    s if p is None else F.conv2d(s, p, stride=stride))
        main_a, aux_a = states[l - 1]
        return F.conv2d(torch.tanh(main_a), w2, padding=1), aux_a

    def predictions(self, states):
        """mu^1..mu^N from the states x^0..x^{N-1}."""
        return [self.predict(l, states) for l in range(1, self.N + 1)]

    def layer_energies(self, states, mus):
        """e_l = 1/2 ||x^m - mu^m||^2 + lambda 1/2 ||x^a - mu^a||^2 with lambda = 1/lr for an
        identity-predicted aux part and 1 for one predicted through P; 1/2 ||x - mu||^2 otherwise."""
        out = []
        for l, (x, mu) in enumerate(zip(states[1:], mus, strict=True), start=1):
            if isinstance(x, tuple):
                block, second = divmod(l - 2, 2)
                lam = 1.0 / self.lr if (second or self.pairs[block][2] is None) else 1.0
                out.append(0.5 * ((x[0] - mu[0]) ** 2).sum() + lam * 0.5 * ((x[1] - mu[1]) ** 2).sum())
            else:
                out.append(0.5 * ((x - mu) ** 2).sum())
        return out

    def forward_states(self, x0):
        """x^1..x^{N-1} at their forward values, built layer by layer."""
        states = [x0]
        for l in range(1, self.N):
            states.append(self.predict(l, states))
        return states[1:]

    def inference(self, x0, target, pi, *, momentum):
        """Every layer's energy at every step, torch.optim.SGD over every latent tensor."""
        with torch.no_grad():
            latent = self.forward_states(x0)
        latent = [tuple(p.clone().requires_grad_(True) for p in x) if isinstance(x, tuple)
                  else x.clone().requires_grad_(True) for x in latent]
        flat = [p for x in latent for p in (x if isinstance(x, tuple) else (x,))]
        opt = torch.optim.SGD(flat, lr=self.lr, momentum=momentum, nesterov=momentum > 0)
        for t in range(pi.shape[0]):
            states = [x0, *latent, target]
            energies = self.layer_energies(states, self.predictions(states))
            total = sum(pi[t, l] * e for l, e in enumerate(energies))
            opt.zero_grad()
            total.backward()
            opt.step()
        return [tuple(p.detach() for p in x) if isinstance(x, tuple) else x.detach() for x in latent]


def _assert_states_equal(got, expected, atol):
    for a, b in zip(got, expected, strict=True):
        for pa, pb in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
            torch.testing.assert_close(pa, pb, rtol=0, atol=atol)


# --- structure -----------------------------------------------------------------------------------


def test_resnet18_parameter_counts_at_width_one_match_hand_counts():
    """CIFAR shape (3x32x32, 10 classes). Stem 3*64*9 = 1,728. Stage 1: two blocks of 2 x 64*64*9 convs
    = 147,456. Stage 2: 64*128*9 + 128*128*9 + P 64*128 = 229,376, then 2 x 128*128*9 = 294,912. Stage 3:
    917,504 + 1,179,648. Stage 4: 3,670,016 + 4,718,592. Head 512*10 + 10 = 5,130. Total 11,164,362 without
    normalisation; BatchNorm adds 2 * channels after each of the 16 block convs: 2*(4*64 + 4*128 + 4*256 +
    4*512) = 7,680, total 11,172,042. The aux = false ResNet has exactly the same weights."""
    frozen = FrozenBatchNorm(BatchNormParams())
    for aux in (True, False):
        plain = ResNet([2, 2, 2, 2], NamedResNetParams(aux=aux)).build((3, 32, 32), 10, NONE)
        normed = ResNet([2, 2, 2, 2], NamedResNetParams(aux=aux)).build((3, 32, 32), 10, frozen)
        assert sum(p.numel() for b in plain for p in b.parameters()) == 11_164_362
        assert sum(p.numel() for b in normed for p in b.parameters()) == 11_172_042
        assert len(plain) == (18 if aux else 10)


def test_resnet10_layers_and_tinyimagenet_head():
    """ResNet10 = one block per stage: N = 1 + 2*4 + 1 = 10 layers with aux, 1 + 4 + 1 = 6 without;
    64x64 inputs end in an 8x8 map that the head pools to 512 features for 200 classes."""
    blocks = ResNet([1, 1, 1, 1], NamedResNetParams()).build((3, 64, 64), 200, NONE)
    assert [type(b) for b in blocks] == [Stem] + [AuxFirstLayer, AuxSecondLayer] * 4 + [Head]
    assert blocks[-1].fc.weight.shape == (200, 512)
    with torch.no_grad():
        out = nn.Sequential(*blocks)(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 200)
    assert len(ResNet([1, 1, 1, 1], NamedResNetParams(aux=False)).build((3, 64, 64), 200, NONE)) == 6


def test_part_weights_follow_the_state_learning_rate():
    blocks = resnet([1, 2])  # stage 2's first block projects (stride 2, more channels), its second does not
    settings = InferenceSettings(lr=0.8, momentum=0.0, steps=3)
    weights = [b.part_weights(settings) if hasattr(b, "part_weights") else None for b in blocks]
    assert weights == [None, (1.0, 1.25), (1.0, 1.25), (1.0, 1.0), (1.0, 1.25), (1.0, 1.25), (1.0, 1.25), None]


def test_the_aux_and_plain_resnets_compute_the_same_function_with_the_same_weights():
    """At initialisation x_B^m + x_B^a = norm(conv2(phi(norm(conv1(phi(s)))))) + P(s): the block output
    of the two-layer form equals the one-block form."""
    aux = resnet([1, 1], aux=True)
    plain = resnet([1, 1], aux=False)
    for block, (first, second) in zip(plain[1:-1], zip(aux[1:-1:2], aux[2:-1:2], strict=True), strict=True):
        block.conv1.weight.data.copy_(first.conv.weight)
        block.conv2.weight.data.copy_(second.conv.weight)
        if block.project is not None:
            block.project.weight.data.copy_(first.project.weight)
    plain[0].load_state_dict(aux[0].state_dict())
    plain[-1].load_state_dict(aux[-1].state_dict())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        h_aux, h_plain = x, x
        for b in aux:
            h_aux = b(h_aux)
        for b in plain:
            h_plain = b(h_plain)
    torch.testing.assert_close(h_aux, h_plain, rtol=0, atol=1e-12)


def test_residual_block_without_aux_is_one_block_with_the_skip_inside():
    block = ResidualBlock(4, 4, 1, nn.Tanh, NONE).double()
    s = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    expected = F.conv2d(torch.tanh(F.conv2d(torch.tanh(s), block.conv1.weight, padding=1)),
                        block.conv2.weight, padding=1) + s
    torch.testing.assert_close(block(s), expected, rtol=0, atol=1e-12)


# --- inference against DEEPER.md's energy ----------------------------------------------------------


@pytest.mark.parametrize("steps,momentum", [(1, 0.0), (3, 0.0), (8, 0.3)])
def test_inference_equals_sgd_on_the_hand_written_energy_at_every_step(steps, momentum):
    """Two basic blocks (the second projects), N = 6 layers, random precision table: the engine (wavefront,
    one autograd call per step, flat multi-part states) against torch.optim.SGD on DEEPER.md's energy of
    every layer at every step. T = 8 > N covers every layer, every part and the momentum buffers."""
    g = torch.Generator().manual_seed(3)
    blocks = resnet([1, 1])
    table = random_table(6, steps, g)
    eng = engine(blocks, table, lr=0.4, momentum=momentum)
    x0 = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=g)
    y = torch.tensor([0, 4, 2, 1])
    trace = eng.infer(x0, y)
    hand = HandResNet(blocks, lr=0.4)
    expected = hand.inference(x0, F.one_hot(y, 5).double(), table.inference, momentum=momentum)
    _assert_states_equal(trace.states[1:-1], expected, atol=1e-10)
    moved = [not torch.equal(a, b) for a, b in zip(trace.states[-2], trace.initial[-2], strict=True)]
    assert moved == [True, True]  # both parts of the last hidden layer took part


def test_energy_of_a_multi_part_layer_weights_the_aux_part():
    blocks = resnet([1])
    eng = engine(blocks, random_table(4, 2, torch.Generator().manual_seed(0)), lr=0.25)
    x = (torch.ones(1, 2, 2, 2, dtype=torch.float64), torch.full((1, 2, 2, 2), 3.0, dtype=torch.float64))
    mu = (torch.zeros_like(x[0]), torch.ones_like(x[1]))
    # layer 2 is A with an identity aux part: 1/2 * 8 * 1 + 4 * 1/2 * 8 * 4 = 4 + 64
    assert float(eng.layer_energy(2, x, mu)) == pytest.approx(68.0, abs=1e-12)


@pytest.mark.parametrize("rule", ["standard", "forward"])
def test_update_rule_gradients_equal_autograd_of_the_hand_written_weight_energy(rule):
    """sum_l pi_l e_l / B with e_l the multi-part energy, against the states after inference (standard)
    or the initial forward predictions (forward)."""
    g = torch.Generator().manual_seed(5)
    blocks = resnet([1, 1])
    reference = copy.deepcopy(blocks)
    update = StandardUpdate(NoParams()) if rule == "standard" else ForwardUpdate(NoParams())
    table = random_table(6, 7, g)
    eng = engine(blocks, table, lr=0.5, momentum=0.2, update=update)
    x0 = torch.randn(5, 3, 8, 8, dtype=torch.float64, generator=g)
    y = torch.randint(0, 5, (5,), generator=g)
    trace = eng.infer(x0, y)
    eng.learning_loss(trace).backward()

    hand = HandResNet(reference, lr=0.5)
    final = [trace.states[0], *[tuple(p.detach() for p in s) if isinstance(s, tuple) else s.detach()
                                for s in trace.states[1:]]]
    if rule == "standard":
        mus = hand.predictions(final)
    else:
        with torch.no_grad():
            forward = [x0, *hand.forward_states(x0)]
        mus = [hand.predict(l, forward) for l in range(1, 7)]
    energies = hand.layer_energies(final, mus)
    (sum(table.learning[l] * e for l, e in enumerate(energies)) / 5).backward()
    for a, b in zip(blocks.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


# --- the relay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_b", [3, 5, 7])
def test_one_sgd_step_at_the_spike_hands_the_aux_displacement_to_the_part_below(layer_b):
    """DEEPER.md: with lambda = 1/lr_x and plain SGD, at the step where layer B carries the spike, the
    displacement delta = x_B^a - x_A^a is handed to the part below exactly (x_A^a moves by delta) and x_B^a
    returns to its old prediction. ResNet10 (N = 10), pure spike, no momentum; layer 3 ends the first
    block (identity skip), layer 5 a projected block (its A aux is P(s), its B aux the identity)."""
    blocks = resnet([1, 1, 1, 1], width=0.125)
    lr = 0.8
    t = 10 - layer_b
    x0 = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 0, 3])
    before = engine(blocks, pure_spike(10, t), lr=lr).infer(x0, y).states
    after = engine(blocks, pure_spike(10, t + 1), lr=lr).infer(x0, y).states
    delta = (before[layer_b][1] - before[layer_b - 1][1]).detach()
    assert float(delta.abs().max()) > 1e-3  # the error reached the aux part from the layer above
    torch.testing.assert_close(after[layer_b - 1][1], before[layer_b - 1][1] + delta, rtol=0, atol=1e-12)
    torch.testing.assert_close(after[layer_b][1], before[layer_b - 1][1], rtol=0, atol=1e-12)


def test_without_aux_neurons_the_output_error_reaches_every_block_input_at_once():
    """The paper's third finding, seen from the other side: in the chain the wavefront is one layer per
    step; with aux the skip's error travels with it. After the first inference step only the last hidden
    layer has moved, in both forms."""
    for aux in (True, False):
        blocks = resnet([1, 1], aux=aux)
        L = len(blocks)
        trace = engine(blocks, pure_spike(L, 1)).infer(torch.randn(2, 3, 8, 8, dtype=torch.float64),
                                                     torch.tensor([0, 1]))
        for l in range(1, L - 1):
            for a, b in zip(*(s if isinstance(s, tuple) else (s,) for s in (trace.states[l], trace.initial[l])),
                            strict=True):
                assert torch.equal(a, b.detach())
        last = trace.states[L - 1]
        assert not torch.equal(last[0] if aux else last, (trace.initial[L - 1][0] if aux else trace.initial[L - 1]))


def test_an_identity_block_in_a_chain_gets_the_same_states_as_the_unmasked_reference():
    """An identity block hands its seed straight back as its input's gradient; the engine's in-place
    updates must not write through that alias into the error of the layer above."""
    blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 5), nn.Tanh()), nn.Identity(), nn.Linear(5, 3)]).double()
    table = random_table(3, 4, torch.Generator().manual_seed(1))
    x0 = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    trace = engine(blocks, table, lr=0.3, momentum=0.4, classes=3).infer(x0, y)
    expected = unmasked_inference(blocks, x0, F.one_hot(y, 3).double(), table.inference, lr=0.3, momentum=0.4,
                                  nesterov=True)
    _assert_states_equal(trace.states[1:-1], expected, atol=1e-12)


# --- BatchNorm Freezing and the engine's checks ------------------------------------------------------


def test_batchnorm_freezing_updates_each_block_norm_once_per_batch():
    norm = FrozenBatchNorm(BatchNormParams())
    blocks = resnet([1, 1], norm=norm)
    eng = engine(blocks, pure_spike(6, 6), update=ForwardUpdate(NoParams()), norm=norm)
    eng.train_step(torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3]))
    counts = [int(m.num_batches_tracked) for m in blocks.modules() if isinstance(m, nn.BatchNorm2d)]
    assert counts == [1, 1, 1, 1]


def test_a_block_that_predicts_the_wrong_structure_is_named():
    blocks = resnet([1])

    class Broken(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)[0]

        def part_weights(self, inference):
            return 1.0, 1.0

    blocks[1] = Broken(blocks[1])
    eng = engine(blocks, pure_spike(4, 4))
    with pytest.raises(TypeError, match=r"block 2 returned Tensor, but its layer needs a tuple of 2 tensors"):
        eng.infer(torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.tensor([0]))


def test_the_output_block_must_predict_one_tensor():
    class TupleHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x), self.fc(x)

        def part_weights(self, inference):
            return 1.0, 1.0

    blocks = nn.ModuleList([nn.Linear(3, 3), TupleHead()]).double()
    with pytest.raises(ValueError, match="the last block must predict one tensor"):
        engine(blocks, pure_spike(2, 2), classes=2)


def test_diagnose_shows_the_wavefront_through_the_auxiliary_parts(capsys):
    """pccore diagnose on the ResNet18 quickstart: the auxiliary parts' energy appears at layer N - t at step
    t (1 <= t <= N - 2: the output and the stem have none) and is exactly zero below the wavefront; the layer totals are
    the sums of the parts."""
    import json
    from pathlib import Path

    from pccore.cli import main

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "quickstart_resnet.toml"
    assert main(["diagnose", str(recipe), "--smoke", "--json", "--set", "data.batch_size=4"]) == 0
    report = json.loads(capsys.readouterr().out)
    N, aux = report["layers"], report["energy_parts"][1]
    assert N == 18 and len(aux) == report["steps"] == 18
    for t in range(18):
        assert aux[t][0] is None and aux[t][N - 1] is None  # the stem and the output are single tensors
        for l in range(1, N - 1):
            if l + 1 < N - t:
                assert aux[t][l] == 0.0
        if 1 <= t <= N - 2:
            assert aux[t][N - 1 - t] > 0.0
        for l in range(N):
            parts = [p[t][l] for p in report["energy_parts"] if p[t][l] is not None]
            assert report["energy"][t][l] == pytest.approx(sum(parts), rel=1e-6, abs=1e-12)
