"""Inference algorithms: state-based PC (the engine's own inference), incremental PC (iPC) and error
optimisation (ePC).

Incremental PC (Salvatori et al., ICLR 2024; BEYOND.md A) takes a weight step at every inference step,
from the same gradient as the states': the step's energy E_t (its precision row, wavefront included)
at the current states, averaged over the batch. The weights' optimizer is stoppable: a tensor whose
gradient is exactly zero (a block outside the wavefront, or at zero precision) takes no step and keeps its
moments and step count. The learning-rate schedule counts T steps per batch.

Two variants, as the paper's published code trains them: `plain` (iPC.py: T joint steps) and `batchnorm`
(iPC_BN.py: T - 1 joint steps, then one weight-only step of the update rule at the settled states with
the learning-phase precision, the pass that updates BatchNorm's running statistics; with the standard
update and constant precision that is the unweighted energy of every layer).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import attrs
import torch

from pccore.plugin import Component, InferenceTrace, NoParams, UsageError, hookimpl


class StateBased:
    """State-based PC: T steps of SGD on the states, then the update rule's weight step."""

    def __init__(self, params: NoParams) -> None:
        pass

    def weight_steps(self, steps: int) -> int:
        return 1

    def infer(self, engine, x0, y, *, record, batch_size, weight_step):
        return engine.infer(x0, y, record=record)


@attrs.frozen
class IncrementalParams:
    """`variant`: "plain" (T joint steps) or "batchnorm" (T - 1 joint steps, then one weight-only step)."""

    variant: Literal["plain", "batchnorm"] = "plain"


class Incremental:
    """Incremental PC: the weights take a stoppable AdamW step at every inference step."""

    def __init__(self, params: IncrementalParams) -> None:
        self.variant = params.variant

    def weight_steps(self, steps: int) -> int:
        return steps

    def check(self, engine) -> None:
        if not engine.update.runs_inference:
            raise UsageError(
                "inference \"incremental\" steps the weights at every inference step, but the update rule runs no "
                "inference (backprop); choose update \"standard\" or \"forward\", or inference \"states\""
            )
        if self.variant == "batchnorm" and engine.T < 1:
            raise UsageError('inference "incremental" with variant = "batchnorm" needs inference.steps >= 1')

    def infer(self, engine, x0, y, *, record, batch_size, weight_step):
        if weight_step is None:
            raise UsageError(
                'inference "incremental" steps the weights during inference: call '
                "engine.train_step(x, y, weight_step=...) with the step of your optimizer (for example "
                "pccore.core.optim.WeightStepper(optimizer))"
            )
        joint = engine.T if self.variant == "plain" else engine.T - 1
        trace = engine.infer(x0, y, record=record, weight_step=weight_step, batch_size=batch_size, steps=joint)
        return trace._replace(learn=self.variant == "batchnorm")


class ErrorBased:
    """Error optimisation (ePC; Goemaere et al., ICML 2026; BEYOND.md B): the errors are the variables.

    States are built from the errors by a forward pass, s^0 = x, s^l = f_l(s^{l-1}) + e^l (l = 1..L-1),
    and the output node (from the nudging method) is compared with y_hat = f_L(s^{L-1}). The errors start
    at zero (so the first states are the feed-forward pass) and take T steps of SGD (the recipe's
    inference lr, momentum and nesterov; the reference uses no momentum) on
    E(e) = sum_l 1/2 ||e^l||^2 + loss(y_hat, x^L), summed over the batch, the gradient taken through the
    whole forward graph by autograd, every error at once; the weights are frozen meanwhile. The settled
    states, rebuilt from the settled errors and detached, go to the update rule (standard), whose loss
    there is the local energy sum_l 1/2 ||s^l - f_l(s^{l-1})||^2 + loss(f_L(s^{L-1}), x^L): the value of
    E(e), local gradients. The trace's scale divides it by energy_scale = min(1, lr * T), the reference's
    guard against the tiny errors of few small steps (times the nudging method's own factor).

    Every pass of inference (T + 1 forward passes: one per step and the rebuild) runs in the
    normalisation policy's "inference" phase: BatchNorm Freezing normalises with the batch's statistics
    and leaves the running statistics alone (the learning pass updates them once per batch); plain
    BatchNorm updates them at each of those passes, as it does at every state-based inference step.
    """

    def __init__(self, params: NoParams) -> None:
        pass

    def weight_steps(self, steps: int) -> int:
        return 1

    def check(self, engine) -> None:
        name = 'inference "errors" (ePC)'
        if not engine.update.runs_inference:
            raise UsageError(
                f"{name} settles the errors before a weight step, but the update rule runs no inference "
                '(backprop); for the backprop baseline choose inference "states" with update "backprop"'
            )
        if engine.update.initial_graph != "none":
            raise UsageError(
                f"{name} learns from the local energy at the states rebuilt from the settled errors, which is "
                'the standard update rule\'s loss; the forward update (errors against the initial forward '
                'predictions) has no counterpart in ePC: choose update "standard"'
            )
        if any(w is not None for w in engine.part_weights):
            raise UsageError(
                f"{name} is defined for layers whose state is one tensor; this model has multi-part layers "
                "(a ResNet with auxiliary neurons). Auxiliary neurons relay the error one layer per "
                "state-based step, while ePC's errors reach every layer at once through the forward graph: "
                "build the ResNet with aux = false (its skips then sit inside the blocks)"
            )
        table = engine.table
        if not (bool(torch.all(table.inference == 1.0)) and bool(torch.all(table.learning == 1.0))):
            raise UsageError(
                f"{name} weights every error term 1, as the reference does; precision schedules that vary "
                "with the step or the layer (spiking, decaying, ...) shape a state-based wavefront that ePC, "
                'whose errors all move at once, does not have: choose precision "constant" (learning row '
                '"ones")'
            )
        if engine.decay_last_lr:
            raise UsageError(f"{name} takes one learning rate for every error: set inference.decay_last_lr = false")
        if engine.T < 1:
            raise UsageError(
                f"{name} needs inference.steps >= 1: the weight loss is divided by min(1, lr * steps)"
            )

    def infer(self, engine, x0, y, *, record, batch_size, weight_step):
        L, T = engine.L, engine.T
        lr, momentum, nesterov = engine.settings.lr, engine.momentum, engine.nesterov
        target = engine.one_hot(y)
        params = [p for p in engine.model.parameters() if p.requires_grad]
        for p in params:  # weights frozen: autograd makes gradients for the errors only
            p.requires_grad_(False)
        energies = torch.zeros(T, L, device=engine.device, dtype=engine.dtype) if record else None
        engine.norm.set_phase(engine.model, "inference")
        errors: list[torch.Tensor] = []
        buffers: list[torch.Tensor] = []
        out_node = scale = initial = None
        try:
            with torch.enable_grad():
                for t in range(T):
                    states, y_hat = self._forward(engine, x0, errors)
                    if out_node is None:  # step 0: zero errors, the feed-forward pass
                        initial = [x0, *(s.detach() for s in states[1:]), y_hat.detach()]
                        out_node, scale = engine.nudging.output_node(y_hat.detach().to(engine.dtype), target)
                    terms = self._terms(engine, errors, out_node, y_hat)
                    if energies is not None:
                        energies[t] = torch.stack([e.detach() for e in terms])
                    grads = torch.autograd.grad(sum(terms), errors) if errors else []
                    with torch.no_grad():
                        self._sgd(errors, grads, buffers, t == 0, lr, momentum, nesterov)
            with torch.no_grad():  # the states at the settled errors
                states, y_hat = self._forward(engine, x0, errors)
                if out_node is None:
                    initial = [x0, *states[1:], y_hat]
                    out_node, scale = engine.nudging.output_node(y_hat.to(engine.dtype), target)
                final = torch.stack(self._terms(engine, errors, out_node, y_hat))
        finally:
            for p in params:
                p.requires_grad_(True)
        settled = [x0, *(s.detach() for s in states[1:]), out_node]
        energy_scale = min(1.0, lr * T)
        return InferenceTrace(settled, initial, energies, final, scale / energy_scale, target)

    @staticmethod
    def _autocast(engine):
        if engine.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(engine.device.type, dtype=engine.autocast_dtype, cache_enabled=False)

    def _forward(self, engine, x0, errors: list[torch.Tensor]):
        """s^l = f_l(s^{l-1}) + e^l for l = 1..L-1 and y_hat = f_L(s^{L-1}); an empty `errors` is filled
        with zero errors (requiring grad) shaped like the predictions."""
        make = not errors
        states = [x0]
        with self._autocast(engine):
            for l, block in enumerate(engine.blocks[:-1], start=1):
                mu = block(states[-1]).to(engine.dtype)
                if isinstance(mu, tuple):
                    raise TypeError(f"block {l} predicts a tuple of parts; ePC needs single-tensor layers")
                if make:
                    errors.append(torch.zeros_like(mu).requires_grad_(torch.is_grad_enabled()))
                states.append(mu + errors[l - 1])
            y_hat = engine.blocks[-1](states[-1])
        return states, y_hat

    @staticmethod
    def _terms(engine, errors, out_node, y_hat) -> list[torch.Tensor]:
        """The energy's terms, one per layer: 1/2 ||e^l||^2 (l < L), then the output loss."""
        return [0.5 * e.square().sum() for e in errors] + [engine.layer_energy(engine.L, out_node, y_hat)]

    @staticmethod
    def _sgd(errors, grads, buffers, first: bool, lr: float, momentum: float, nesterov: bool) -> None:
        """One SGD step in PyTorch's convention: b = g at the first step, then b = m b + g; the step is
        g + m b (Nesterov) or b."""
        for i, (e, g) in enumerate(zip(errors, grads, strict=True)):
            if momentum != 0.0:
                if first:
                    buffers.append(g.clone())
                else:
                    buffers[i].mul_(momentum).add_(g)
                g = g + momentum * buffers[i] if nesterov else buffers[i]
            e.sub_(lr * g)


@hookimpl
def pccore_register_inference():
    return [
        Component("states", StateBased, NoParams, "state-based PC: T steps on the states, then one weight step",
                  label=""),
        Component("incremental", Incremental, IncrementalParams,
                  "incremental PC (iPC): a stoppable AdamW weight step at every inference step", label="iPC"),
        Component("errors", ErrorBased, NoParams,
                  "error optimisation (ePC): T SGD steps on the errors through the whole forward graph, then "
                  "the local energy's weight step", label="ePC"),
    ]
