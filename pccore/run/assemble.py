"""Turn a recipe into a ready engine: resolve each component by name once, build the model, move it.

Before anything is allocated, `preflight` builds the components and the model on the meta device and
refuses (UsageError) a model or precision table too large for torch or for the device's memory, and a
training batch the model cannot take.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import nn

from pccore.core import limits
from pccore.core.components import DataSpec, PrecisionTable
from pccore.core.engine import PCEngine
from pccore.core.errors import UsageError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@attrs.define
class Assembly:
    """Everything a run needs, built from one recipe."""

    blocks: nn.ModuleList
    engine: PCEngine
    table: PrecisionTable
    components: dict[str, Any]

    @property
    def nudging(self) -> Any:
        return self.components["nudging"]


def autocast_dtype(recipe, device: torch.device) -> torch.dtype | None:
    """bf16 autocast when the recipe asks for it; it is a CUDA option."""
    if recipe.run.precision != "bf16":
        return None
    if device.type != "cuda":
        raise UsageError(
            f"run.precision = \"bf16\" needs a CUDA device, but the run is on {device}; "
            "set run.precision = \"fp32\" (or --set run.precision='\"fp32\"') for CPU runs"
        )
    return torch.bfloat16


def prepare_blocks(norm: Any, model: nn.ModuleList, label: str) -> None:
    """Let the normalisation policy take control of the blocks' own normalisation layers (its optional
    `prepare` hook); `label` names the policy in the UsageError raised when it refuses the blocks."""
    prepare = getattr(norm, "prepare", None)
    if prepare is None:
        return
    try:
        prepare(model)
    except ValueError as err:
        raise UsageError(f"{label}: {err}") from None


def compile_blocks(model: nn.ModuleList) -> nn.ModuleList:
    """Each block compiled on its own, with static shapes. The blocks share their Python code (e.g.
    nn.Sequential.forward), which dynamo counts against one recompile limit: raise it so that every block,
    with each grad mode it is called in, gets its own graph instead of falling back to eager."""
    import torch._dynamo

    config = torch._dynamo.config
    needed = 8 * len(model)
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), needed))
    return nn.ModuleList([torch.compile(b, dynamic=False) for b in model])


def _model_builder(recipe, spec: DataSpec, architecture: Any, norm: Any) -> Callable[[], list[nn.Module]]:
    """A function that builds the recipe's blocks; an architecture's ValueError is a UsageError naming it."""

    def build() -> list[nn.Module]:
        try:
            return list(architecture.build(tuple(spec.input_shape), spec.num_classes, norm))
        except ValueError as err:
            raise UsageError(f"model '{recipe.model.name}': {err}") from None

    return build


def _check_model(recipe, build: Callable[[], list[nn.Module]], device: torch.device) -> list[nn.Module] | None:
    """Check the model's sizes on the meta device before anything is allocated; the meta blocks, or None
    when the architecture cannot be built on the meta device."""
    model = f"model '{recipe.model.name}'"
    blocks = limits.meta_blocks(build, model)
    if blocks is None:
        return None
    limits.check_model_size(blocks, model, DTYPES[recipe.run.dtype], device)
    limits.check_table_size(recipe.inference.steps, len(blocks))
    return blocks


def _check_training_batches(
    recipe, blocks: list[nn.Module], norm: Any, spec: DataSpec, train_size: int, shards: int = 1
) -> None:
    """Pass each size of batch a training epoch yields through the meta blocks in training mode, so that a
    batch the model cannot train on (BatchNorm with one value per channel, say) is refused before the run
    starts rather than at the end of its first epoch. With `shards` data-parallel processes, the size is
    that of the smallest share of each batch. Blocks that cannot run on the meta device are not checked."""
    batch = recipe.data.batch_size
    batches = math.ceil(train_size / batch)
    sizes = {min(batch, train_size) // shards}
    if recipe.train.max_batches == 0 or recipe.train.max_batches >= batches:
        sizes.add((train_size - (batches - 1) * batch) // shards)
    first = min(batch, train_size) // shards
    per_process = f" per process ({shards} processes share each batch)" if shards > 1 else ""
    model = nn.ModuleList(blocks).train()
    norm.set_phase(model, "forward")
    for size in sorted(sizes):
        x = torch.empty((size, *spec.input_shape), device="meta")
        try:
            for block in model:
                x = block(x)
        except ValueError as err:
            problem = f"{type(err).__name__}: {' '.join(str(err).split())}"
            if size == first:
                raise UsageError(
                    f"model '{recipe.model.name}' cannot train on a batch of {size}{per_process} ({problem}); "
                    "raise data.batch_size"
                ) from None
            raise UsageError(
                f"model '{recipe.model.name}' cannot train on the last batch of each epoch, which holds "
                f"{size}{per_process} of the {train_size} training images with data.batch_size = {batch} "
                f"({problem}); choose a data.batch_size that does not leave {size if shards == 1 else 'so few'} over"
            ) from None
        except Exception:  # an operation without a meta implementation: such blocks are not checked
            return


def preflight(
    recipe, spec: DataSpec, device: torch.device, registry=None, train_size: int | None = None, shards: int = 1
) -> int | None:
    """Build every component of `recipe` (so that a plugin that fails to build fails here) and refuse,
    before anything is allocated, a model or precision table too large for torch or for the memory of
    `device` (UsageError naming the limit), and, given the number of training images, a training batch
    the model cannot take (each process's share of it with `shards` data-parallel processes). Returns the
    number of blocks, or None when the architecture cannot be built on the meta device (it is then checked
    when it is built)."""
    if registry is None:
        from pccore.core.registry import get_registry

        registry = get_registry()
    built = _build_components(recipe, registry)
    blocks = _check_model(recipe, _model_builder(recipe, spec, built["architecture"], built["normalization"]),
                          device)
    if blocks is None:
        return None
    if train_size:
        _check_training_batches(recipe, blocks, built["normalization"], spec, train_size, shards)
    return len(blocks)


@attrs.define(frozen=True)
class ModelSummary:
    """The model a recipe builds: its architecture, the data it is built for, L and its parameter count."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    layers: int
    parameters: int

    def text(self) -> str:
        """`vgg19 on 3x32x32, 10 classes: L = 17 layers, 20,029,514 parameters`, every digit."""
        shape = "x".join(map(str, self.input_shape))
        classes = "class" if self.num_classes == 1 else "classes"
        layers = "layer" if self.layers == 1 else "layers"
        parameters = "parameter" if self.parameters == 1 else "parameters"
        return (f"{self.name} on {shape}, {self.num_classes} {classes}: L = {self.layers} {layers}, "
                f"{self.parameters:,} {parameters}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "layers": self.layers, "parameters": self.parameters}


def model_summary(recipe, registry=None) -> ModelSummary:
    """Build every component of `recipe` and its model for the dataset's input shape and classes (known
    without loading the data), on the meta device: no memory for weights, no random draws. An architecture
    that cannot be built there is built on the CPU and dropped. Parameters shared by blocks count once."""
    if registry is None:
        from pccore.core.registry import get_registry

        registry = get_registry()
    spec = registry.build("dataset", recipe.data.name, recipe.data.params).spec()
    built = _build_components(recipe, registry)
    build = _model_builder(recipe, spec, built["architecture"], built["normalization"])
    blocks = limits.meta_blocks(build, f"model '{recipe.model.name}'")
    if blocks is None:
        blocks = build()
    parameters = sum(p.numel() for p in nn.ModuleList(blocks).parameters())
    return ModelSummary(recipe.model.name, tuple(spec.input_shape), spec.num_classes, len(blocks), parameters)


def _build_components(recipe, registry) -> dict[str, Any]:
    """Every component of `recipe` but the dataset, built from its parameters."""
    return {
        kind: registry.build(kind, section.name, section.params)
        for kind, section in (
            ("normalization", recipe.normalization),
            ("precision", recipe.precision),
            ("nudging", recipe.nudging),
            ("update", recipe.update),
            ("inference", recipe.inference),
            ("architecture", recipe.model),
        )
    }


def assemble(recipe, spec: DataSpec, device: torch.device, registry=None) -> Assembly:
    """Build every component of `recipe` for data shaped like `spec`, with the model on `device`."""
    if registry is None:
        from pccore.core.registry import get_registry

        registry = get_registry()
    built = _build_components(recipe, registry)
    build = _model_builder(recipe, spec, built["architecture"], built["normalization"])
    _check_model(recipe, build, device)
    blocks = build()
    remember = getattr(registry, "remember", None)  # the plugin registry names the blocks' architecture
    if remember is not None:
        for block in blocks:
            remember(block, "architecture", recipe.model.name)
    limits.check_table_size(recipe.inference.steps, len(blocks))
    dtype = DTYPES[recipe.run.dtype]
    model = nn.ModuleList(blocks).to(device=device, dtype=dtype)
    prepare_blocks(built["normalization"], model, f"normalization '{recipe.normalization.name}'")
    if recipe.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    table = built["precision"].table(len(model), recipe.inference.steps)
    engine_blocks = compile_blocks(model) if recipe.run.compile else model
    inference = recipe.inference
    engine = PCEngine(
        engine_blocks,
        table,
        built["update"],
        built["normalization"],
        built["nudging"],
        steps=inference.steps,
        lr=inference.lr,
        momentum=inference.momentum,
        nesterov=inference.nesterov,
        decay_last_lr=inference.decay_last_lr,
        skip_below=inference.skip_below,
        output_energy=recipe.model.output_energy,
        num_classes=spec.num_classes,
        autocast_dtype=autocast_dtype(recipe, device),
        algorithm=built["inference"],
    )
    return Assembly(blocks=model, engine=engine, table=table, components=built)
