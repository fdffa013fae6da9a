"""Precision schedules: constant (standard PC), spiking (S) and decaying (D).

Conventions (METHOD.md): rows are inference steps t = 0..T-1, columns layers l = 1..L, and at step t the
error has just reached layer L - t. Row T is the learning time; the learning-phase row is all ones unless
`learning = "table"` asks for row T, as in the paper's equation 3.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch

from pccore.plugin import Component, PrecisionTable, hookimpl

LearningRow = Literal["ones", "table"]
_positive = attrs.validators.gt(0)


def _build(weight, layers: int, steps: int, learning: LearningRow) -> PrecisionTable:
    """Fill a table from `weight(t, l, L, T)` for t = 0..T (row T only when the learning row needs it)."""
    rows = [[weight(t, l, layers, steps) for l in range(1, layers + 1)] for t in range(steps + 1)]
    full = torch.tensor(rows, dtype=torch.float64)
    learn = full[steps].clone() if learning == "table" else torch.ones(layers, dtype=torch.float64)
    return PrecisionTable(inference=full[:steps].clone(), learning=learn)


@attrs.define(frozen=True)
class ConstantParams:
    learning: LearningRow = "ones"


class Constant:
    """Every weight 1: standard predictive coding."""

    def __init__(self, params: ConstantParams):
        self.params = params

    def table(self, layers: int, steps: int) -> PrecisionTable:
        return _build(lambda t, l, L, T: 1.0, layers, steps, self.params.learning)


@attrs.define(frozen=True)
class SpikingParams:
    peak: float = attrs.field(default=1.0, validator=_positive)
    base: float = attrs.field(default=0.001, validator=attrs.validators.ge(0))
    learning: LearningRow = "ones"


class Spiking:
    """`peak` on the layer the error has just reached (t == L - l), `base` everywhere else. `base = 0` is the
    pure spike: the engine then skips every zero-weighted block, and S+F costs about what backprop does."""

    def __init__(self, params: SpikingParams):
        self.params = params

    def table(self, layers: int, steps: int) -> PrecisionTable:
        p = self.params
        return _build(lambda t, l, L, T: p.peak if t == L - l else p.base, layers, steps, p.learning)


@attrs.define(frozen=True)
class DecayingParams:
    k: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    variant: Literal["paper", "reference"] = "paper"
    learning: LearningRow = "ones"


class Decaying:
    """Precision that decays exponentially after the error reaches a layer.

    paper (equation 5): weights exp(-k j) / sum_{i=0..T-L+l} exp(-k i), j = t - (L - l), summing to 1 over
    t = L-l..T. reference: 1 at j = 0, then exp(-k j) * S / 100 with S = sum_{i=0..T-(L-l)-1} exp(-k i).
    Before the wavefront (t < L - l) the weight is 1; those layers carry no error yet.
    """

    def __init__(self, params: DecayingParams):
        self.params = params

    def weight(self, t: int, l: int, L: int, T: int) -> float:
        j = t - (L - l)
        if j < 0:
            return 1.0
        k = self.params.k
        if self.params.variant == "paper":
            return math.exp(-k * j) / sum(math.exp(-k * i) for i in range(T - L + l + 1))
        if j == 0:
            return 1.0
        return math.exp(-k * j) * sum(math.exp(-k * i) for i in range(T - (L - l))) / 100.0

    def table(self, layers: int, steps: int) -> PrecisionTable:
        return _build(self.weight, layers, steps, self.params.learning)


@hookimpl
def pccore_register_precision():
    return [
        Component("constant", Constant, ConstantParams, "all weights 1 (standard predictive coding)", label=""),
        Component("spiking", Spiking, SpikingParams,
                  "peak on the layer the error has just reached, base elsewhere (S)", label="S"),
        Component("decaying", Decaying, DecayingParams,
                  "exponential decay after the error reaches a layer (D); variant paper or reference", label="D"),
    ]
