"""Inference algorithms: state-based PC (the engine's own inference) and incremental PC (iPC).

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

from typing import Literal

import attrs

from pccore.plugin import Component, NoParams, UsageError, hookimpl


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


@hookimpl
def pccore_register_inference():
    return [
        Component("states", StateBased, NoParams, "state-based PC: T steps on the states, then one weight step",
                  label=""),
        Component("incremental", Incremental, IncrementalParams,
                  "incremental PC (iPC): a stoppable AdamW weight step at every inference step", label="iPC"),
    ]
