"""The Python API: what the command line does, for notebooks and scripts, on the same objects.

Two ways in:

- a recipe, trained exactly as `pccore run` trains it (same seed, same device: same summary and weights)::

      summary = pccore.train("recipes/quickstart.toml", {"train.epochs": 2})
      engine = pccore.load_engine(summary["run_dir"])        # the best weights, ready to predict

- your own blocks, wrapped in an engine whose training step you call in your own loop::

      engine = pccore.make_engine(blocks, num_classes=10, precision="spiking", update="forward",
                                  normalization="frozen", steps=4, lr=0.5)
      optimizer = torch.optim.AdamW(engine.model.parameters(), lr=1e-3)
      for x, y in loader:
          engine.train_step(x, y)    # inference, then the weight gradients into .grad
          optimizer.step()

Components are looked up by name in the plugin registry (third-party components work the same way) and
their parameters are checked with the recipe's rules and messages. Every problem raises a
`pccore.core.errors.PccoreError` (UsageError/RecipeError for bad input) whose message says what to change.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from pccore.core.components import PROTOCOLS
from pccore.core.engine import PCEngine
from pccore.core.errors import RecipeError, UsageError
from pccore.recipe import Recipe, recipe_from_dict, recipe_to_dict
from pccore.recipe import load_recipe as _load_recipe_file
from pccore.recipe.load import parse_override_value

RecipeSource = str | os.PathLike | Mapping[str, Any] | Recipe
"""A recipe: a TOML file's path, a dict of sections as the TOML would parse, or a loaded `Recipe`."""

Overrides = Sequence[str] | Mapping[str, Any] | None
"""`--set`-style strings (`"inference.steps=14"`, values parsed as TOML) or a mapping of dotted keys to
Python values (`{"inference.steps": 14}`)."""

COMPONENT_ARGUMENTS: dict[str, str] = {
    "precision": "precision",
    "update": "update",
    "normalization": "normalization",
    "nudging": "nudging",
    "inference": "inference",
}
"""make_engine's component arguments and the kind of component each names (also its recipe section)."""


def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    from pccore.core.registry import get_registry

    return get_registry()


# --- recipes -------------------------------------------------------------------------------------


def load_recipe(source: RecipeSource, overrides: Overrides = None, *, registry: Any = None) -> Recipe:
    """A checked recipe from a path, a dict or a `Recipe`, with overrides applied.

    A path is read exactly as `pccore run PATH --set ...` reads it (`extends` chains, the same checks and
    messages). A dict holds the sections as a TOML file would parse into (`{"model": {"name": "mlp"}}`);
    overrides set keys in (a copy of) it before it is checked. `overrides` are `--set`-style strings or a
    mapping of dotted keys (`{"inference.steps": 14, "precision.name": "decaying"}`). RecipeError says
    which key is wrong and why.
    """
    registry = _registry(registry)
    if isinstance(source, Recipe):
        return _from_dict(recipe_to_dict(source), overrides, registry, source.source)
    if isinstance(source, Mapping):
        return _from_dict(source, overrides, registry, None)
    if isinstance(source, (str, os.PathLike)):
        return _load_recipe_file(source, _as_set_arguments(overrides), registry)
    raise UsageError(
        f"a recipe is a TOML file's path, a dict of sections or a pccore Recipe, not {type(source).__name__}"
    )


def _as_set_arguments(overrides: Overrides) -> list[str]:
    """Overrides as `--set` arguments: strings pass through, a mapping's values are written as TOML."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{key}={_toml_literal(key, _python_value(value))}" for key, value in overrides.items()]
    return list(overrides)


def _python_value(value: Any) -> Any:
    """NumPy scalars and arrays (a sweep's np.linspace values) as the Python numbers and lists they hold."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_python_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _python_value(v) for k, v in value.items()}
    return value


def _toml_literal(key: str, value: Any) -> str:
    """A Python value as a TOML value (strings, booleans, numbers, lists, tables, paths)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        # a JSON string is a TOML basic string, except that TOML also wants DEL escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(key, v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_literal(key, v)}" for k, v in value.items())
        return "{" + items + "}"
    raise RecipeError(f"override {key}: cannot write a {type(value).__name__} ({value!r}) as a recipe value")


def _as_assignments(overrides: Overrides) -> list[tuple[str, Any, str]]:
    """Overrides as (dotted key, Python value, how the user wrote it); strings parsed like `--set`."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [(str(key), _python_value(value), str(key)) for key, value in overrides.items()]
    out = []
    for argument in [overrides] if isinstance(overrides, str) else overrides:
        key, sep, text = str(argument).partition("=")
        if not sep:
            raise RecipeError(f"override {argument!r}: expected SECTION.KEY=VALUE, e.g. inference.steps=14")
        out.append((key.strip(), parse_override_value(text, f"override {str(argument)!r}"), str(argument)))
    return out


def _from_dict(data: Mapping[str, Any], overrides: Overrides, registry: Any, source: Path | None) -> Recipe:
    """A recipe dict with overrides set in a copy of it, then checked."""
    merged = copy.deepcopy(dict(data))
    for key, value, written in _as_assignments(overrides):
        section, dot, field = key.partition(".")
        if not dot or not section or not field or "." in field:
            raise RecipeError(f"override {written!r}: expected a key SECTION.KEY, e.g. inference.steps")
        table = merged.get(section, {})
        if not isinstance(table, Mapping):
            raise RecipeError(f"override {written!r}: [{section}] is not a table in this recipe")
        merged[section] = {**table, field: value}
    return recipe_from_dict(merged, source=source, registry=registry)


# --- training a recipe ---------------------------------------------------------------------------


def train(
    recipe: RecipeSource,
    overrides: Overrides = None,
    *,
    out: str | os.PathLike | None = None,
    device: str | None = None,
    smoke: bool = False,
    quiet: bool = False,
    registry: Any = None,
) -> dict[str, Any]:
    """Train and evaluate a recipe once per seed, exactly as `pccore run` does, and return the summary.

    `recipe` and `overrides` are as for `load_recipe`. The run directory is `out` (used exactly), or
    `run.out_dir/<name>/version_<N>`; the summary (also saved there as summary.json) holds
    `top1_mean`, `top1_std`, `top5_mean`, `top5_std`, `run_dir` and each seed's entry under `seeds`.
    `device` overrides `run.device`; `smoke` trains two batches of random data with a thin model;
    `quiet` silences the progress lines (printed to stdout otherwise).
    """
    from pccore.run import training

    registry = _registry(registry)
    resolved = load_recipe(recipe, overrides, registry=registry)
    return training.train(resolved, None if out is None else Path(out), device=device, smoke=smoke,
                          registry=registry, stream=_stream(quiet))


def resume(run_dir: str | os.PathLike, *, device: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Continue an interrupted run from its checkpoints (as `pccore run --resume RUN_DIR`); the summary."""
    from pccore.run import rundir, training

    recipe, smoke = rundir.load_run(Path(run_dir))
    return training.train(recipe, Path(run_dir), device=device, smoke=smoke, resume=True, stream=_stream(quiet))


def _stream(quiet: bool) -> TextIO | None:
    return io.StringIO() if quiet else None


def load_engine(
    run_dir: str | os.PathLike,
    *,
    seed: int | None = None,
    checkpoint: str = "best",
    device: str | None = None,
    registry: Any = None,
) -> PCEngine:
    """The engine of a finished (or interrupted) run with its trained weights, in evaluation mode.

    `seed` picks the seed's folder (default: the recipe's first seed); `checkpoint` is "best" (best.pt,
    the epoch with the best validation top-1 when the run has a validation split, else the best test
    top-1) or "last" (checkpoint.pt). `device` defaults to the recipe's
    `run.device`. `engine.predict(x)` gives logits; `engine.model` holds the blocks.
    """
    from pccore.core.devices import resolve_device
    from pccore.run.assemble import assemble
    from pccore.run.checkpoint import load_checkpoint
    from pccore.run.rundir import load_run

    files = {"best": "best.pt", "last": "checkpoint.pt"}
    if checkpoint not in files:
        raise UsageError(f"checkpoint must be \"best\" or \"last\", not {checkpoint!r}")
    registry = _registry(registry)
    run_dir = Path(run_dir)
    recipe, _smoke = load_run(run_dir)
    seed = int(recipe.run.seeds[0]) if seed is None else seed
    path = run_dir / f"seed_{seed}" / files[checkpoint]
    if not path.is_file():
        present = sorted(p.name for p in run_dir.glob("seed_*/*.pt"))
        raise UsageError(
            f"{path} does not exist (the run has seeds {list(recipe.run.seeds)}; checkpoint files found: "
            f"{', '.join(present) or 'none'}; a run with log.checkpoints = false keeps no weights)"
        )
    spec = registry.build("dataset", recipe.data.name, recipe.data.params).spec()
    assembly = assemble(recipe, spec, resolve_device(device or recipe.run.device), registry)
    assembly.blocks.load_state_dict(load_checkpoint(path)["model"])
    assembly.blocks.eval()
    return assembly.engine


# --- an engine around the user's blocks ----------------------------------------------------------


def make_engine(
    blocks: Iterable[nn.Module],
    *,
    num_classes: int,
    precision: str | Mapping[str, Any] | Any = "constant",
    update: str | Mapping[str, Any] | Any = "standard",
    normalization: str | Mapping[str, Any] | Any = "none",
    nudging: str | Mapping[str, Any] | Any = "clamp",
    inference: str | Mapping[str, Any] | Any = "states",
    steps: int = 8,
    lr: float = 0.1,
    momentum: float = 0.0,
    nesterov: bool = True,
    decay_last_lr: bool = False,
    skip_below: float = 0.0,
    output_energy: str = "se",
    autocast_dtype: torch.dtype | None = None,
    compile: bool = False,
    registry: Any = None,
) -> PCEngine:
    """A predictive coding engine around your own blocks f_1..f_L, for your own training loop.

    `blocks` is a list of `nn.Module`s (or an `nn.ModuleList`): block l maps x^{l-1} to mu^l and the last
    returns the logits; the engine runs on their device and dtype. Each component is given as a name
    (`precision="spiking"`), as a recipe-style table of its name and parameters
    (`precision={"name": "spiking", "peak": 2.0}`), or as an object that already implements its protocol.
    Names are looked up in the plugin registry and parameters are checked as in a recipe; the remaining
    arguments are the recipe's `[inference]` keys plus `[model] output_energy` ("se" or "ce"), with the
    recipe defaults.

    The normalisation policy takes control of the blocks' own BatchNorm layers through its `prepare`
    hook: with `normalization="frozen"` (BatchNorm Freezing) plain `nn.BatchNorm1d`/`nn.BatchNorm2d`
    layers are made freezable in place (the same modules and parameters, so an optimizer made before
    stays valid); `"none"` refuses blocks with BatchNorm.

    Train with `engine.train_step(x, y)` (inference, then the weight gradients into `.grad`; it returns
    the loss and the per-layer energies) followed by your optimizer's `step()`, or hand the step to the
    engine: `engine.train_step(x, y, weight_step=pccore.core.optim.WeightStepper(optimizer))`, which an
    inference algorithm that steps the weights during inference (`inference="incremental"`) needs
    (error optimisation, `inference="errors"`, learns after inference like state-based PC); predict
    with `engine.predict(x)`. With a random nudging method ("center"), call
    `engine.nudging.begin_epoch(seed, epoch)` at the start of each epoch.
    """
    model = _as_module_list(blocks)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UsageError(f"num_classes must be an integer >= 1 (the width of the last block), not {num_classes!r}")
    registry = _registry(registry)
    given = {"precision": precision, "update": update, "normalization": normalization, "nudging": nudging,
             "inference": inference}
    sections: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    for argument, value in given.items():
        if isinstance(value, str):
            sections[argument] = {"name": value}
        elif isinstance(value, Mapping):
            sections[argument] = dict(value)
        else:
            objects[argument] = _check_object(argument, value)
    settings = {"steps": steps, "lr": lr, "momentum": momentum, "nesterov": nesterov,
                "decay_last_lr": decay_last_lr, "skip_below": skip_below}
    recipe = recipe_from_dict(
        {**sections, "inference": {**sections.get("inference", {}), **settings},
         "model": {"output_energy": output_energy}},
        source="make_engine", registry=registry,
    )
    built = {
        argument: objects[argument] if argument in objects else registry.build(
            COMPONENT_ARGUMENTS[argument], getattr(recipe, argument).name, getattr(recipe, argument).params
        )
        for argument in given
    }
    from pccore.run.assemble import compile_blocks, prepare_blocks

    norm_label = f"normalization '{recipe.normalization.name}'" if "normalization" in sections else (
        f"normalization {type(built['normalization']).__name__}")
    prepare_blocks(built["normalization"], model, norm_label)
    table = built["precision"].table(len(model), recipe.inference.steps)
    return PCEngine(
        compile_blocks(model) if compile else model,
        table,
        built["update"],
        built["normalization"],
        built["nudging"],
        steps=recipe.inference.steps,
        lr=recipe.inference.lr,
        momentum=recipe.inference.momentum,
        nesterov=recipe.inference.nesterov,
        decay_last_lr=recipe.inference.decay_last_lr,
        skip_below=recipe.inference.skip_below,
        output_energy=recipe.model.output_energy,
        num_classes=num_classes,
        autocast_dtype=autocast_dtype,
        algorithm=built["inference"],
    )


def _as_module_list(blocks: Iterable[nn.Module]) -> nn.ModuleList:
    """The blocks as an nn.ModuleList (the same module objects), checked to be modules with parameters."""
    if isinstance(blocks, nn.ModuleList):
        model = blocks
    elif isinstance(blocks, nn.Module) or not isinstance(blocks, Iterable):
        raise UsageError(
            f"blocks must be a list of nn.Module blocks f_1..f_L, not a {type(blocks).__name__}; "
            "split a model into its blocks, e.g. list(sequential)"
        )
    else:
        items = list(blocks)
        for index, block in enumerate(items):
            if not isinstance(block, nn.Module):
                raise UsageError(f"blocks[{index}] is a {type(block).__name__}, expected an nn.Module")
        model = nn.ModuleList(items)
    if len(model) == 0:
        raise UsageError("blocks is empty: give at least one nn.Module (the last one returns the logits)")
    if next(model.parameters(), None) is None:
        raise UsageError("the blocks have no parameters: there is nothing to train")
    return model


def _check_object(argument: str, value: Any) -> Any:
    """A component given as an object: it must implement its kind's protocol."""
    protocol = PROTOCOLS[COMPONENT_ARGUMENTS[argument]]
    if not isinstance(value, protocol):
        raise UsageError(
            f"{argument}: expected a component name, a table {{'name': ..., parameters}} or an object "
            f"implementing {protocol.__name__}; got a {type(value).__module__}.{type(value).__qualname__}"
        )
    return value


# --- looking inside a recipe ---------------------------------------------------------------------


def precision_schedule(recipe: RecipeSource, overrides: Overrides = None, *, registry: Any = None) -> dict:
    """The precision table the recipe will use, as `pccore schedule --json` prints it: `layers`, `steps`,
    `inference[t][l]` and `learning[l]`. Draw it with `pccore.plot_schedule`."""
    from pccore.inspect.diagnose import schedule_report

    registry = _registry(registry)
    return schedule_report(load_recipe(recipe, overrides, registry=registry), registry)


def diagnose_recipe(
    recipe: RecipeSource,
    overrides: Overrides = None,
    *,
    smoke: bool = False,
    device: str | None = None,
    registry: Any = None,
) -> dict:
    """One batch of the recipe, as `pccore diagnose --json` reports it: the energy of every layer at every
    inference step (`energy[t][l]`, batch mean) and the cosine of each layer's weight update to the
    backprop gradient (`cosine_to_bp[l]`). `smoke` uses random data shaped like the dataset. Draw it with
    `pccore.plot_diagnosis`; for your own engine and batch use `pccore.diagnose_batch(engine, x, y)`."""
    from pccore.core.devices import resolve_device
    from pccore.inspect.diagnose import diagnose_report

    registry = _registry(registry)
    resolved = load_recipe(recipe, overrides, registry=registry)
    return diagnose_report(resolved, registry, resolve_device(device or resolved.run.device), smoke=smoke)


def benchmark(
    recipe: RecipeSource,
    overrides: Overrides = None,
    *,
    steps: int = 5,
    warmup: int = 2,
    device: str | None = None,
    memory: bool = True,
    registry: Any = None,
) -> dict:
    """Time training steps of the recipe against backprop on the same model and batch, as
    `pccore bench --json` reports it (`pc_step_s`, `bp_step_s`, `ratio`, `pc_peak_mb`, ...). On the CPU
    the peak memory is measured in two short-lived processes; `memory=False` skips that."""
    from pccore.core.devices import resolve_device
    from pccore.inspect.bench import check_counts, run_bench

    check_counts(steps, warmup)
    registry = _registry(registry)
    resolved = load_recipe(recipe, overrides, registry=registry)
    label = str(recipe) if isinstance(recipe, (str, os.PathLike)) else ""
    return run_bench(resolved, registry, resolve_device(device or resolved.run.device), steps=steps,
                     warmup=warmup, label=label, cpu_memory=memory)


# --- experiments at scale ------------------------------------------------------------------------


def search_study(
    study: str | os.PathLike,
    *,
    trials: int | None = None,
    workers: int = 1,
    devices: str | None = None,
    storage: str | None = None,
    out: str | os.PathLike | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run a study file with Optuna as `pccore tune STUDY` does and return its summary (`best_value`,
    `best_params`, `best_trial`, the counts and every trial); `best.toml` and `summary.json` are written into
    `out` (default `run.out_dir/<study name>`). Calling it again continues the study."""
    from pccore.experiments.tune.command import search

    return search(study, trials=trials, workers=workers, devices=devices, storage=storage, out=out,
                  progress=_stream(quiet))


def sweep_recipes(
    recipes: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    seeds: str | None = None,
    workers: int = 1,
    devices: str | None = None,
    overrides: Overrides = None,
    timeout: float | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train every recipe for every seed (`"0-4"`, `"0,1,2"`) as `pccore sweep` does, each (recipe, seed)
    in its own process, into `out/<run name>/`; returns `ok`, and each run directory with what became of
    each seed."""
    from pccore.experiments import sweep

    return sweep.sweep_recipes(recipes, out=out, seeds=seeds, workers=workers, devices=devices,
                               overrides=_as_set_arguments(overrides), timeout=timeout, progress=_stream(quiet))


def report_runs(runs: Sequence[str | os.PathLike], *, by: str = "method") -> dict[str, Any]:
    """Run directories (or folders holding them) as `pccore report --json` gives them: the rows, columns
    and cells (n, mean and population std of the best test top-1 and, with a validation split, of the
    validation numbers). Draw top-1 against depth with `pccore.plot_depth`."""
    from pccore.experiments.report import build_report

    return build_report(runs, by)

