"""The replicas of the model that train together, as a plugin sees them.

A data-parallel run trains one copy of the model per process. A component that needs statistics of the
whole global batch (synchronised BatchNorm) asks `current_replicas()` for its rank, the number of
replicas and a differentiable sum over them. Outside a data-parallel run this is one replica whose sum
is the identity; `pccore.parallel.distributed` installs the process group's replicas when it joins one,
so that plugins never import the process-group code themselves.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Replicas(Protocol):
    """Rank `rank` of `size` replicas; `distributed` is whether a process group joins them."""

    rank: int
    size: int

    @property
    def distributed(self) -> bool: ...

    def differentiable_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the replicas, with autograd through the sum."""


class _OneReplica:
    rank = 0
    size = 1
    distributed = False

    def differentiable_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


_ALONE = _OneReplica()
_current: Replicas = _ALONE


def current_replicas() -> Replicas:
    """The replicas this process trains with (one, until a process group is joined)."""
    return _current


def set_current_replicas(replicas: Replicas | None) -> None:
    """Install the replicas of a joined process group (None: back to one replica)."""
    global _current
    _current = _ALONE if replicas is None else replicas
