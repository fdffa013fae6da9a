"""muPC's residual MLP (DEEPER.md, section B, checked against jpc's `_get_param_scalings` and `make_mlp`).

The forward pass is compared with the formulas written out by hand on the blocks' weights; the scale of
the hidden states and of the output at initialisation with the values derived in
`test_scale_at_initialisation_*`; parameter counts with hand counts; and a depth-8 muPC network must
learn the digits within seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pccore.cli import main
from pccore.core.components import NoParams
from pccore_plugins.normalization import BatchNormParams, FrozenBatchNorm, NoNormalization
from pccore_plugins.resmlp import ResMLP, ResMLPParams

NONE = NoNormalization(NoParams())
RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def build(depth, width, *, parameterization="mupc", activation="relu", shape=(1, 2, 3), classes=4, norm=NONE):
    params = ResMLPParams(depth=depth, width=width, activation=activation, parameterization=parameterization)
    return nn.ModuleList(ResMLP(params).build(shape, classes, norm))


def weights(blocks):
    return [block.map.linear.weight.detach() for block in blocks]


PHI = {"relu": torch.relu, "tanh": torch.tanh}


# --- the forward pass -----------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mupc_forward_pass_is_the_formulas_of_deeper_md(activation):
    # H = 3 hidden layers of N = 5 units, D = 6 inputs, 4 classes; L = H + 1 = 4 weight matrices.
    torch.manual_seed(0)
    blocks = build(3, 5, activation=activation).double()
    W1, W2, W3, W4 = weights(blocks)
    phi = PHI[activation]
    x = torch.randn(7, 1, 2, 3, dtype=torch.float64)
    flat = x.reshape(7, 6)
    z1 = flat @ W1.T / math.sqrt(6)
    z2 = z1 + phi(z1) @ W2.T / math.sqrt(5 * 4)
    z3 = z2 + phi(z2) @ W3.T / math.sqrt(5 * 4)
    y = phi(z3) @ W4.T / 5
    assert len(blocks) == 4
    for block, inp, expected in zip(blocks, [x, z1, z2, z3], [z1, z2, z3, y], strict=True):
        torch.testing.assert_close(block(inp), expected, rtol=0, atol=1e-12)


def test_standard_forward_pass_has_no_scalings():
    torch.manual_seed(1)
    blocks = build(2, 5, parameterization="standard").double()
    W1, W2, W3 = weights(blocks)
    x = torch.randn(7, 1, 2, 3, dtype=torch.float64)
    z1 = x.reshape(7, 6) @ W1.T
    z2 = z1 + torch.relu(z1) @ W2.T
    y = torch.relu(z2) @ W3.T
    h = x
    for block in blocks:
        h = block(h)
    torch.testing.assert_close(h, y, rtol=0, atol=1e-12)


def test_a_normalisation_layer_standardises_each_hidden_state_before_the_activation():
    torch.manual_seed(2)
    blocks = build(2, 5, norm=FrozenBatchNorm(BatchNormParams())).double().train()
    W1, W2, W3 = weights(blocks)
    x = torch.randn(9, 1, 2, 3, dtype=torch.float64)

    def standardised(z):  # BatchNorm in training mode at initialisation: batch statistics, weight 1, bias 0
        return (z - z.mean(0)) / torch.sqrt(z.var(0, correction=0) + 1e-5)

    z1 = x.reshape(9, 6) @ W1.T / math.sqrt(6)
    z2 = z1 + torch.relu(standardised(z1)) @ W2.T / math.sqrt(5 * 3)
    y = torch.relu(standardised(z2)) @ W3.T / 5
    assert not any(isinstance(m, nn.BatchNorm1d) for m in blocks[0].modules())  # the input is not normalised
    torch.testing.assert_close(blocks[1](z1), z2, rtol=0, atol=1e-12)
    torch.testing.assert_close(blocks[2](z2), y, rtol=0, atol=1e-12)


def test_mupc_weights_are_standard_normal_and_standard_weights_are_pytorchs_default():
    torch.manual_seed(3)
    mupc = weights(build(2, 512, shape=(1, 16, 32), classes=512))  # 262144 entries each
    for w in mupc:
        assert abs(w.mean().item()) < 0.01
        assert w.std().item() == pytest.approx(1.0, abs=0.01)
    torch.manual_seed(3)
    standard = weights(build(2, 512, shape=(1, 16, 32), classes=512, parameterization="standard"))
    for w in standard:
        bound = 1 / math.sqrt(w.shape[1])  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert w.abs().max().item() <= bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)


# --- parameter counts -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth,width,shape,classes", [(1, 7, (1, 8, 8), 10), (8, 16, (3, 4, 4), 10),
                                                       (5, 3, (2, 3, 3), 6)])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_parameter_counts_match_hand_counts(depth, width, shape, classes, batchnorm):
    D = math.prod(shape)
    # W_1 (D x N), H - 1 hidden W_l (N x N), W_L (N x C), no biases; with a norm layer, its weight and bias
    # (2 N) before the activation of each of the H blocks that read a hidden state.
    expected = D * width + (depth - 1) * width**2 + width * classes + (2 * width * depth if batchnorm else 0)
    norm = FrozenBatchNorm(BatchNormParams()) if batchnorm else NONE
    for parameterization in ("mupc", "standard"):
        blocks = build(depth, width, shape=shape, classes=classes, norm=norm, parameterization=parameterization)
        assert len(blocks) == depth + 1
        assert sum(p.numel() for p in blocks.parameters()) == expected
        assert not [n for n, _ in blocks.named_parameters() if n.endswith("map.linear.bias")]


def test_two_counts_written_out_in_full():
    # muPC on 8x8 digits, H = 32, N = 128: 64*128 + 31*128*128 + 128*10 = 8192 + 507904 + 1280
    assert sum(p.numel() for p in build(32, 128, shape=(1, 8, 8), classes=10).parameters()) == 517_376
    # H = 128: 8192 + 127*16384 + 1280
    assert sum(p.numel() for p in build(128, 128, shape=(1, 8, 8), classes=10).parameters()) == 2_090_240


# --- the scale at initialisation ------------------------------------------------------------------

DEPTHS = (8, 32, 128)
WIDTHS = (64, 256)
SEEDS = range(4)
D = 64


def _second_moments(parameterization: str, depth: int, width: int) -> tuple[float, float]:
    """Mean over units, inputs and seeds of z_H^2 and y_hat^2, for x ~ N(0, I_D)."""
    hidden = output = 0.0
    for seed in SEEDS:
        torch.manual_seed(seed)
        blocks = build(depth, width, parameterization=parameterization, shape=(1, 8, 8), classes=10)
        x = torch.randn(128, 1, 8, 8)
        with torch.no_grad():
            z = x
            for block in blocks[:-1]:
                z = block(z)
            y = blocks[-1](z)
        hidden += z.square().mean().item() / len(SEEDS)
        output += y.square().mean().item() / len(SEEDS)
    return hidden, output


@pytest.fixture(scope="module")
def moments():
    return {(p, h, n): _second_moments(p, h, n) for p in ("mupc", "standard") for h in DEPTHS for n in WIDTHS}


def test_scale_at_initialisation_mupc(moments):
    """muPC, ReLU, x ~ N(0, I_D). Write q_l = E[z_l^2] per unit.

    z_1 = W_1 x / sqrt(D) with W_1 ~ N(0, 1): q_1 = E||x||^2 / D = 1.
    z_l = z_{l-1} + W_l phi(z_{l-1}) / sqrt(N L): the branch is independent of z_{l-1} given it, mean 0, of
    variance N E[phi(z)^2] / (N L), and E[relu(u)^2] = E[u^2] / 2 for u symmetric about 0 (z is, up to
    O(1/N)), so q_l = q_{l-1} (1 + 1/(2L)) and q_H = (1 + 1/(2L))^(H-1), L = H + 1: 1.46 (H = 8), 1.59
    (H = 32), 1.63 (H = 128), below e^(1/2) = 1.65 at any depth and the same at any width. The hidden
    pre-activations stay O(1).
    y_hat = W_L phi(z_H) / N: E[y_hat^2] = N (q_H / 2) / N^2 = q_H / (2 N). The output at initialisation is
    O(1/sqrt(N)), not O(1): it shrinks with width (muP's 1/N output layer makes it vanish at infinite width;
    its updates, not its initial value, are O(1)), and it does not grow with depth.
    Measured: the mean over 128 inputs, all units and 4 seeds; hidden within 8 %, output within 25 % (only
    10 output units: the rank-one mean of relu(z) makes its sample variance noisy).
    """
    for depth in DEPTHS:
        predicted = (1 + 1 / (2 * (depth + 1))) ** (depth - 1)
        for width in WIDTHS:
            hidden, output = moments[("mupc", depth, width)]
            assert hidden == pytest.approx(predicted, rel=0.08), (depth, width)
            assert output == pytest.approx(predicted / (2 * width), rel=0.25), (depth, width)
            assert hidden < math.exp(0.5) * 1.08
    for width in WIDTHS:  # bounded in depth: 16x deeper changes the hidden scale by a few percent
        assert moments[("mupc", 128, width)][0] / moments[("mupc", 8, width)][0] < 1.25
    for depth in DEPTHS:  # the output's std halves when the width quadruples
        ratio = math.sqrt(moments[("mupc", depth, 64)][1] / moments[("mupc", depth, 256)][1])
        assert ratio == pytest.approx(2.0, rel=0.25)


def test_scale_at_initialisation_standard_grows_with_depth(moments):
    """Standard parameterisation, ReLU: W ~ U(+-1/sqrt(fan_in)) has variance 1 / (3 fan_in), no scalings.

    q_1 = E||x||^2 / (3 D) = 1/3; each block adds N (q / 2) / (3 N) = q / 6, so q_l = q_{l-1} * 7/6 and
    q_H = (7/6)^(H-1) / 3: 0.98 (H = 8), 40 (H = 32), 1.1e8 (H = 128), whatever the width. Measured: the
    growth per layer, (q_H / q_1)^(1/(H-1)), within 1 % of 7/6 (the exponent makes per-layer
    fluctuations add up, so the per-layer factor is what is stable), and the hidden std at depth 128 is
    above 1000 times that at depth 8. The output follows: E[y_hat^2] = q_H / 6.
    """
    for width in WIDTHS:
        for depth in (32, 128):
            hidden, output = moments[("standard", depth, width)]
            assert (3 * hidden) ** (1 / (depth - 1)) == pytest.approx(7 / 6, rel=0.01), (depth, width)
            assert output == pytest.approx(hidden / 6, rel=0.5), (depth, width)
        grown = math.sqrt(moments[("standard", 128, width)][0] / moments[("standard", 8, width)][0])
        assert grown > 1000


# --- parameters and errors ------------------------------------------------------------------------


@pytest.mark.parametrize("setting,message", [
    ("model.depth=0", "model.depth: depth is the number of hidden layers H and must be an integer of at "
                      "least 1 (got 0)"),
    ("model.width=-3", "model.width: width is the number of units N of every hidden layer and must be an "
                       "integer of at least 1 (got -3)"),
    ("model.width=64.5", "model.width: expected an integer, got 64.5"),
    ("model.depth=true", "model.depth: expected an integer, got true"),
    ('model.parameterization="mup"', 'model.parameterization: expected one of "mupc", "standard", got "mup"'),
    ('model.activation="swish"', "model.activation: expected one of"),
])
def test_each_bad_parameter_gets_a_clear_message(setting, message, capsys):
    assert main(["recipe", "check", str(RECIPES / "mupc_digits_d32.toml"), "--set", setting]) == 2
    assert message in capsys.readouterr().err


def test_the_parameter_class_rejects_bad_values_in_python():
    with pytest.raises(ValueError, match="depth is the number of hidden layers H"):
        ResMLPParams(depth=0)
    with pytest.raises(ValueError, match="width is the number of units N"):
        ResMLPParams(width=0)


# --- learning -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_depth_8_mupc_network_learns_the_digits_quickly(tmp_path):
    out = tmp_path / "run"
    overrides = ["model.depth=8", "inference.steps=8", "model.width=64", "train.epochs=2", "train.patience=2",
                 "optimizer.schedule_epochs=2", "log.tensorboard=false", "log.checkpoints=false"]
    args = ["run", str(RECIPES / "mupc_digits_d32.toml"), "--device", "cpu", "--out", str(out)]
    for setting in overrides:
        args += ["--set", setting]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"][0]["epochs"] == 2
    assert summary["top1_mean"] >= 0.8  # chance is 0.1
