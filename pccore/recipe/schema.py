"""The recipe schema: one attrs class per section, the component sections and their default components.

A recipe has eleven sections. Seven of them name a component (`[data]` a dataset, `[model]` an
architecture, `[normalization]`, `[precision]`, `[nudging]`, `[update]`, `[inference]` an inference
algorithm) and carry that component's parameters inline; the other four are plain settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs

from pccore.core.components import Component


class ComponentRegistry(Protocol):
    """What recipes need from a registry: look a component up by kind and name."""

    def component(self, kind: str, name: str) -> Component:
        """The component record; UsageError (with close matches) for an unknown name."""
        ...

    def names(self, kind: str) -> list[str]:
        """The names of every component of a kind."""
        ...


class OutOfRange(ValueError):
    """A value of the right type outside its allowed range; the message says what is expected."""


def expect(predicate: Callable[[Any], bool], expected: str) -> Callable[[Any, Any, Any], None]:
    """An attrs validator that raises `OutOfRange(expected)` when `predicate(value)` is false."""

    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if not predicate(value):
            raise OutOfRange(expected)

    return check


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@attrs.frozen
class RunSection:
    """How a recipe is run: its name, seeds, device, output folder and numeric settings."""

    name: str = attrs.field(
        default="",
        validator=expect(lambda v: v not in (".", "..") and not set(v) & set("/\\"),
                         'a folder name (no "/" or "\\", not "." or "..")'),
    )
    seeds: list[int] = attrs.field(
        factory=lambda: [0],
        validator=expect(lambda v: len(v) >= 1 and all(s >= 0 for s in v) and len(set(v)) == len(v),
                         "a non-empty list of distinct seeds >= 0 (each seed gets its own folder)"),
    )
    device: str = attrs.field(
        default="auto", validator=expect(_DEVICE.fullmatch, '"auto", "cpu", "cuda" or "cuda:N"')
    )
    out_dir: str = "runs"
    dtype: Literal["float32", "float64"] = "float32"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    """Replay each full-batch training step as a CUDA graph (`pccore.run.graphs`); CUDA only."""


@attrs.frozen
class ComponentSection:
    """A section that names a registered component; `params` is an instance of its parameter class."""

    name: str
    params: Any


@attrs.frozen
class DataSection(ComponentSection):
    """The dataset component plus the batch sizes the core uses to iterate it and the validation split
    (`pccore.run.splits`): `validation_fraction` of each class's training images held out, chosen with
    `validation_seed` (unset: the dataset's own `split_seed` parameter, or 0)."""

    batch_size: int = attrs.field(default=128, validator=expect(lambda v: v >= 1, "an integer >= 1"))
    eval_batch_size: int = attrs.field(default=1000, validator=expect(lambda v: v >= 1, "an integer >= 1"))
    validation_fraction: float = attrs.field(
        default=0.0, validator=expect(lambda v: 0 <= v < 1, "a number in [0, 1) (0: no validation split)")
    )
    validation_seed: int | None = attrs.field(
        default=None, validator=expect(lambda v: v is None or v >= 0, "an integer >= 0")
    )


@attrs.frozen
class ModelSection(ComponentSection):
    """The architecture component plus the energy of the output layer (squared error or cross-entropy)."""

    output_energy: Literal["se", "ce"] = "se"


@attrs.frozen
class InferenceSection(ComponentSection):
    """The inference algorithm (state-based PC by default) and its state optimizer: T steps of SGD with
    momentum."""

    name: str = "states"
    params: Any = None

    steps: int = attrs.field(default=8, validator=expect(lambda v: v >= 0, "an integer >= 0"))
    lr: float = attrs.field(default=0.1, validator=expect(lambda v: v > 0, "a number > 0"))
    momentum: float = attrs.field(default=0.0, validator=expect(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    nesterov: bool = True
    decay_last_lr: bool = False
    skip_below: float = attrs.field(default=0.0, validator=expect(lambda v: v >= 0, "a number >= 0"))
    """Precision weights below this count as zero, so their blocks are skipped (an approximation; 0 = exact)."""


@attrs.frozen
class OptimizerSection:
    """The weight optimizer (AdamW) and its warmup-cosine schedule."""

    lr: float = attrs.field(default=1e-3, validator=expect(lambda v: v > 0, "a number > 0"))
    weight_decay: float = attrs.field(default=1e-4, validator=expect(lambda v: v >= 0, "a number >= 0"))
    warmup: float = attrs.field(default=0.1, validator=expect(lambda v: 0 <= v <= 1, "a number in [0, 1]"))
    schedule_epochs: int = attrs.field(default=25, validator=expect(lambda v: v >= 1, "an integer >= 1"))


@attrs.frozen
class TrainSection:
    """How long to train: epochs, early-stopping patience, and an optional cap on batches per epoch."""

    epochs: int = attrs.field(default=50, validator=expect(lambda v: v >= 1, "an integer >= 1"))
    patience: int = attrs.field(default=10, validator=expect(lambda v: v >= 1, "an integer >= 1"))
    max_batches: int = attrs.field(default=0, validator=expect(lambda v: v >= 0, "an integer >= 0"))


@attrs.frozen
class LogSection:
    """What a run writes: TensorBoard events (every `every` batches) and checkpoints."""

    tensorboard: bool = True
    every: int = attrs.field(default=50, validator=expect(lambda v: v >= 1, "an integer >= 1"))
    checkpoints: bool = True


@attrs.frozen
class Recipe:
    """A fully resolved recipe; `source` is the file it was loaded from (not part of equality)."""

    run: RunSection
    data: DataSection
    model: ModelSection
    normalization: ComponentSection
    precision: ComponentSection
    nudging: ComponentSection
    update: ComponentSection
    inference: InferenceSection
    optimizer: OptimizerSection
    train: TrainSection
    log: LogSection
    source: Path | None = attrs.field(default=None, eq=False)


SECTION_CLASSES: dict[str, type] = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "normalization": ComponentSection,
    "precision": ComponentSection,
    "nudging": ComponentSection,
    "update": ComponentSection,
    "inference": InferenceSection,
    "optimizer": OptimizerSection,
    "train": TrainSection,
    "log": LogSection,
}
"""Every section of a recipe, in the order they are written."""

SECTIONS: tuple[str, ...] = tuple(SECTION_CLASSES)

COMPONENT_KINDS: dict[str, str] = {
    "data": "dataset",
    "model": "architecture",
    "normalization": "normalization",
    "precision": "precision",
    "nudging": "nudging",
    "update": "update",
    "inference": "inference",
}
"""The kind of component each component section names."""

DEFAULT_COMPONENTS: dict[str, str] = {
    "data": "digits",
    "model": "mlp",
    "normalization": "none",
    "precision": "constant",
    "nudging": "clamp",
    "update": "standard",
    "inference": "states",
}
"""The component a section names when it has no `name` key."""


def core_keys(section: str) -> list[str]:
    """The keys a section owns itself (for a component section: `name` and its extra settings)."""
    return [f.name for f in attrs.fields(SECTION_CLASSES[section]) if f.name != "params"]


def param_names(component: Component) -> list[str]:
    """The parameters a component accepts in its section."""
    return [f.name for f in attrs.fields(component.params) if f.init]


def default_registry() -> ComponentRegistry:
    """The process-wide plugin registry (what the command line uses)."""
    from pccore.core.registry import get_registry

    return get_registry()
