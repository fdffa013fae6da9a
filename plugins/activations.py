"""The activation functions architectures accept by name (`activation = "gelu"` in a recipe)."""

from __future__ import annotations

from typing import Literal

from torch import nn

ActivationName = Literal["gelu", "relu", "leaky_relu", "hardtanh", "tanh"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "hardtanh": nn.Hardtanh,
    "tanh": nn.Tanh,
}
