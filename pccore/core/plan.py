"""The step plan: what each inference step computes, fixed once per engine from the precision table.

This is what makes sparse schedules cheap (the pure spike above all): a layer whose energy weighs zero at
a step is not evaluated, a block whose input has not moved yet is not called again (its initial output and
graph stand in), and a state without gradient is not stepped one step at a time but coasts, its momentum
steps settled at once in closed form. None of it changes the numbers: the states are those of the dense
loop (tests/test_sparse.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class StepPlan(NamedTuple):
    """What inference step t computes, fixed once per engine from the precision table's zero pattern.

    `evaluate`: layers whose prediction is computed by calling their block. `reuse`: layers whose prediction
    is mu^l_0 from the initial pass, because their input has not moved yet (layer 1's input never moves);
    for l >= 2 the initial pass's graph carries the pullback to the input. `pulled`: active layers l >= 2,
    whose weighted error is pulled back into x^{l-1}. `grad`: latent layers that get a gradient this step,
    `fresh` those among them that get their first (their momentum buffer starts from it). `final`: layers
    whose energy is computed for the last time (the energy a step reports).

    A layer with momentum and no gradient coasts: with zero gradient for n steps at rates r_1..r_n, SGD moves
    it by b * sum_i r_i m^(i+1) (Nesterov; m^i without) and leaves its buffer at m^n b. Rather than take
    those steps one by one, the engine settles them at once, at the end of the step before the layer is
    next read or updated (or at the end of inference): `settle` lists (flat state index, sum, m^n)."""

    first: int
    evaluate: tuple[int, ...]
    reuse: tuple[int, ...]
    pulled: tuple[int, ...]
    grad: tuple[int, ...]
    fresh: tuple[int, ...]
    final: tuple[int, ...]
    settle: tuple[tuple[int, float, float], ...] = ()

    @property
    def active(self) -> tuple[int, ...]:
        """Layers whose energy has a non-zero weight at this step (within the wavefront)."""
        return tuple(sorted(self.evaluate + self.reuse))


def make_plan(
    weighted: Sequence[Sequence[bool]],
    *,
    pure_inference: bool,
    local_graph: bool,
    momentum: float,
    nesterov: bool,
    offsets: Sequence[int],
    lrs: Sequence[Sequence[float]],
    moving_weights: bool = False,
) -> list[StepPlan]:
    """One StepPlan per step from the table's non-zero pattern (`weighted[t][l-1]`, T rows of L) and the
    wavefront.

    A latent state that has never had a gradient (nor, therefore, momentum) still equals its initial
    prediction, so the block it feeds predicts mu_0 again; with a normalisation policy whose inference
    passes are pure and an update rule that keeps the initial pass's per-block graph (`local_graph`), that
    block is not called: its initial output and graph stand in. `offsets[k]:offsets[k+1]` are layer k's
    indices in the flat list of latent state parts and `lrs[t][i]` the state rate of part i at step t (for
    the coasting sums).

    With `moving_weights` (incremental PC: the active blocks' weights step at every inference step) a
    block's initial output stands in only until the block has been active once (its weights move then);
    the engine keeps the initial graph of exactly those blocks, so `local_graph` is not needed."""
    T, L = len(weighted), len(weighted[0]) if weighted else 0
    steps: list[StepPlan] = []
    touched: set[int] = set()
    stepped: set[int] = set()  # blocks whose weights have moved (moving_weights)
    last_seen = [-1] * (L + 1)
    for t in range(T):
        first = max(1, L - t)  # the wavefront: only layers l >= L - t carry error at step t
        active = [l for l in range(first, L + 1) if weighted[t][l - 1]]
        for l in active:
            last_seen[l] = t
        if moving_weights:
            reuse = tuple(l for l in active if pure_inference and l not in stepped and (l == 1 or l - 1 not in touched))
            stepped |= set(active)
        else:
            reuse = tuple(l for l in active if pure_inference and (l == 1 or (local_graph and l - 1 not in touched)))
        evaluate = tuple(l for l in active if l not in reuse)
        grad = sorted({k for l in active for k in (l - 1, l) if 1 <= k < L})
        steps.append(StepPlan(first, evaluate, reuse, tuple(l for l in active if l >= 2), tuple(grad),
                              tuple(k for k in grad if k not in touched), ()))
        touched |= set(grad)
    steps = [p._replace(final=tuple(l for l in p.active if last_seen[l] == t)) for t, p in enumerate(steps)]
    if momentum == 0.0:
        return steps
    # A step reads a latent layer only where it also updates it (its own error, or the input of an active
    # block), so a layer coasts from each gradient step to its next one, or to the end.
    settle: list[list[tuple[int, float, float]]] = [[] for _ in steps]
    for k in range(1, L):
        updated = [t for t, p in enumerate(steps) if k in p.grad]
        for t, needed in zip(updated, [*updated[1:], T][: len(updated)], strict=True):
            pending = range(t + 1, needed)
            if not pending:
                continue
            for i in range(offsets[k], offsets[k + 1]):
                total = sum(lrs[u][i] * coast_factor(j, momentum, nesterov) for j, u in enumerate(pending, start=1))
                settle[needed - 1].append((i, total, momentum ** len(pending)))
    return [p._replace(settle=tuple(s)) for p, s in zip(steps, settle, strict=True)]


def coast_factor(j: int, momentum: float, nesterov: bool) -> float:
    """How far the j-th step without gradient moves a state, in units of lr * its buffer then."""
    return momentum ** (j + 1) if nesterov else momentum**j
