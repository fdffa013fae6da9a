"""Weight-update rules: standard PC, the forward update (F), and the backprop baseline (BP).

Every rule returns a loss summed over layers and over the batch, divided by the batch size; the
learning-phase precision row weights each layer (all ones unless the schedule asks otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pccore.plugin import Component, LearningBatch, NoParams, hookimpl


def _weighted_layer_sum(b: LearningBatch, prediction: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """sum_l pi_l e_l(x^l_T, prediction(l)) / B over every layer l = 1..L."""
    total = sum(
        b.precision[l - 1] * b.layer_energy(l, b.states[l], prediction(l)) for l in range(1, len(b.blocks) + 1)
    )
    return total / b.batch_size


class StandardUpdate:
    """sum_l pi_l 1/2 ||x^l_T - f_l(x^{l-1}_T)||^2: each block predicts from the equilibrium states."""

    runs_inference = True
    initial_graph = "none"

    def __init__(self, params: NoParams):
        pass

    def loss(self, b: LearningBatch) -> torch.Tensor:
        return _weighted_layer_sum(b, lambda l: b.blocks[l - 1](b.states[l - 1]))


class ForwardUpdate:
    """sum_l pi_l 1/2 ||x^l_T - mu^l_0||^2: errors against the predictions of the initial forward pass,
    whose per-block graph (inputs detached) is reused instead of recomputed."""

    runs_inference = True
    initial_graph = "local"

    def __init__(self, params: NoParams):
        pass

    def loss(self, b: LearningBatch) -> torch.Tensor:
        return _weighted_layer_sum(b, lambda l: b.initial[l])


class Backprop:
    """No inference: the output loss of the forward pass against the target, backpropagated end to end."""

    runs_inference = False
    initial_graph = "global"

    def __init__(self, params: NoParams):
        pass

    def loss(self, b: LearningBatch) -> torch.Tensor:
        L = len(b.blocks)
        return b.layer_energy(L, b.target, b.initial[L]) / b.batch_size


@hookimpl
def pccore_register_update():
    return [
        Component("standard", StandardUpdate, NoParams, "standard PC: errors against f_l(x^{l-1}_T)", label=""),
        Component("forward", ForwardUpdate, NoParams, "forward update (F): errors against mu^l_0", label="F"),
        Component("backprop", Backprop, NoParams, "backprop baseline (BP): no inference, output loss",
                  label="BP"),
    ]
