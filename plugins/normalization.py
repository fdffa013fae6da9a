"""Normalisation policies: none, ordinary BatchNorm, and BatchNorm Freezing (BF).

BatchNorm Freezing (METHOD.md): the initial forward pass and every inference step normalise with the
current batch's statistics and leave the running statistics alone; the learning phase's forward pass
updates them once per batch. Evaluation uses the running statistics.

Blocks written by hand (the Python API) bring their own `nn.BatchNorm1d`/`nn.BatchNorm2d`; the policies'
`prepare` hook takes control of them: BatchNorm Freezing turns them into freezable layers in place (same
object, parameters and buffers, so an optimizer made beforehand stays valid), and "none" refuses them.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from pccore import Component, hookimpl
from pccore.components import NoParams, Phase


class _Freezable:
    """Mixin for BatchNorm layers: with `update_stats` off, training mode uses batch statistics and
    leaves running statistics (and the batch counter) untouched."""

    update_stats: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.update_stats:
            self._check_input_dim(x)
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


class FreezableBatchNorm1d(_Freezable, nn.BatchNorm1d):
    pass


class FreezableBatchNorm2d(_Freezable, nn.BatchNorm2d):
    pass


_FREEZABLE = {nn.BatchNorm1d: FreezableBatchNorm1d, nn.BatchNorm2d: FreezableBatchNorm2d}
"""The BatchNorm classes BatchNorm Freezing can take over, and the freezable class each becomes."""


def _batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BatchNorm module (any dimension, lazy, synchronised or subclassed) by its dotted path."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@attrs.define(frozen=True)
class BatchNormParams:
    momentum: float = attrs.field(default=0.1, validator=[attrs.validators.gt(0), attrs.validators.le(1)])
    eps: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0))


class NoNormalization:
    """Blocks without normalisation layers."""

    pure_inference = True

    def __init__(self, params: NoParams):
        pass

    def layer(self, num_features: int, spatial_dims: int) -> nn.Module | None:
        return None

    def set_phase(self, model: nn.Module, phase: Phase) -> None:
        pass

    def prepare(self, model: nn.Module) -> None:
        """Refuse blocks that hold BatchNorm layers: "none" promises that no layer keeps statistics."""
        found = _batchnorms(model)
        if found:
            name, module = found[0]
            raise ValueError(
                f"the blocks hold {len(found)} BatchNorm layer(s) (the first at {name!r}, a "
                f"{type(module).__name__}), but normalization \"none\" runs without normalisation layers; "
                'choose normalization "frozen" (BatchNorm Freezing) or "batchnorm" (ordinary BatchNorm)'
            )


class BatchNorm:
    """Ordinary BatchNorm: running statistics update at every training-mode call."""

    layer_classes = {2: nn.BatchNorm2d, 0: nn.BatchNorm1d}

    def __init__(self, params: BatchNormParams):
        self.params = params

    def layer(self, num_features: int, spatial_dims: int) -> nn.Module | None:
        cls = self.layer_classes[spatial_dims]
        return cls(num_features, eps=self.params.eps, momentum=self.params.momentum)

    def set_phase(self, model: nn.Module, phase: Phase) -> None:
        pass


class FrozenBatchNorm(BatchNorm):
    """BatchNorm Freezing: running statistics update only in the learning phase's forward pass."""

    layer_classes = {2: FreezableBatchNorm2d, 0: FreezableBatchNorm1d}
    pure_inference = True

    def __init__(self, params: BatchNormParams):
        super().__init__(params)
        self._model: nn.Module | None = None
        self._layers: list[_Freezable] = []

    def prepare(self, model: nn.Module) -> None:
        """Turn the blocks' own `nn.BatchNorm1d`/`nn.BatchNorm2d` layers into freezable ones, in place.

        The class of each module is swapped (its state is exactly that of its plain class), so the module
        object, its parameters and its buffers stay the same. Any other BatchNorm-like layer (3d, lazy,
        SyncBatchNorm, a subclass) is refused: its statistics could not be frozen.
        """
        for name, module in _batchnorms(model):
            if isinstance(module, _Freezable):
                continue
            target = _FREEZABLE.get(type(module))
            if target is None:
                raise ValueError(
                    f"BatchNorm Freezing controls nn.BatchNorm1d and nn.BatchNorm2d layers, but the layer at "
                    f"{name!r} is a {type(module).__module__}.{type(module).__qualname__}; build that block "
                    "with nn.BatchNorm1d/2d (a lazy layer: run one forward pass first), or choose "
                    'normalization "batchnorm"'
                )
            module.__class__ = target
        self._model = None  # the layers are found again at the next set_phase

    def set_phase(self, model: nn.Module, phase: Phase) -> None:
        if model is not self._model:  # found once per model: this runs three times per batch
            self._model = model
            self._layers = [m for m in model.modules() if isinstance(m, _Freezable)]
        update = phase == "learning"
        for layer in self._layers:
            layer.update_stats = update


@hookimpl
def pccore_register_normalization():
    return [
        Component("none", NoNormalization, NoParams, "no normalisation layers", label=""),
        Component("batchnorm", BatchNorm, BatchNormParams,
                  "ordinary BatchNorm: running statistics updated at every training-mode call",
                  label="BF"),  # the paper's "BF" columns train BP with ordinary BatchNorm
        Component("frozen", FrozenBatchNorm, BatchNormParams,
                  "BatchNorm Freezing (BF): running statistics updated once per batch, in the learning phase",
                  label="BF"),
    ]
