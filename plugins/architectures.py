"""Architectures: the VGG family of the paper (VGG5, VGG7, VGG10, VGG15) and of its published code
(VGG9, VGG11, VGG13, VGG19), a small MLP, ResNets (`pccore_plugins.resnet`) and muPC's residual MLP
(`pccore_plugins.resmlp`).

A VGG is a layout list turned into blocks by one function. Each layout entry is one block
`conv3x3 -> [norm] -> activation -> [maxpool 2x2/2]`: `(channels, pool, padding)`. The head is one
linear block (VGG15: a hidden linear block of 4096 units, then the logits).
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
from torch import nn

from pccore.plugin import Component, NormalizationPolicy, hookimpl
from pccore_plugins.activations import ACTIVATIONS, ActivationName
from pccore_plugins.resmlp import ResMLP, ResMLPParams
from pccore_plugins.resnet import NamedResNetParams, ResNet, ResNetParams

M, P0 = "M", "p0"
LAYOUTS: dict[str, tuple[list[tuple], int | None]] = {
    # (conv layout, hidden linear width or None)
    "vgg5": ([(128, M), (256, M), (512, M), (512, M)], None),
    "vgg7": ([(128, M), (128,), (256, M), (256, P0), (512, M), (512, P0)], None),
    "vgg10": ([(64,), (128,), (128, M), (128,), (256, M), (256,), (256, M), (256,), (512, M)], None),
    "vgg15": (
        [(64,), (64, M), (128,), (128, M), (256,), (256,), (256, M),
         (512,), (512,), (512, M), (512,), (512,), (512, M)],
        4096,
    ),
    # The published code's `VGG_types` (BEYOND.md C). Its "E" ends the conv list without a pool; VGG19 has
    # no trailing hidden width, so it is 16 conv blocks and one linear block: L = 17.
    "vgg9": ([(64, M), (128,), (128, M), (256,), (256, M), (512,), (512, M), (512,)], None),
    "vgg11": (
        [(64,), (128,), (128, M), (128,), (256, M), (256,), (256, M), (256,), (512, M), (512,)],
        None,
    ),
    "vgg13": (
        [(128,), (128,), (128, M), (128,), (256, M), (256,), (256, M), (256,), (512, M),
         (512,), (512, M), (512,)],
        None,
    ),
    "vgg19": (
        [(64,), (64, M), (128,), (128, M), (256,), (256,), (256,), (256, M),
         (512,), (512,), (512,), (512, M), (512,), (512,), (512,), (512, M)],
        None,
    ),
}


def _scaled(features: int, width: float) -> int:
    return max(1, round(features * width))


def _block(layers: list[nn.Module | None]) -> nn.Sequential:
    return nn.Sequential(*[m for m in layers if m is not None])


def _side_after(entry: tuple, side: int) -> int:
    """The height (or width) of a block's output map, given that of its input; below 1 when too small."""
    padding = 0 if P0 in entry else 1
    side = side + 2 * padding - 2
    return side // 2 if M in entry and side >= 1 else side


def smallest_side(layout: str) -> int:
    """The smallest image height (and width) the layout accepts: every block's map keeps at least 1 pixel."""
    convs, _ = LAYOUTS[layout]

    def fits(side: int) -> bool:
        for entry in convs:
            side = _side_after(entry, side)
            if side < 1:
                return False
        return True

    side = 1
    while not fits(side):
        side += 1
    return side


@attrs.define(frozen=True)
class VGGParams:
    activation: ActivationName = "gelu"
    width: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))


class VGG:
    """A VGG of the paper; the head's input size follows the input image size."""

    def __init__(self, layout: str, params: VGGParams):
        self.layout = layout
        self.params = params

    def build(self, input_shape: tuple[int, ...], num_classes: int, norm: NormalizationPolicy) -> list[nn.Module]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.layout} needs image inputs (C, H, W), got shape {tuple(input_shape)}")
        convs, hidden = LAYOUTS[self.layout]
        act = ACTIVATIONS[self.params.activation]
        channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for entry in convs:
            height, width = _side_after(entry, height), _side_after(entry, width)
            if height < 1 or width < 1:
                side = smallest_side(self.layout)
                raise ValueError(
                    f"{self.layout}: input {'x'.join(map(str, input_shape))} is too small for its layout; "
                    f"the smallest image it accepts is {side}x{side} (height and width at least {side})"
                )
            out = _scaled(entry[0], self.params.width)
            padding = 0 if P0 in entry else 1
            pool = nn.MaxPool2d(2, 2) if M in entry else None
            conv = nn.Conv2d(channels, out, 3, padding=padding)
            blocks.append(_block([conv, norm.layer(out, 2), act(), pool]))
            channels = out
        features = channels * height * width
        if hidden is not None:
            units = _scaled(hidden, self.params.width)
            blocks.append(_block([nn.Flatten(), nn.Linear(features, units), norm.layer(units, 0), act()]))
            blocks.append(nn.Linear(units, num_classes))
        else:
            blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes)))
        return blocks


@attrs.define(frozen=True)
class MLPParams:
    """`init`: "default" (PyTorch's) or "orthogonal" (every weight matrix orthogonal, gain 1, biases as
    PyTorch makes them: the ePC authors' deep MLPs)."""

    hidden: list[int] = attrs.field(factory=lambda: [128, 128])
    activation: ActivationName = "tanh"
    init: Literal["default", "orthogonal"] = "default"

    @hidden.validator
    def _positive(self, attribute, value):
        if any(h < 1 for h in value):
            raise ValueError("every hidden width must be at least 1")


class MLP:
    """Fully connected blocks `linear -> [norm] -> activation`, then a linear output block."""

    def __init__(self, params: MLPParams):
        self.params = params

    def build(self, input_shape: tuple[int, ...], num_classes: int, norm: NormalizationPolicy) -> list[nn.Module]:
        act = ACTIVATIONS[self.params.activation]
        features = math.prod(input_shape)
        blocks: list[nn.Module] = []
        for i, units in enumerate(self.params.hidden):
            flatten = nn.Flatten() if i == 0 else None
            blocks.append(_block([flatten, nn.Linear(features, units), norm.layer(units, 0), act()]))
            features = units
        first = [nn.Flatten()] if not blocks else []
        blocks.append(nn.Sequential(*first, nn.Linear(features, num_classes)))
        if self.params.init == "orthogonal":
            for block in blocks:
                for module in block.modules():
                    if isinstance(module, nn.Linear):
                        nn.init.orthogonal_(module.weight)
        return blocks


def vgg_blocks(layout: str) -> int:
    """L, the number of blocks of a VGG layout: its convs, then one linear block (two with a hidden width)."""
    convs, hidden = LAYOUTS[layout]
    return len(convs) + (1 if hidden is None else 2)


def _vgg(layout: str):
    def factory(params: VGGParams) -> VGG:
        return VGG(layout, params)

    factory.__name__ = f"{layout}_factory"
    return factory


RESNET_STAGES = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2]}


def _named_resnet(name: str):
    def factory(params: NamedResNetParams) -> ResNet:
        return ResNet(RESNET_STAGES[name], params)

    factory.__name__ = f"{name}_factory"
    return factory


def _resnet(params: ResNetParams) -> ResNet:
    return ResNet(params.blocks, params)


@hookimpl
def pccore_register_architecture():
    paper = ("vgg5", "vgg7", "vgg10", "vgg15")
    published_code = ("vgg9", "vgg11", "vgg13", "vgg19")
    return [
        *(Component(name, _vgg(name), VGGParams, f"the paper's VGG with {vgg_blocks(name)} blocks",
                    label=name.upper())
          for name in paper),
        *(Component(name, _vgg(name), VGGParams,
                    f"the published code's {name.upper()} layout, {vgg_blocks(name)} blocks", label=name.upper())
          for name in published_code),
        Component("mlp", MLP, MLPParams, "fully connected blocks of the given hidden widths", label="MLP"),
        *(Component(name, _named_resnet(name), NamedResNetParams,
                    f"ResNet with {sum(stages)} basic blocks; aux = true gives each skip auxiliary neurons",
                    label=name.replace("resnet", "ResNet"))
          for name, stages in RESNET_STAGES.items()),
        Component("resnet", _resnet, ResNetParams,
                  "ResNet with `blocks` basic blocks per stage; aux = true gives each skip auxiliary neurons",
                  label="ResNet"),
        Component("resmlp", ResMLP, ResMLPParams,
                  "residual MLP of `depth` hidden layers of `width` units; parameterization = \"mupc\" (muPC) "
                  "or \"standard\"", label="ResMLP"),
    ]
