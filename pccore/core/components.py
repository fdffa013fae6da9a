"""What a plugin provides: component records and the interface each kind of component implements.

A plugin's registration hook returns `Component` records. The core builds a component by calling
`record.factory(params)`, where `params` is an instance of `record.params` (an attrs class) filled from
the recipe. The object the factory returns implements the protocol of its kind, listed below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import attrs
import torch
from torch import nn

if TYPE_CHECKING:
    from pccore.core.engine import InferenceTrace, PCEngine

KINDS: tuple[str, ...] = (
    "precision", "update", "normalization", "nudging", "inference", "architecture", "dataset",
)

Phase = Literal["forward", "inference", "learning"]
"""Which pass a model is in: the initial forward pass, an inference step, or the learning phase."""

State = torch.Tensor | tuple[torch.Tensor, ...]
"""A layer's state (and its prediction): one tensor, or a tuple of tensors (the parts of a multi-part
layer, e.g. a ResNet layer's main and auxiliary neurons)."""


@attrs.define(frozen=True)
class NoParams:
    """The parameter class of a component that takes no parameters."""


@attrs.define(frozen=True)
class Component:
    """One named component: `factory(params)` builds it, `params` is the attrs class of its parameters.

    `label` is how `pccore report` names the component in tables: a method's name joins the labels of its
    precision, update rule and nudging with "+" ("S+F"), a column's the labels of its dataset, architecture
    and normalisation ("CIFAR-10 VGG5BF"). An empty label leaves the component out of a name (the plain
    default, such as constant precision); None uses the component's `name`.
    """

    name: str
    factory: Callable[[Any], Any]
    params: type = NoParams
    description: str = ""
    label: str | None = None


# --- precision -----------------------------------------------------------------------------------


@attrs.define(frozen=True)
class PrecisionTable:
    """`inference[t, l-1]` weights layer l's energy at inference step t; `learning[l-1]` in the weight step."""

    inference: torch.Tensor
    learning: torch.Tensor

    @property
    def steps(self) -> int:
        return int(self.inference.shape[0])

    @property
    def layers(self) -> int:
        return int(self.inference.shape[1])


@runtime_checkable
class PrecisionSchedule(Protocol):
    def table(self, layers: int, steps: int) -> PrecisionTable:
        """The full table for `layers` blocks and `steps` inference steps (float64 tensors)."""
        ...


# --- normalisation -------------------------------------------------------------------------------


@runtime_checkable
class NormalizationPolicy(Protocol):
    """How the normalisation layers of the blocks behave in each pass.

    Three optional members (see OPTIONAL_MEMBERS):

    - `pure_inference = True`: during inference a block's output then depends on its input alone (no
      statistics are updated), so the engine reuses f_1(x^0) = mu^1_0 instead of recomputing it.
    - `prepare(model: nn.Module) -> None`: called once with the blocks (an `nn.ModuleList`) before training
      and before compilation, so the policy can take control of normalisation layers it did not make with
      `layer` (blocks written by hand hold plain `nn.BatchNorm2d`s). It adapts them in place, keeping the
      module objects and their parameters (an optimizer made beforehand stays valid), or raises
      ValueError when the blocks hold layers the policy cannot control.
    - `shared_buffers(model: nn.Module) -> list[Tensor]`: in a data-parallel run, the buffers the policy's
      layers update from each process's own share of the batch (running statistics), which the core
      averages across processes after every training step so that every process holds the same model.
      Return [] (or omit the member) when no such state exists or the policy keeps it equal itself.
    """

    def layer(self, num_features: int, spatial_dims: int) -> nn.Module | None:
        """The normalisation layer an architecture places after a conv (spatial_dims=2) or linear
        (spatial_dims=0) layer, or None for no layer."""
        ...

    def set_phase(self, model: nn.Module, phase: Phase) -> None:
        """Called before each pass so the policy can change how its layers behave in that pass."""
        ...


# --- update rule ---------------------------------------------------------------------------------


@attrs.define(frozen=True)
class LearningBatch:
    """What an update rule sees at learning time. Lists are indexed by layer, 0..L.

    `states[l]` is x^l after inference (x^0 the input, x^L the output node), detached.
    `initial[l]` is mu^l_0 from the initial forward pass (initial[0] is the input); it carries the
    graph the rule asked for with `initial_graph`. A multi-part layer's state and prediction are tuples;
    `layer_energy(l, x, mu)` takes either form and weights the parts as the layer's block declares.
    `batch_size` is the number of samples the loss averages over: the batch's own size, or in data-parallel
    training the global batch that `states` is one rank's share of (divide by it, not by len(states[0])).
    """

    blocks: Sequence[nn.Module]
    states: Sequence[State]
    initial: Sequence[State]
    precision: torch.Tensor
    target: torch.Tensor
    layer_energy: Callable[[int, State, State], torch.Tensor]
    batch_size: int


@runtime_checkable
class UpdateRule(Protocol):
    runs_inference: bool
    """False skips inference entirely (backprop)."""
    initial_graph: Literal["none", "local", "global"]
    """Graph kept from the initial forward pass: none; per block with detached inputs; end to end."""

    def loss(self, batch: LearningBatch) -> torch.Tensor:
        """The scalar whose gradient is the weight update (already averaged over the batch)."""
        ...


# --- nudging -------------------------------------------------------------------------------------


@runtime_checkable
class Nudging(Protocol):
    """One optional member (see OPTIONAL_MEMBERS):

    - `begin_batch() -> None`: called before every training step, outside the step itself. A method whose
      output node changes from batch to batch draws the new values here, on the host, and writes them into
      device tensors that `output_node` reads: a step replayed as a CUDA graph (`run.cuda_graphs`) runs
      none of the step's Python code, so values drawn inside `output_node` would never change.
    """

    def begin_epoch(self, seed: int, epoch: int) -> None:
        """Called at the start of every training epoch; a random method seeds itself from (seed, epoch)."""
        ...

    def output_node(
        self, prediction: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, float | torch.Tensor]:
        """The value the output node x^L is fixed to for this batch, and a factor on the weight update (a
        number, or a 0-d tensor on the prediction's device when it changes from batch to batch).

        `prediction` is mu^L_0 (detached), `target` the one-hot labels.
        """
        ...


# --- inference algorithm -------------------------------------------------------------------------


class WeightStep(Protocol):
    """The weight step of the run that trains the engine, handed to `PCEngine.train_step`."""

    def __call__(self, *, stoppable: bool = False) -> None:
        """Step the weights on their `.grad` (summed over the data-parallel replicas first), then the
        learning-rate schedule. With `stoppable`, a parameter tensor whose gradient is exactly zero takes no
        step and keeps its optimizer state and step count (incremental PC's stoppable optimizer)."""
        ...


@runtime_checkable
class InferenceAlgorithm(Protocol):
    """What happens between the initial forward pass and the weight step: how the states settle, and
    whether the weights step during it. One optional member (see OPTIONAL_MEMBERS):

    - `check(engine) -> None`: called once when an engine is built with the algorithm; raise
      `UsageError` for a combination it cannot train (an update rule, a normalisation policy, ...).
    """

    def weight_steps(self, steps: int) -> int:
        """Weight steps one batch takes with T = `steps` inference steps; the learning-rate schedule counts
        them (1 for an algorithm whose weights learn once, after inference)."""
        ...

    def infer(
        self, engine: PCEngine, x0: torch.Tensor, y: torch.Tensor, *, record: bool, batch_size: int,
        weight_step: WeightStep | None,
    ) -> InferenceTrace:
        """Settle one batch's states and return the trace (`engine.infer` is state-based inference, which
        can also step the weights at every inference step). `batch_size` is the number of samples the
        step averages over (the global batch in data-parallel training). `trace.learn` says whether the
        engine then takes the update rule's weight step on the settled states; an algorithm that steps the
        weights itself needs `weight_step` and raises UsageError without it."""
        ...


# --- architecture --------------------------------------------------------------------------------

@attrs.define(frozen=True)
class InferenceSettings:
    """The recipe's inference settings, handed to blocks whose energy weights depend on them."""

    lr: float
    momentum: float
    steps: int


@runtime_checkable
class MultiPartBlock(Protocol):
    """A block whose prediction is a tuple of tensors. Its layer's energy is
    `sum_p part_weights[p] * 1/2 ||x_p - mu_p||^2`; the block declares the weights, which may depend on the
    inference settings (an identity-predicted auxiliary part is weighted 1 / lr so that one SGD step at the
    spike hands its displacement on exactly). A block without `part_weights` predicts a single tensor."""

    def part_weights(self, inference: InferenceSettings) -> tuple[float, ...]:
        """One weight per part of the prediction, in order."""
        ...


@runtime_checkable
class Architecture(Protocol):
    def build(
        self, input_shape: tuple[int, ...], num_classes: int, norm: NormalizationPolicy
    ) -> list[nn.Module]:
        """The blocks f_1..f_L; block l maps x^{l-1} to mu^l, the last one returns the logits. A block may
        predict a tuple of tensors (see `MultiPartBlock`); the last block's logits are one tensor."""
        ...


# --- dataset -------------------------------------------------------------------------------------


@attrs.define(frozen=True)
class DataSpec:
    """Shape of a dataset's inputs (C, H, W) and its number of classes, known without loading it."""

    input_shape: tuple[int, ...]
    num_classes: int


@attrs.define(frozen=True)
class Augmentation:
    """Training-time augmentation, applied by the core on the device: random crop after zero padding
    (0 = no crop) and horizontal flip with probability 0.5."""

    crop_padding: int = 0
    horizontal_flip: bool = False


@attrs.define(frozen=True)
class ImageData:
    """A whole dataset in memory. Images are [N, C, H, W], uint8 in 0..255 or float; the core scales
    uint8 to [0, 1] and then normalises with `mean` and `std` per channel."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation = Augmentation()


@runtime_checkable
class Dataset(Protocol):
    def spec(self) -> DataSpec:
        """Input shape and class count, without touching the disk (used by --smoke)."""
        ...

    def load(self) -> ImageData:
        """Load (downloading if allowed) or raise `pccore.core.errors.DatasetUnavailable`."""
        ...


OPTIONAL_MEMBERS: dict[str, tuple[str, ...]] = {
    "precision": (),
    "update": (),
    "normalization": ("pure_inference", "prepare", "shared_buffers"),
    "nudging": ("begin_batch",),
    "inference": ("check",),
    "architecture": (),
    "dataset": (),
}
"""Members a component may have beyond its protocol; the core uses them when they are present."""

PROTOCOLS: dict[str, type] = {
    "precision": PrecisionSchedule,
    "update": UpdateRule,
    "normalization": NormalizationPolicy,
    "nudging": Nudging,
    "inference": InferenceAlgorithm,
    "architecture": Architecture,
    "dataset": Dataset,
}
