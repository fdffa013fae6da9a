"""Residual networks for predictive coding: pre-activation basic blocks, with or without auxiliary neurons.

With `aux = true` (DEEPER.md, section A; the published version of the paper) every basic block is two
layers whose states are (main, auxiliary) pairs:

    layer A: mu^m = [norm](conv3x3_stride(phi(s))),  mu^a = P(s)      (P: 1x1 conv, or the identity)
    layer B: mu^m = [norm](conv3x3(phi(x_A^m))),      mu^a = x_A^a
    block output (the next block's input s): x_B^m + x_B^a

so the skip path carries the error down one layer per inference step, like the main path, instead of
jumping a whole block at once. An identity-predicted auxiliary part weighs 1 / lr_x in its layer's energy:
one SGD step at the spike then hands its whole displacement to the part below. With `aux = false` the whole
block, skip included, is one block of the chain (states only at block outputs): the common PC ResNet.

The stem (conv3x3, no bias, no normalisation, no activation) is layer 1; the head
`fc(global_avg_pool(phi(s)))` predicts the output. Convolutions have no bias; the normalisation policy's
layer follows each 3x3 convolution of a block (as in the reference's BatchNorm variant).
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from pccore.plugin import InferenceSettings, NormalizationPolicy
from pccore_plugins.activations import ACTIVATIONS, ActivationName

STAGE_CHANNELS = (64, 128, 256, 512)
"""Channels of the four stages at width 1 (the first stage also sets the stem's channels)."""

def _summed(x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A block's input s: the state below, its parts added up when it has several."""
    return x[0] + x[1] if isinstance(x, tuple) else x


def _norm(norm: NormalizationPolicy, channels: int) -> nn.Module:
    return norm.layer(channels, 2) or nn.Identity()


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """P: a 1x1 convolution when the block changes the shape, else None (the identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class Stem(nn.Module):
    """Layer 1: conv3x3 of the image, no bias."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class AuxFirstLayer(nn.Module):
    """Layer A of a basic block with auxiliary neurons: (norm(conv(phi(s))), P(s))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, act: type[nn.Module],
                 norm: NormalizationPolicy):
        super().__init__()
        self.act = act()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm = _norm(norm, out_channels)
        self.project = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        s = _summed(x)
        main = self.norm(self.conv(self.act(s)))
        return main, (s if self.project is None else self.project(s))

    def part_weights(self, inference: InferenceSettings) -> tuple[float, float]:
        return 1.0, (1.0 / inference.lr if self.project is None else 1.0)


class AuxSecondLayer(nn.Module):
    """Layer B of a basic block with auxiliary neurons: (norm(conv(phi(x_A^m))), x_A^a)."""

    def __init__(self, channels: int, act: type[nn.Module], norm: NormalizationPolicy):
        super().__init__()
        self.act = act()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = _norm(norm, channels)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        main, aux = x
        return self.norm(self.conv(self.act(main))), aux

    def part_weights(self, inference: InferenceSettings) -> tuple[float, float]:
        return 1.0, 1.0 / inference.lr


class ResidualBlock(nn.Module):
    """A whole pre-activation basic block as one block of the chain:
    norm(conv(phi(norm(conv_stride(phi(s)))))) + P(s)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, act: type[nn.Module],
                 norm: NormalizationPolicy):
        super().__init__()
        self.act1, self.act2 = act(), act()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, out_channels)
        self.project = _projection(in_channels, out_channels, stride)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        main = self.norm2(self.conv2(self.act2(self.norm1(self.conv1(self.act1(s))))))
        return main + (s if self.project is None else self.project(s))


class Head(nn.Module):
    """The output block: fc(global_avg_pool(phi(s)))."""

    def __init__(self, channels: int, num_classes: int, act: type[nn.Module]):
        super().__init__()
        self.act = act()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.fc(self.act(_summed(x)).mean(dim=(2, 3)))


@attrs.define(frozen=True)
class NamedResNetParams:
    activation: ActivationName = "gelu"
    width: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    aux: bool = True


def _stages_validator(_instance, _attribute, value: list[int]) -> None:
    if not 1 <= len(value) <= len(STAGE_CHANNELS) or any(b < 1 for b in value):
        raise ValueError(f"blocks must list 1 to {len(STAGE_CHANNELS)} stages of at least 1 block each")


@attrs.define(frozen=True)
class ResNetParams:
    blocks: list[int] = attrs.field(factory=lambda: [2, 2, 2, 2], validator=_stages_validator)
    activation: ActivationName = "gelu"
    width: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    aux: bool = True


class ResNet:
    """A ResNet with `blocks[i]` basic blocks in stage i (64 * 2^i channels times `width`, stride 1 in the
    first stage and 2 after)."""

    def __init__(self, blocks: list[int], params: NamedResNetParams | ResNetParams):
        self.stages = list(blocks)
        self.params = params
        self.act = ACTIVATIONS[params.activation]

    def build(self, input_shape: tuple[int, ...], num_classes: int, norm: NormalizationPolicy) -> list[nn.Module]:
        if len(input_shape) != 3:
            raise ValueError(f"a ResNet needs image inputs (C, H, W), got shape {tuple(input_shape)}")
        width = self.params.width
        channels = max(1, round(STAGE_CHANNELS[0] * width))
        layers: list[nn.Module] = [Stem(input_shape[0], channels)]
        for stage, count in enumerate(self.stages):
            out = max(1, round(STAGE_CHANNELS[stage] * width))
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                if self.params.aux:
                    layers.append(AuxFirstLayer(channels, out, stride, self.act, norm))
                    layers.append(AuxSecondLayer(out, self.act, norm))
                else:
                    layers.append(ResidualBlock(channels, out, stride, self.act, norm))
                channels = out
        layers.append(Head(channels, num_classes, self.act))
        return layers
