"""An example pccore plugin: the `linear_ramp` precision schedule.

Layer l is reached by the error at inference step t0 = L - l. From then on its precision rises linearly
from `start` to `end` over `ramp` steps and stays at `end`; before t0 (where the wavefront masks the layer
anyway) it is `start`. The learning-phase row is all ones, as in the reference implementation.
"""

from __future__ import annotations

import math

import attrs
import torch

from pccore.plugin import Component, PrecisionTable, hookimpl


def _finite(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, got {value}")


@attrs.define(frozen=True)
class LinearRampParams:
    """`start`: precision when the error arrives; `end`: precision after `ramp` more steps."""

    start: float = attrs.field(default=0.1, validator=_finite)
    end: float = attrs.field(default=1.0, validator=_finite)
    ramp: int = attrs.field(default=3, validator=attrs.validators.ge(1))


class LinearRamp:
    """pi[t][l] = start + (end - start) * clamp((t - (L - l)) / ramp, 0, 1)."""

    def __init__(self, params: LinearRampParams) -> None:
        self.params = params

    def table(self, layers: int, steps: int) -> PrecisionTable:
        p = self.params
        t = torch.arange(steps, dtype=torch.float64).unsqueeze(1)
        reached = layers - torch.arange(1, layers + 1, dtype=torch.float64).unsqueeze(0)
        fraction = ((t - reached) / p.ramp).clamp(0.0, 1.0)
        inference = p.start + (p.end - p.start) * fraction
        return PrecisionTable(inference=inference, learning=torch.ones(layers, dtype=torch.float64))


@hookimpl
def pccore_register_precision() -> list[Component]:
    """Register `linear_ramp`."""
    return [
        Component(
            "linear_ramp",
            LinearRamp,
            LinearRampParams,
            "precision rises linearly from `start` to `end` over `ramp` steps after the error arrives",
        )
    ]
