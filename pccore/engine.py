"""The predictive coding engine: one training step (initial forward pass, inference, learning).

The engine sees only resolved components: a list of blocks, a precision table, an update rule, a
normalisation policy and a nudging object. Nothing in `train_step` synchronises with the host, calls
pluggy, or hard-codes a device: the device and dtype are those of the blocks' parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pccore.components import (
    InferenceSettings,
    LearningBatch,
    NormalizationPolicy,
    Nudging,
    PrecisionTable,
    State,
    UpdateRule,
)


def parts(state: State) -> tuple[torch.Tensor, ...]:
    """The tensors of a layer's state: the tuple itself, or a one-tensor tuple."""
    return state if isinstance(state, tuple) else (state,)


def _map(fn, state: State) -> State:
    """`fn` applied to every tensor of a state, keeping its structure."""
    return tuple(fn(p) for p in state) if isinstance(state, tuple) else fn(state)


def _unaliased(directions: Sequence[torch.Tensor], seeds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
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


class StepOutput(NamedTuple):
    """Detached results of one step: the weight loss, and per-layer energies ([L], summed over the batch
    and divided by the batch size the step averages over) of the last inference step (of the output loss
    alone without inference)."""

    loss: torch.Tensor
    energy: torch.Tensor


class InferenceTrace(NamedTuple):
    """What `PCEngine.infer` returns: states x^0..x^L after inference, the initial predictions mu_0 (index
    0 is the input), per-step energies [T, L] when recorded (zero below the wavefront), the energies of the
    last step [L], the update scale, and the one-hot target. A multi-part layer's state is a tuple; when
    energies are recorded for a model with such layers, `part_energies` [T, L, P] holds each part's weighted
    energy (P the most parts of any layer; a single-tensor layer's energy is part 0)."""

    states: list[State]
    initial: list[State]
    energies: torch.Tensor | None
    final_energy: torch.Tensor | None
    scale: float
    target: torch.Tensor
    part_energies: torch.Tensor | None = None


class PCEngine:
    """Runs predictive coding training steps on `blocks` f_1..f_L.

    Internally the latent states x^1..x^{L-1} are one flat list of tensors, the parts of each layer in
    order (one per single-tensor layer), so the autograd call and the SGD step of an inference step treat
    multi-part layers exactly like single-tensor ones.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        table: PrecisionTable,
        update: UpdateRule,
        norm: NormalizationPolicy,
        nudging: Nudging,
        *,
        steps: int,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = True,
        decay_last_lr: bool = False,
        output_energy: str = "se",
        num_classes: int,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.model = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        self.blocks = list(self.model)
        self.L = len(self.blocks)
        if table.layers != self.L or table.steps != steps:
            raise ValueError(
                f"precision table is {table.steps}x{table.layers}, the model needs {steps}x{self.L}"
            )
        self.T = steps
        self.update = update
        self.norm = norm
        self.nudging = nudging
        self.momentum = momentum
        self.nesterov = nesterov
        self.output_energy = output_energy
        self.num_classes = num_classes
        self.autocast_dtype = autocast_dtype
        ref = next(self.model.parameters())
        self.device, self.dtype = ref.device, ref.dtype
        self.table = table
        self.settings = InferenceSettings(lr=lr, momentum=momentum, steps=steps)
        # part_weights[l]: None for a single-tensor layer l (1-based; index 0 is the input), else the
        # energy weight of each part of its state, as its block declares.
        self.part_weights: list[tuple[float, ...] | None] = [None] + [
            self._declared_weights(l) for l in range(1, self.L + 1)
        ]
        if self.part_weights[self.L] is not None:
            raise ValueError("the last block must predict one tensor (the logits), not a tuple of parts")
        counts = [1 if w is None else len(w) for w in self.part_weights]
        # The flat latent list: layer l's parts are latent[offset[l] : offset[l + 1]] (l = 1..L-1).
        self._offset = [0, 0]
        for l in range(1, self.L):
            self._offset.append(self._offset[-1] + counts[l])
        pi = table.inference.to(self.device, self.dtype)
        # The wavefront: step t's energy holds the layers l >= L - t only.
        self._first_active = [max(1, self.L - t) for t in range(self.T)]
        self._pi = [list(row.unbind()) for row in pi]
        self._pi_learn = table.learning.to(self.device, self.dtype)
        self._lrs = [self._flat_lrs(self._step_lrs(t, lr, decay_last_lr)) for t in range(self.T)]
        self._buffers: list[torch.Tensor] = []

    def _declared_weights(self, l: int) -> tuple[float, ...] | None:
        declare = getattr(self.blocks[l - 1], "part_weights", None)
        if declare is None:
            return None
        weights = tuple(float(w) for w in declare(self.settings))
        if len(weights) < 2:
            raise ValueError(f"block {l} declares {len(weights)} part weight(s); a multi-part layer has >= 2")
        return weights

    def _step_lrs(self, t: int, lr: float, decay_last_lr: bool) -> list[float]:
        """State learning rate of each latent layer 1..L-1 at step t. The paper's appendix decays the last
        hidden layer's rate "as lr_x ** t"; with t counted from 0 that would be a rate of 1 at the first
        step, so the step is counted from 1: lr ** (t + 1), i.e. lr at the first step."""
        rates = [lr] * (self.L - 1)
        if decay_last_lr and rates:
            rates[-1] = lr ** (t + 1)
        return rates

    def _flat_lrs(self, rates: list[float]) -> list[float]:
        """Per-layer rates repeated for each part of the layer, in the flat latent order."""
        return [rates[l - 1] for l in range(1, self.L) for _ in range(self._offset[l + 1] - self._offset[l])]

    # --- pieces --------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def layer_energy(self, layer: int, x: State, mu: State) -> torch.Tensor:
        """Energy of layer `layer` (1-based), summed over the batch: 1/2 ||x - mu||^2, or the
        cross-entropy of the logits mu against x at the output when the output energy is "ce". A
        multi-part layer sums its parts' squared errors, each times the part's weight."""
        if self.part_weights[layer] is not None:
            return sum(self.part_energies(layer, x, mu))
        mu = mu.to(x.dtype)
        if layer == self.L and self.output_energy == "ce":
            return -(x * F.log_softmax(mu, dim=-1)).sum()
        return 0.5 * (x - mu).square().sum()

    def part_energies(self, layer: int, x: State, mu: State) -> list[torch.Tensor]:
        """Each part's energy times its weight, summed over the batch; a single-tensor layer's energy is
        its one part."""
        weights = self.part_weights[layer]
        if weights is None:
            return [self.layer_energy(layer, x, mu)]
        return [w * 0.5 * (xp - mp.to(xp.dtype)).square().sum() for w, xp, mp in zip(weights, x, mu, strict=True)]

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(self.dtype)

    def _initial_pass(self, x0: torch.Tensor) -> list[State]:
        """mu_0 for every layer, with the graph the update rule asked for."""
        mode = self.update.initial_graph
        self.norm.set_phase(self.model, "forward" if mode == "none" else "learning")
        mu: list[State] = [x0]
        grad = torch.enable_grad() if mode != "none" else torch.no_grad()
        with grad, self._autocast():
            for l, block in enumerate(self.blocks, start=1):
                inp = _map(torch.Tensor.detach, mu[-1]) if mode == "local" else mu[-1]
                out = block(inp)
                self._check_structure(l, out)
                mu.append(out)
        return mu

    def _check_structure(self, l: int, prediction: State) -> None:
        """A block must predict the structure its layer declares (one tensor, or one tensor per weight)."""
        weights = self.part_weights[l]
        if weights is None and isinstance(prediction, torch.Tensor):
            return
        if weights is not None and isinstance(prediction, tuple) and len(prediction) == len(weights):
            return
        got = f"a tuple of {len(prediction)}" if isinstance(prediction, tuple) else type(prediction).__name__
        wanted = "one tensor" if weights is None else f"a tuple of {len(weights)} tensors (its part_weights)"
        raise TypeError(f"block {l} returned {got}, but its layer needs {wanted}")

    def _momentum_buffers(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Zeroed momentum buffers for the states, reused from the last batch when the shapes agree."""
        if [(b.shape, b.dtype) for b in self._buffers] != [(s.shape, s.dtype) for s in states]:
            self._buffers = [torch.zeros_like(s) for s in states]
        else:
            torch._foreach_zero_(self._buffers)
        return self._buffers

    # --- inference -----------------------------------------------------------------------------

    def infer(self, x0: torch.Tensor, y: torch.Tensor, *, record: bool = False) -> InferenceTrace:
        """Initial forward pass, output node from the nudging method, then T inference steps."""
        initial = self._initial_pass(x0)
        L = self.L
        target = self.one_hot(y)
        out_node, scale = self.nudging.output_node(initial[L].detach().to(self.dtype), target)
        layers = [
            _map(lambda mu: mu.detach().to(self.dtype).clone().requires_grad_(True), mu) for mu in initial[1:L]
        ]
        latent = [p for state in layers for p in parts(state)]
        states = [x0, *layers, out_node]
        energies = torch.zeros(self.T, L, device=self.device, dtype=self.dtype) if record else None
        most = max(1 if w is None else len(w) for w in self.part_weights)
        part_energies = (
            torch.zeros(self.T, L, most, device=self.device, dtype=self.dtype) if record and most > 1 else None
        )
        if not self.update.runs_inference or self.T == 0 or L == 1:
            return InferenceTrace(states, initial, energies, None, scale, target, part_energies)

        buffers = self._momentum_buffers(latent)
        self.norm.set_phase(self.model, "inference")
        # Inference needs gradients for the states only; frozen parameters keep autograd (and compiled
        # backward graphs, which would otherwise compute every input's gradient) from making weight grads.
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            final = self._inference_steps(states, latent, initial, buffers, energies, part_energies)
        finally:
            for p in params:
                p.requires_grad_(True)
        return InferenceTrace(states, initial, energies, final, scale, target, part_energies)

    def _inference_steps(self, states, latent, initial, buffers, energies, part_energies) -> torch.Tensor:
        """The T steps, updating `latent` (and so `states`) in place; returns the energies [L] of the last
        step."""
        L, offset = self.L, self._offset
        reuse_first = getattr(self.norm, "pure_inference", False)
        pi, m = self._pi, self.momentum
        with torch.enable_grad():
            for t in range(self.T):
                first = self._first_active[t]  # lowest layer whose energy enters E_t
                lo = offset[max(1, first - 1)]  # first flat state with a gradient: it feeds block `first`
                preds: list[State | None] = [None] * (L + 1)
                with self._autocast():
                    for l in range(first, L + 1):
                        if l == 1 and reuse_first:
                            preds[1] = _map(torch.Tensor.detach, initial[1])  # x^0 is fixed: f_1(x^0) = mu^1_0
                        else:
                            preds[l] = self.blocks[l - 1](states[l - 1])
                # Descent directions -dE_t/dx, one autograd call for all layers: the weighted error
                # pi_l (x^l - mu^l) of each layer above, pulled back through its block, minus the
                # layer's own weighted error.
                werr: list[State | None] = [None] * first + [
                    self._weighted_error(l, states[l], preds[l], pi[t][l - 1]) for l in range(first, L + 1)
                ]
                outputs, seeds = [], []
                for l in range(max(first, 2), L + 1):  # blocks whose input is a latent state
                    for mu, e in zip(parts(preds[l]), parts(werr[l]), strict=True):
                        outputs.append(mu)
                        seeds.append(e.to(mu.dtype))
                directions = _unaliased(torch.autograd.grad(
                    outputs, latent[lo:], seeds, allow_unused=True, materialize_grads=True
                ), seeds)
                for l in range(first, L):
                    for i, e in enumerate(parts(werr[l]), start=offset[l] - lo):
                        directions[i].sub_(e)
                if energies is not None:
                    energies[t, first - 1 :] = self._energies(states, preds, first)
                if part_energies is not None:
                    with torch.no_grad():
                        for l in range(first, L + 1):
                            for p, e in enumerate(self.part_energies(l, states[l], preds[l])):
                                part_energies[t, l - 1, p] = e
                with torch.no_grad():
                    self._sgd(latent[lo:], directions, buffers[lo:], self._lrs[t][lo:], m)
        final = self._energies(states, preds, first)
        if first > 1:
            final = torch.cat([final.new_zeros(first - 1), final])
        return final

    @torch.no_grad()
    def _weighted_error(self, layer: int, x: State, pred: State, weight: torch.Tensor) -> State:
        """-d(weight * e_layer)/d(prediction) in the states' dtype: weight * (x - mu) for squared error
        (times the part's weight for each part of a multi-part layer), weight * (x - softmax(mu) * sum(x))
        for cross-entropy at the output."""
        weights = self.part_weights[layer]
        if weights is not None:
            return tuple(
                torch.sub(xp, mp.to(xp.dtype)).mul_(weight * w) for w, xp, mp in zip(weights, x, pred, strict=True)
            )
        if layer == self.L and self.output_energy == "ce":
            p = torch.softmax(pred.to(x.dtype), dim=-1)
            return (x - p * x.sum(dim=-1, keepdim=True)).mul_(weight)
        return torch.sub(x, pred.to(x.dtype)).mul_(weight)

    @torch.no_grad()
    def _energies(self, states, preds, first: int) -> torch.Tensor:
        """Energies e_first..e_L (summed over the batch) of the given predictions."""
        return torch.stack([self.layer_energy(l, states[l], preds[l]) for l in range(first, self.L + 1)])

    def _sgd(self, xs, directions, bufs, lrs: list[float], m: float) -> None:
        """One SGD step with (Nesterov) momentum in PyTorch's convention (b = m b + g; step g + m b, or b),
        written for descent directions d = -g so that every operation is in place."""
        if m != 0.0:
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, directions)
            if self.nesterov:
                torch._foreach_add_(directions, bufs, alpha=m)
            else:
                directions = bufs
        if all(r == lrs[0] for r in lrs):
            torch._foreach_add_(xs, directions, alpha=lrs[0])
        else:
            for x, d, r in zip(xs, directions, lrs, strict=True):
                x.add_(d, alpha=r)

    # --- training ------------------------------------------------------------------------------

    def learning_loss(self, trace: InferenceTrace, batch_size: int | None = None) -> torch.Tensor:
        """The update rule's loss (scaled by the nudging factor) for a finished inference trace, averaged
        over `batch_size` samples (default: the trace's own; data-parallel training gives the global batch,
        so that each rank's loss is its share of the global mean)."""
        if self.update.initial_graph == "none":
            self.norm.set_phase(self.model, "learning")
        states = [_map(torch.Tensor.detach, s) for s in trace.states]
        batch = LearningBatch(
            blocks=self.blocks,
            states=states,
            initial=trace.initial,
            precision=self._pi_learn,
            target=trace.target,
            layer_energy=self.layer_energy,
            batch_size=states[0].shape[0] if batch_size is None else batch_size,
        )
        with self._autocast():
            loss = self.update.loss(batch)
        return loss * trace.scale if trace.scale != 1.0 else loss

    def train_step(self, x0: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> StepOutput:
        """One batch: inference, then the weight gradients into `.grad` (the caller steps the optimizer).

        `batch_size` is the number of samples the loss and the energies are averaged over: by default the
        batch's own; in data-parallel training the global batch this shard is part of, so that the ranks'
        losses, energies and gradients add up to those of the whole batch."""
        if not self.model.training:
            self.model.train()
        total = x0.shape[0] if batch_size is None else batch_size
        trace = self.infer(x0, y)
        loss = self.learning_loss(trace, total)
        for p in self.model.parameters():
            p.grad = None
        loss.backward()
        if trace.final_energy is not None:
            energy = trace.final_energy
        else:
            energy = torch.zeros(self.L, device=self.device, dtype=self.dtype)
            energy[-1] = self.layer_energy(self.L, trace.states[-1], trace.initial[-1].detach())
        return StepOutput(loss.detach(), energy / total)

    @torch.no_grad()
    def predict(self, x0: torch.Tensor) -> torch.Tensor:
        """Logits of the feed-forward pass in evaluation mode (BatchNorm uses running statistics)."""
        was_training = self.model.training
        self.model.eval()
        with self._autocast():
            h = x0
            for block in self.blocks:
                h = block(h)
        self.model.train(was_training)
        return h
