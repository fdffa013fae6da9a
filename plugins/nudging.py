"""Nudging methods for the output node: clamp, nudge and center nudging."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from pccore.plugin import Component, NoParams, hookimpl

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

    The draws come from a CPU generator seeded with (seed, epoch), so a run is reproducible from its seed;
    they are made in `begin_epoch` and `begin_batch`, outside the training step, and the signed beta lives
    in a device tensor that `output_node` reads (so a step replayed as a CUDA graph sees every new sign).
    With `scale_update`, the weight update is divided by the signed beta (the reference's older code).
    """

    def __init__(self, params: CenterParams):
        self.params = params
        self.generator = torch.Generator()
        self.sign = 1.0
        self._beta: torch.Tensor | None = None  # the signed beta, on the device of the predictions

    def begin_epoch(self, seed: int, epoch: int) -> None:
        self.generator.manual_seed(seed * 1_000_003 + epoch)
        self._set_sign(self._draw())

    def begin_batch(self) -> None:
        if self.params.resample == "batch":
            self._set_sign(self._draw())

    def _draw(self) -> float:
        return 1.0 if torch.rand((), generator=self.generator).item() < 0.5 else -1.0

    def _set_sign(self, sign: float) -> None:
        self.sign = sign
        if self._beta is not None:
            self._beta.fill_(sign * self.params.beta)

    def output_node(
        self, prediction: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, float | torch.Tensor]:
        beta = self._beta
        if beta is None or beta.device != prediction.device or beta.dtype != prediction.dtype:
            beta = self._beta = torch.full((), self.sign * self.params.beta, device=prediction.device,
                                           dtype=prediction.dtype)
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
