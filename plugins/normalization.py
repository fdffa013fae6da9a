"""Normalisation policies: none, ordinary BatchNorm, and BatchNorm Freezing (BF).

BatchNorm Freezing (METHOD.md): the initial forward pass and every inference step normalise with the
current batch's statistics and leave the running statistics alone; the learning phase's forward pass
updates them once per batch. Evaluation uses the running statistics.

Blocks written by hand (the Python API) bring their own `nn.BatchNorm1d`/`nn.BatchNorm2d`; the policies'
`prepare` hook takes control of them: BatchNorm Freezing turns them into freezable layers in place (same
object, parameters and buffers, so an optimizer made beforehand stays valid), and "none" refuses them.

Data-parallel runs (torchrun): by default each process normalises with the statistics of its own share of
the batch, as DistributedDataParallel does, and the running statistics, which then differ between
processes, are averaged after every training step (`shared_buffers`), so that every process holds the
same model. With `sync = true` every training-mode pass of either policy normalises with the statistics
of the whole global batch (one all-reduce per layer and pass, gradients flowing through them), which is
exactly what one process training on the global batch computes; the running statistics are then equal
on every process by construction.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from pccore.plugin import Component, NoParams, Phase, current_replicas, hookimpl


class _Freezable:
    """Mixin for the BatchNorm layers a policy controls. With `update_stats` off, training mode uses batch
    statistics and leaves running statistics (and the batch counter) untouched. With `sync` on, training
    mode in a data-parallel run uses the statistics of the global batch (all processes' inputs)."""

    update_stats: bool = True
    sync: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sync and x.device.type != "meta" and current_replicas().distributed:
            self._check_input_dim(x)
            return _synchronised_batch_norm(self, x)
        if self.training and not self.update_stats:
            self._check_input_dim(x)
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


def _synchronised_batch_norm(layer: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm of `x` with the statistics of every process's input together.

    Each process contributes its count, mean and sum of squared deviations per channel (one all-reduce of a
    [world, 2C + 1] table, each process filling its own row); the global mean and variance follow from
    Chan's combination. Autograd runs through the all-reduce, so gradients reach every process's inputs as
    in one process. The running statistics are updated (unbiased variance) when `layer.update_stats`.
    """
    world = current_replicas()
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    low_precision = x.dtype in (torch.float16, torch.bfloat16)
    xs = x.float() if low_precision else x
    count = x.numel() // channels
    mean = xs.sum(dims) / max(count, 1)
    squares = (xs - mean.view(shape)).square().sum(dims)
    row = torch.cat([mean.new_full((1,), float(count)), mean, squares])
    own = torch.zeros(world.size, 1, dtype=row.dtype, device=row.device)
    own[world.rank] = 1.0
    table = world.differentiable_sum(own * row)
    counts, means, all_squares = table[:, :1], table[:, 1 : channels + 1], table[:, channels + 1 :]
    total = counts.sum()
    global_mean = (counts * means).sum(0) / total
    global_squares = all_squares.sum(0) + (counts * (means - global_mean).square()).sum(0)
    variance = global_squares / total
    y = (xs - global_mean.view(shape)) * torch.rsqrt(variance + layer.eps).view(shape)
    if layer.weight is not None:
        y = y * layer.weight.view(shape) + layer.bias.view(shape)
    if layer.update_stats and layer.track_running_stats and layer.running_mean is not None:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            factor = 1.0 / float(layer.num_batches_tracked) if layer.momentum is None else layer.momentum
            unbiased = global_squares / (total - 1).clamp(min=1)
            layer.running_mean.mul_(1 - factor).add_(global_mean.to(layer.running_mean.dtype), alpha=factor)
            layer.running_var.mul_(1 - factor).add_(unbiased.to(layer.running_var.dtype), alpha=factor)
    return y.to(x.dtype) if low_precision else y


class FreezableBatchNorm1d(_Freezable, nn.BatchNorm1d):
    pass


class FreezableBatchNorm2d(_Freezable, nn.BatchNorm2d):
    pass


_FREEZABLE = {nn.BatchNorm1d: FreezableBatchNorm1d, nn.BatchNorm2d: FreezableBatchNorm2d}
"""The BatchNorm classes the policies can take over, and the controllable class each becomes."""


def _batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BatchNorm module (any dimension, lazy, synchronised or subclassed) by its dotted path."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _take_control(model: nn.Module, what: str, sync: bool) -> None:
    """Turn the blocks' `nn.BatchNorm1d`/`nn.BatchNorm2d` layers into controllable ones in place (the
    class of each module is swapped: its state is exactly that of its plain class, so the module object,
    its parameters and its buffers stay the same) and set their `sync`; refuse any other BatchNorm-like
    layer (3d, lazy, SyncBatchNorm, a subclass), whose statistics `what` could not control."""
    for name, module in _batchnorms(model):
        if not isinstance(module, _Freezable):
            target = _FREEZABLE.get(type(module))
            if target is None:
                raise ValueError(
                    f"{what} controls nn.BatchNorm1d and nn.BatchNorm2d layers, but the layer at {name!r} is a "
                    f"{type(module).__module__}.{type(module).__qualname__}; build that block with "
                    "nn.BatchNorm1d/2d (a lazy layer: run one forward pass first)"
                )
            module.__class__ = target
        module.sync = sync


def _running_statistics(model: nn.Module) -> list[torch.Tensor]:
    """The running means and variances of every BatchNorm layer in `model`."""
    return [t for _, m in _batchnorms(model) for t in (m.running_mean, m.running_var) if t is not None]


@attrs.define(frozen=True)
class BatchNormParams:
    momentum: float = attrs.field(default=0.1, validator=[attrs.validators.gt(0), attrs.validators.le(1)])
    eps: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0))
    sync: bool = False
    """In data-parallel runs, normalise with the statistics of the global batch instead of each process's
    share (synchronised BatchNorm); no effect in a single process."""


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
    synchronised_classes = {2: FreezableBatchNorm2d, 0: FreezableBatchNorm1d}
    label = 'normalization "batchnorm"'

    def __init__(self, params: BatchNormParams):
        self.params = params

    def layer(self, num_features: int, spatial_dims: int) -> nn.Module | None:
        cls = (self.synchronised_classes if self.params.sync else self.layer_classes)[spatial_dims]
        module = cls(num_features, eps=self.params.eps, momentum=self.params.momentum)
        if self.params.sync:
            module.sync = True
        return module

    def set_phase(self, model: nn.Module, phase: Phase) -> None:
        pass

    def prepare(self, model: nn.Module) -> None:
        """With `sync`, take control of the blocks' own BatchNorm layers (they must synchronise too)."""
        if self.params.sync:
            _take_control(model, self.label, sync=True)

    def shared_buffers(self, model: nn.Module) -> list[torch.Tensor]:
        """The running statistics, which each process updates from its own share of the batch; none with
        `sync`, where every process computes the same global statistics."""
        return [] if self.params.sync else _running_statistics(model)


class FrozenBatchNorm(BatchNorm):
    """BatchNorm Freezing: running statistics update only in the learning phase's forward pass."""

    layer_classes = synchronised_classes = {2: FreezableBatchNorm2d, 0: FreezableBatchNorm1d}
    label = "BatchNorm Freezing"
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
        try:
            _take_control(model, self.label, sync=self.params.sync)
        except ValueError as err:
            raise ValueError(f'{err}, or choose normalization "batchnorm"') from None
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
                  "ordinary BatchNorm: running statistics updated at every training-mode call "
                  "(sync = true: global-batch statistics in data-parallel runs)",
                  label="BF"),  # the paper's "BF" columns train BP with ordinary BatchNorm
        Component("frozen", FrozenBatchNorm, BatchNormParams,
                  "BatchNorm Freezing (BF): running statistics updated once per batch, in the learning phase "
                  "(sync = true: global-batch statistics in data-parallel runs)",
                  label="BF"),
    ]
