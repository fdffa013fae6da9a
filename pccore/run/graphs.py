"""Training steps replayed as CUDA graphs (`run.cuda_graphs = true`).

A small model spends most of a predictive coding step launching a few hundred short kernels. Capturing the
whole step (initial pass, T inference steps, learning loss, backward and the optimizer step) once as a CUDA
graph and replaying it for every batch launches it all at once. What a replay cannot do is run Python, so
everything that changes from step to step lives in device tensors the graph reads: the batch (copied into
static input buffers), the learning rate (`make_optimizer(..., for_graphs=True)`, written by the schedule
between replays) and the nudging method's per-batch draws (`Nudging.begin_batch`, called before each
replay). BatchNorm Freezing needs nothing: which statistics a pass updates is decided when the step is
captured and is the same for every batch.

Only batches of the captured shape are replayed. The last, smaller batch of an epoch runs eagerly on the
same weights and optimizer: padding it to the full size and masking the padding out of the energies would
not be exact, because BatchNorm's batch statistics would see the padding.

`Graphs` is the part that talks to CUDA; the tests run the same logic with a stand-in that records the
captured function and calls it again on replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pccore.core.engine import PCEngine, StepOutput
from pccore.core.errors import UsageError

WARMUP_STEPS = 3
"""Eager steps (on a side stream) before the capture: cuDNN picks its algorithms and the optimizer makes
its state there, so the capture records steady-state kernels and allocations."""


class CudaGraphs:
    """torch.cuda's graph API: a side stream for warm-up and capture, a private memory pool."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def warm_up(self, step: Callable[[], Any]) -> Any:
        """Run `step` eagerly on the side stream (as the capture will) and wait for it."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            out = step()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return out

    def capture(self, step: Callable[[], Any]) -> tuple[Any, Any]:
        """Record `step` into a new graph; (graph, the step's outputs, which every replay overwrites)."""
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph, stream=self.stream):
            out = step()
        return graph, out

    def replay(self, graph: Any) -> None:
        graph.replay()


class CapturedStep:
    """`engine.train_step` followed by `optimizer.step()`, replayed as a CUDA graph for full batches.

    The first `WARMUP_STEPS` batches of the captured shape run eagerly (they are real training steps); the
    next one is captured and replayed, and so is every later batch of that shape. Any other shape runs
    eagerly. Each call returns the step's loss and energies as fresh tensors (a replay overwrites the
    graph's own outputs)."""

    def __init__(self, engine: PCEngine, optimizer: torch.optim.Optimizer, *, graphs: Any = None,
                 warmup_steps: int = WARMUP_STEPS):
        self.engine = engine
        self.optimizer = optimizer
        self.graphs = graphs if graphs is not None else CudaGraphs(engine.device)
        self.warmup_steps = warmup_steps
        self.shape: tuple | None = None  # (x shape, y shape) of the steps to capture: the first batch's
        self.warm = 0
        self.graph: Any = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None
        self.outputs: StepOutput | None = None
        self.replays = 0
        self.eager_steps = 0

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        out = self.engine.device_step(x, y)
        self.optimizer.step()
        return out

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        shape = (tuple(x.shape), tuple(y.shape))
        if self.shape is None:
            self.shape = shape
        self.engine.prepare_batch()  # host-side draws, before any replay
        if shape != self.shape:
            self.eager_steps += 1
            return self._step(x, y)
        if self.graph is None and self.warm < self.warmup_steps:
            self.warm += 1
            self.eager_steps += 1
            return self.graphs.warm_up(lambda: self._step(x, y))
        if self.graph is None:
            self.static = (x.clone(), y.clone())
            self.graph, self.outputs = self.graphs.capture(lambda: self._step(*self.static))
        else:
            self.static[0].copy_(x)
            self.static[1].copy_(y)
        self.graphs.replay(self.graph)
        self.replays += 1
        return StepOutput(self.outputs.loss.clone(), self.outputs.energy.clone())


def check_cuda_graphs(recipe: Any, device: torch.device, world_size: int = 1, registry: Any = None) -> None:
    """Refuse `run.cuda_graphs` where it cannot work, before anything is built or written (with `registry`,
    also an inference algorithm that steps the weights during inference)."""
    if not getattr(recipe.run, "cuda_graphs", False):
        return
    if device.type != "cuda":
        raise UsageError(
            f"run.cuda_graphs = true replays the training step as a CUDA graph and needs a CUDA device, but "
            f"the run is on {device}; set run.cuda_graphs = false (or --set run.cuda_graphs=false) to train "
            "eagerly on this device"
        )
    if recipe.run.compile:
        raise UsageError(
            "run.cuda_graphs and run.compile cannot be combined: the captured step replays eager kernels; "
            "choose one (run.compile = false keeps the graphs)"
        )
    if world_size > 1:
        raise UsageError(
            f"run.cuda_graphs = true captures one process's whole step, but this run is data-parallel over "
            f"{world_size} processes, whose gradient all-reduce happens between the backward pass and the "
            "optimizer step; set run.cuda_graphs = false to train data-parallel eagerly"
        )
    if registry is not None:
        algorithm = registry.build("inference", recipe.inference.name, recipe.inference.params)
        if int(algorithm.weight_steps(recipe.inference.steps)) != 1:
            raise UsageError(
                f"run.cuda_graphs = true captures one weight step per batch, but inference "
                f"\"{recipe.inference.name}\" takes {algorithm.weight_steps(recipe.inference.steps)} per batch, each "
                "deciding on the host which weights have a gradient; set run.cuda_graphs = false to train it eagerly"
            )
