"""Nudging methods for the output node: clamp, nudge and center nudging."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from pccore import Component, hookimpl
from pccore.components import NoParams

_unit = [attrs.validators.gt(0), attrs.validators.le(1)]


class Clamp:
    """x^L = y: the output node is fixed to the one-hot target."""

    def __init__(self, params: NoParams):
        pass

    def begin_epoch(self, seed: int, epoch: int) -> None:
        pass

    def output_node(self, prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
        return target, 1.0


@attrs.define(frozen=True)
class NudgeParams:
    beta: float = attrs.field(default=1.0, validator=_unit)


class Nudge:
    """x^L = mu^L_0 + beta (y - mu^L_0), fixed for all steps.

    This matches clamping x^L = y with an output precision beta at the first inference step only: there
    the output error x^L - mu^L_0 = beta (y - mu^L_0) is the same. Once the prediction mu^L_t moves, the
    error is beta (y - mu^L_0) + (mu^L_0 - mu^L_t): the fixed node keeps pulling on the change of the
    prediction with weight 1, where an output precision beta would weight the whole error y - mu^L_t by
    beta.
    """

    def __init__(self, params: NudgeParams):
        self.beta = params.beta

    def begin_epoch(self, seed: int, epoch: int) -> None:
        pass

    def output_node(self, prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
        return prediction + self.beta * (target - prediction), 1.0


@attrs.define(frozen=True)
class CenterParams:
    beta: float = attrs.field(default=0.1, validator=_unit)
    resample: Literal["batch", "epoch"] = "batch"
    scale_update: bool = False


class Center:
    """Center nudging: the sign of beta is drawn at random, per batch or per epoch.

    The draws come from a generator seeded with (seed, epoch), so a run is reproducible from its seed.
    With `scale_update`, the weight update is divided by the signed beta (the reference's older code).
    """

    def __init__(self, params: CenterParams):
        self.params = params
        self.generator = torch.Generator()
        self.sign = 1.0

    def begin_epoch(self, seed: int, epoch: int) -> None:
        self.generator.manual_seed(seed * 1_000_003 + epoch)
        self.sign = self._draw()

    def _draw(self) -> float:
        return 1.0 if torch.rand((), generator=self.generator).item() < 0.5 else -1.0

    def output_node(self, prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
        if self.params.resample == "batch":
            self.sign = self._draw()
        beta = self.sign * self.params.beta
        scale = 1.0 / beta if self.params.scale_update else 1.0
        return prediction + beta * (target - prediction), scale


@hookimpl
def pccore_register_nudging():
    return [
        Component("clamp", Clamp, NoParams, "output node fixed to the one-hot target", label=""),
        Component("nudge", Nudge, NudgeParams, "output node mu + beta (y - mu)"),
        Component("center", Center, CenterParams,
                  "center nudging: sign of beta drawn per batch or per epoch"),
    ]
