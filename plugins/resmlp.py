"""A residual MLP in muPC's or the standard parameterisation (DEEPER.md, section B; jpc's `make_mlp`,
`make_skip_model` and `_get_param_scalings`).

`depth` = H hidden layers of `width` = N units, L = H + 1 blocks, no biases, D = the flattened input size:

    block 1:           z_1 = a_1 W_1 x                                 (no activation on the input)
    blocks 2..H:       z_l = z_{l-1} + a_h W_l phi(z_{l-1})             (identity skip inside the block)
    block H + 1:       y_hat = a_L W_L phi(z_H)

"mupc": every W ~ N(0, 1), a_1 = 1/sqrt(D), a_h = 1/sqrt(N L), a_L = 1/N (jpc: L = len(model), the number
of weight matrices). "standard": PyTorch's default nn.Linear initialisation (U(-1/sqrt(fan_in),
1/sqrt(fan_in)), as equinox's default in jpc's "sp") and every a = 1. The scalings multiply the layer's
output, not its weights, so the weight optimizer updates the N(0, 1) weights themselves (as in jpc).

A normalisation policy's layer, when it supplies one, standardises the input of every block that reads a
hidden state, before the activation (pre-activation, as in He et al.'s v2 ResNets):
z_l = z_{l-1} + a_h W_l phi(norm(z_{l-1})) and y_hat = a_L W_L phi(norm(z_H)). There it keeps muPC's
scalings meaningful: phi's input has unit variance whatever the residual stream's scale, so each branch
still adds variance O(1/L). (A norm after W_l, as in the ResNets, would rescale each branch to unit
variance and undo a_h.) Its affine shift is a bias, which muPC itself has none of.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
from torch import nn

from pccore.plugin import NormalizationPolicy
from pccore_plugins.activations import ACTIVATIONS, ActivationName

Parameterization = Literal["mupc", "standard"]


def _at_least_one(what: str):
    def check(_instance, attribute, value: int) -> None:
        if isinstance(value, bool) or value < 1:
            raise ValueError(f"{attribute.name} is {what} and must be an integer of at least 1")

    return check


@attrs.define(frozen=True)
class ResMLPParams:
    depth: int = attrs.field(default=8, validator=_at_least_one("the number of hidden layers H"))
    width: int = attrs.field(default=128, validator=_at_least_one("the number of units N of every hidden layer"))
    activation: ActivationName = "relu"
    parameterization: Parameterization = "mupc"


def scalings(parameterization: Parameterization, inputs: int, width: int, depth: int) -> tuple[float, float, float]:
    """(a_1, a_h, a_L): the input, hidden and output multipliers (all 1 for "standard")."""
    if parameterization == "standard":
        return 1.0, 1.0, 1.0
    layers = depth + 1
    return 1.0 / math.sqrt(inputs), 1.0 / math.sqrt(width * layers), 1.0 / width


class _ScaledLinear(nn.Module):
    """`scale * W h` without a bias; W ~ N(0, 1) for muPC, PyTorch's default otherwise."""

    def __init__(self, inputs: int, outputs: int, scale: float, gaussian: bool):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs, bias=False)
        if gaussian:
            nn.init.normal_(self.linear.weight, 0.0, 1.0)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.linear(h)
        return out if self.scale == 1.0 else out * self.scale


class InputLayer(nn.Module):
    """Block 1: z_1 = a_1 W_1 x of the flattened input."""

    def __init__(self, inputs: int, width: int, scale: float, gaussian: bool):
        super().__init__()
        self.map = _ScaledLinear(inputs, width, scale, gaussian)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map(x.flatten(1))


class ResidualLayer(nn.Module):
    """Blocks 2..H: z + a_h W phi(norm(z))."""

    def __init__(self, width: int, scale: float, gaussian: bool, act: type[nn.Module], norm: nn.Module | None):
        super().__init__()
        self.norm = norm or nn.Identity()
        self.act = act()
        self.map = _ScaledLinear(width, width, scale, gaussian)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.map(self.act(self.norm(z)))


class Readout(nn.Module):
    """Block H + 1: y_hat = a_L W_L phi(norm(z_H))."""

    def __init__(self, width: int, classes: int, scale: float, gaussian: bool, act: type[nn.Module],
                 norm: nn.Module | None):
        super().__init__()
        self.norm = norm or nn.Identity()
        self.act = act()
        self.map = _ScaledLinear(width, classes, scale, gaussian)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.map(self.act(self.norm(z)))


class ResMLP:
    """The residual MLP of `depth` hidden layers, one block per layer (see the module docstring)."""

    def __init__(self, params: ResMLPParams):
        self.params = params

    def build(self, input_shape: tuple[int, ...], num_classes: int, norm: NormalizationPolicy) -> list[nn.Module]:
        p = self.params
        inputs = math.prod(input_shape)
        first, hidden, last = scalings(p.parameterization, inputs, p.width, p.depth)
        gaussian = p.parameterization == "mupc"
        act = ACTIVATIONS[p.activation]
        blocks: list[nn.Module] = [InputLayer(inputs, p.width, first, gaussian)]
        blocks += [ResidualLayer(p.width, hidden, gaussian, act, norm.layer(p.width, 0)) for _ in range(p.depth - 1)]
        blocks.append(Readout(p.width, num_classes, last, gaussian, act, norm.layer(p.width, 0)))
        return blocks
