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

from pccore.components import LearningBatch, NormalizationPolicy, Nudging, PrecisionTable, UpdateRule


class StepOutput(NamedTuple):
    """Detached results of one step: the weight loss, and per-layer energies ([L], summed over the batch
    and divided by the batch size the step averages over) of the last inference step (of the output loss
    alone without inference)."""

    loss: torch.Tensor
    energy: torch.Tensor


class InferenceTrace(NamedTuple):
    """What `PCEngine.infer` returns: states x^0..x^L after inference, the initial predictions mu_0 (index
    0 is the input), per-step energies [T, L] when recorded (zero below the wavefront), the energies of the
    last step [L], the update scale, and the one-hot target."""

    states: list[torch.Tensor]
    initial: list[torch.Tensor]
    energies: torch.Tensor | None
    final_energy: torch.Tensor | None
    scale: float
    target: torch.Tensor


class PCEngine:
    """Runs predictive coding training steps on `blocks` f_1..f_L."""

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
        pi = table.inference.to(self.device, self.dtype)
        # The wavefront: step t's energy holds the layers l >= L - t only.
        self._first_active = [max(1, self.L - t) for t in range(self.T)]
        self._pi = [list(row.unbind()) for row in pi]
        self._pi_learn = table.learning.to(self.device, self.dtype)
        self._lrs = [self._step_lrs(t, lr, decay_last_lr) for t in range(self.T)]
        self._buffers: list[torch.Tensor] = []

    def _step_lrs(self, t: int, lr: float, decay_last_lr: bool) -> list[float]:
        """State learning rate of each latent layer 1..L-1 at step t. The paper's appendix decays the last
        hidden layer's rate "as lr_x ** t"; with t counted from 0 that would be a rate of 1 at the first
        step, so the step is counted from 1: lr ** (t + 1), i.e. lr at the first step."""
        rates = [lr] * (self.L - 1)
        if decay_last_lr and rates:
            rates[-1] = lr ** (t + 1)
        return rates

    # --- pieces --------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def layer_energy(self, layer: int, x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Energy of layer `layer` (1-based), summed over the batch: 1/2 ||x - mu||^2, or the
        cross-entropy of the logits mu against x at the output when the output energy is "ce"."""
        mu = mu.to(x.dtype)
        if layer == self.L and self.output_energy == "ce":
            return -(x * F.log_softmax(mu, dim=-1)).sum()
        return 0.5 * (x - mu).square().sum()

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(self.dtype)

    def _initial_pass(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """mu_0 for every layer, with the graph the update rule asked for."""
        mode = self.update.initial_graph
        self.norm.set_phase(self.model, "forward" if mode == "none" else "learning")
        mu = [x0]
        grad = torch.enable_grad() if mode != "none" else torch.no_grad()
        with grad, self._autocast():
            for block in self.blocks:
                inp = mu[-1].detach() if mode == "local" else mu[-1]
                mu.append(block(inp))
        return mu

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
        latent = [mu.detach().to(self.dtype).clone().requires_grad_(True) for mu in initial[1:L]]
        states = [x0, *latent, out_node]
        energies = torch.zeros(self.T, L, device=self.device, dtype=self.dtype) if record else None
        if not self.update.runs_inference or self.T == 0 or L == 1:
            return InferenceTrace(states, initial, energies, None, scale, target)

        buffers = self._momentum_buffers(latent)
        self.norm.set_phase(self.model, "inference")
        # Inference needs gradients for the states only; frozen parameters keep autograd (and compiled
        # backward graphs, which would otherwise compute every input's gradient) from making weight grads.
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            final = self._inference_steps(states, latent, initial, buffers, energies)
        finally:
            for p in params:
                p.requires_grad_(True)
        return InferenceTrace(states, initial, energies, final, scale, target)

    def _inference_steps(self, states, latent, initial, buffers, energies) -> torch.Tensor:
        """The T steps, updating `latent` in place; returns the energies [L] of the last step."""
        L = self.L
        reuse_first = getattr(self.norm, "pure_inference", False)
        pi, m = self._pi, self.momentum
        with torch.enable_grad():
            for t in range(self.T):
                first = self._first_active[t]  # lowest layer whose energy enters E_t
                lo = max(1, first - 1)  # lowest state with a gradient: it feeds block `first`
                preds: list[torch.Tensor | None] = [None] * (L + 1)
                with self._autocast():
                    for l in range(first, L + 1):
                        if l == 1 and reuse_first:
                            preds[1] = initial[1].detach()  # x^0 is fixed, so f_1(x^0) is mu^1_0
                        else:
                            preds[l] = self.blocks[l - 1](states[l - 1])
                # Descent directions -dE_t/dx, one autograd call for all layers: the weighted error
                # pi_l (x^l - mu^l) of each layer above, pulled back through its block, minus the
                # layer's own weighted error.
                werr = [None] * first + [
                    self._weighted_error(l, states[l], preds[l], pi[t][l - 1]) for l in range(first, L + 1)
                ]
                pulled = range(max(first, 2), L + 1)  # blocks whose input is a latent state
                directions = list(torch.autograd.grad(
                    [preds[l] for l in pulled], latent[lo - 1 :], [werr[l].to(preds[l].dtype) for l in pulled]
                ))
                for l in range(first, L):
                    directions[l - lo].sub_(werr[l])
                if energies is not None:
                    energies[t, first - 1 :] = self._energies(states, preds, first)
                with torch.no_grad():
                    self._sgd(latent[lo - 1 :], directions, buffers[lo - 1 :], self._lrs[t][lo - 1 :], m)
        final = self._energies(states, preds, first)
        if first > 1:
            final = torch.cat([final.new_zeros(first - 1), final])
        return final

    @torch.no_grad()
    def _weighted_error(self, layer: int, x: torch.Tensor, pred: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """-d(weight * e_layer)/d(prediction) in the states' dtype: weight * (x - mu) for squared error,
        weight * (x - softmax(mu) * sum(x)) for cross-entropy at the output."""
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
        states = [s.detach() for s in trace.states]
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
