"""Layer states and how inference moves them: a state's parts, the squared error with its backward
written out, the SGD-with-momentum step (and the closed-form coasting of states without gradient), and
the weights' side of an inference step that moves the weights too (incremental PC)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from pccore.core.components import State, WeightStep


def parts(state: State) -> tuple[torch.Tensor, ...]:
    """The tensors of a layer's state: the tuple itself, or a one-tensor tuple."""
    return state if isinstance(state, tuple) else (state,)


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """`fn` applied to every tensor of a state, keeping its structure."""
    return tuple(fn(p) for p in state) if isinstance(state, tuple) else fn(state)


class HalfSquaredError(torch.autograd.Function):
    """1/2 ||x - mu||^2 summed over every element, with its backward written out: the gradient is
    +-(x - mu) times the incoming scalar, one elementwise product per input, where autograd's own chain
    (sub, pow, sum) makes several passes over the tensor."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        err = x - mu
        ctx.save_for_backward(err)
        return 0.5 * err.square().sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (err,) = ctx.saved_tensors
        return (
            err * grad if ctx.needs_input_grad[0] else None,
            err * -grad if ctx.needs_input_grad[1] else None,
        )


def unaliased(directions: Sequence[torch.Tensor], seeds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Autograd may hand one tensor to several inputs (both parts of a sum) or hand a seed straight back
    (an identity-predicted part); the in-place updates that follow need each direction to own its memory."""
    taken = {s.data_ptr() for s in seeds}
    out = list(directions)
    for i, d in enumerate(out):
        if d.data_ptr() in taken:
            out[i] = d.clone()
        else:
            taken.add(d.data_ptr())
    return out


@torch.no_grad()
def sgd_step(xs: list[torch.Tensor], directions: list[torch.Tensor], bufs: list[torch.Tensor], lrs: list[float],
             momentum: float, nesterov: bool, fresh: list[bool]) -> None:
    """One SGD step with (Nesterov) momentum in PyTorch's convention (b = m b + g; step g + m b, or b),
    written for descent directions d = -g so that every operation is in place. A state's first step
    starts its buffer at d (PyTorch's b = g when there is no buffer yet), so buffers need no zeroing."""
    m = momentum
    if m != 0.0 and xs:
        kept = [(b, d) for b, d, f in zip(bufs, directions, fresh, strict=True) if not f]
        if kept:
            torch._foreach_mul_([b for b, _ in kept], m)
            torch._foreach_add_([b for b, _ in kept], [d for _, d in kept])
        for b, d, f in zip(bufs, directions, fresh, strict=True):
            if f:
                b.copy_(d)
        if nesterov:
            torch._foreach_add_(directions, bufs, alpha=m)
        else:
            directions = bufs
    add_scaled(xs, directions, lrs)


@torch.no_grad()
def settle(xs: list[torch.Tensor], bufs: list[torch.Tensor], totals: Sequence[float], decays: Sequence[float]) -> None:
    """Take the coasting steps of states without gradient at once: x += total * b, then b *= m^n."""
    torch._foreach_add_(xs, torch._foreach_mul(bufs, list(totals)))
    torch._foreach_mul_(bufs, list(decays))


def add_scaled(xs: list[torch.Tensor], directions: list[torch.Tensor], lrs: list[float]) -> None:
    """x += lr * d for each state, in one foreach call when the rates agree."""
    if not xs:
        return
    if all(r == lrs[0] for r in lrs):
        torch._foreach_add_(xs, directions, alpha=lrs[0])
    else:
        for x, d, r in zip(xs, directions, lrs, strict=True):
            x.add_(d, alpha=r)


class WeightMoves:
    """The weights' side of a joint inference step: which tensors take part (those of the step's active
    blocks), their gradients -(-dE_t/dtheta) * scale / B into `.grad`, and the weight step."""

    def __init__(self, blocks: Sequence[nn.Module], weight_step: WeightStep, scale: float | torch.Tensor,
                 batch_size: int) -> None:
        self.params = [[p for p in block.parameters() if p.requires_grad] for block in blocks]
        self.every = [p for ps in self.params for p in ps]
        self.weight_step = weight_step
        self.factor = scale / batch_size
        self.taken: list[torch.Tensor] = []
        self.directions: list[torch.Tensor] = []

    def take(self, active: Sequence[int]) -> list[torch.Tensor]:
        """The weight tensors of the active blocks (1-based), the inputs the step's autograd call adds."""
        self.taken = [p for l in active for p in self.params[l - 1]]
        return self.taken

    def found(self, directions: Sequence[torch.Tensor]) -> None:
        self.directions = list(directions)

    def step(self) -> None:
        """Gradients into `.grad` (None outside the active blocks: exactly zero, so no step), then the
        weight step, stoppable."""
        for p in self.every:
            p.grad = None
        with torch.no_grad():
            for p, d in zip(self.taken, self.directions, strict=True):
                p.grad = d.mul_(-self.factor) if isinstance(self.factor, float) else d * -self.factor
        self.taken, self.directions = [], []
        self.weight_step(stoppable=True)
