"""The weight optimizer (AdamW) and its warmup-cosine learning-rate schedule (METHOD.md, step 5)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from pccore.core.errors import UsageError

PEAK_FACTOR = 1.1
"""The warmup rises from lr to PEAK_FACTOR * lr."""
END_FACTOR = 0.1
"""The cosine decays to END_FACTOR * lr and stays there."""


def make_optimizer(
    params: Iterable[torch.nn.Parameter], section: Any, *, for_graphs: bool = False
) -> torch.optim.AdamW:
    """AdamW over `params` with the recipe's `optimizer.lr` and `optimizer.weight_decay`.

    `for_graphs` makes the optimizer a step replayed as a CUDA graph can contain: the fused AdamW (one
    kernel for every parameter), its step counters on the device (`capturable` on CUDA), and the learning
    rate in a device tensor that the schedule writes between replays."""
    params = list(params)
    lr = float(section.lr)
    weight_decay = float(section.weight_decay)
    if not lr > 0.0:
        raise UsageError(f"optimizer.lr must be positive, got {lr}.")
    if weight_decay < 0.0:
        raise UsageError(f"optimizer.weight_decay must be zero or positive, got {weight_decay}.")
    if not for_graphs:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    device, dtype = params[0].device, params[0].dtype
    rate = torch.tensor(lr, device=device, dtype=dtype)
    return torch.optim.AdamW(params, lr=rate, weight_decay=weight_decay, fused=True, capturable=device.type == "cuda")


class WarmupCosine:
    """Warmup-cosine schedule without restarts, stepped once per optimizer step.

    The rate starts at `base_lr`, rises linearly to 1.1 * base_lr over the first `warmup_fraction` of
    `total_steps` (rounded to whole steps), decays along a half cosine to 0.1 * base_lr at `total_steps`,
    and stays at 0.1 * base_lr afterwards. Construction sets the rate for step 0; `step()` after each
    optimizer step sets the rate for the next one.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, base_lr: float, total_steps: int, warmup_fraction: float
    ) -> None:
        if total_steps < 1:
            raise UsageError(
                f"the learning-rate schedule needs at least one step, got {total_steps} "
                "(optimizer.schedule_epochs times the batches per epoch)."
            )
        if not 0.0 <= warmup_fraction <= 1.0:
            raise UsageError(f"optimizer.warmup must be in [0, 1], got {warmup_fraction}.")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_fraction = float(warmup_fraction)
        self.warmup_steps = round(self.warmup_fraction * self.total_steps)
        self.step_count = 0
        # A rate kept in a device tensor (an optimizer made for CUDA graphs) is written in place, and put
        # back after an optimizer state is loaded over it.
        self._rates = [g["lr"] if isinstance(g["lr"], torch.Tensor) else None for g in optimizer.param_groups]
        self._apply()

    def lr_at(self, step: int) -> float:
        """The learning rate used by optimizer step number `step` (0-based)."""
        peak = PEAK_FACTOR * self.base_lr
        end = END_FACTOR * self.base_lr
        if step < self.warmup_steps:
            return self.base_lr + (peak - self.base_lr) * step / self.warmup_steps
        if step >= self.total_steps:
            return end
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def current_lr(self) -> float:
        """The rate the next optimizer step will use."""
        return self.lr_at(self.step_count)

    def step(self) -> None:
        """Advance by one optimizer step and set the rate of the next one."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the schedule exactly (for checkpoints)."""
        return {
            "step_count": self.step_count,
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a schedule saved by `state_dict` and set the optimizer's rate accordingly."""
        self.base_lr = float(state["base_lr"])
        self.total_steps = int(state["total_steps"])
        self.warmup_fraction = float(state["warmup_fraction"])
        self.warmup_steps = round(self.warmup_fraction * self.total_steps)
        self.step_count = int(state["step_count"])
        self._apply()

    def _apply(self) -> None:
        lr = self.current_lr()
        for group, rate in zip(self.optimizer.param_groups, self._rates, strict=True):
            if rate is None:
                group["lr"] = lr
            else:
                group["lr"] = rate
                rate.fill_(lr)


def hold_back_zero_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """The stoppable optimizer's rule: a parameter whose gradient is exactly zero (every entry) gets no
    gradient, so the optimizer's step leaves it, its moments and its step count as they are. One host
    synchronisation for all of them."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    nonzero = torch.stack([p.grad.ne(0).any() for p in with_grad]).tolist()
    for p, keep in zip(with_grad, nonzero, strict=True):
        if not keep:
            p.grad = None


class WeightStepper:
    """The weight step of a training run (`WeightStep`): the gradients summed over the data-parallel
    replicas (`sum_gradients`), with `stoppable` the exactly-zero ones held back, the optimizer step, then
    one step of the learning-rate schedule."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: WarmupCosine | None = None,
                 sum_gradients: Callable[[], None] | None = None) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.sum_gradients = sum_gradients
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, *, stoppable: bool = False) -> None:
        if self.sum_gradients is not None:
            self.sum_gradients()
        if stoppable:
            hold_back_zero_gradients(self.params)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
