"""Complete training runs (`pccore run`): one training per seed, evaluation, early stopping, summaries.

A run directory (made and marked by `pccore.rundir`) holds the resolved recipe (`recipe.toml`), a marker
of how the run was started and how it stands (`run.json`), the aggregate `summary.json`, and per seed
`seed_<n>/` with TensorBoard events,
`checkpoint.pt` (after the latest epoch), `best.pt` (at the best top-1: the validation top-1 when the recipe
holds a validation split, else the test top-1) and the seed's `summary.json`.
A seed with a `summary.json` is finished; `pccore run --resume RUN_DIR` skips it and continues every other
seed from its last checkpoint. Checkpoints are taken at epoch boundaries and restore every random
generator; since the data order depends only on (seed, epoch), a resumed run on the CPU ends with the same
weights and metrics as an uninterrupted one (on CUDA too under `torch.use_deterministic_algorithms`;
without it two uninterrupted CUDA runs already differ in the last bits).

`run.precision = "bf16"` autocasts on CUDA; on any other device it is refused (UsageError, exit 2) before
a run directory is made, rather than silently training in fp32.

The training loop never waits for the device inside an epoch except every `log.every` batches: the loss
and per-layer energies of each batch stay on the device until a log point reads them all at once, and the
check for a diverged (non-finite) loss or energy is made there and at the end of every epoch.

Data-parallel runs (torchrun, or `pccore run --nproc N`; see `pccore.distributed`): every rank trains its
shard of each global batch and the ranks' gradients are summed before each optimizer step, so the model
follows the same path as in one process. Rank 0 alone makes the run directory and writes run.json,
checkpoints, summaries and TensorBoard events, and prints progress; what it reads back when resuming
reaches the other ranks through the process group, so that only rank 0's machine needs the run directory.
Losses, energies and test accuracies are reduced over the ranks (exact counts), so every rank takes the
same decisions (divergence, best epoch, early stop). Under `torchrun --max-restarts K` a run needs --out:
a restarted attempt finds there the run that the failed attempt of the same launch started (run.json
records the launch's id) and continues it from its checkpoints.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import numpy as np
import torch

import pccore
from pccore import distributed, rundir
from pccore.assemble import DTYPES, assemble, autocast_dtype, preflight, resolve_device
from pccore.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pccore.data import BatchFeeder, smoke_data
from pccore.errors import DivergenceError, UsageError
from pccore.files import atomic_write_json, make_folder
from pccore.graphs import CapturedStep, check_cuda_graphs
from pccore.optim import END_FACTOR, WarmupCosine, make_optimizer
from pccore.rundir import load_run
from pccore.splits import carve_validation, validation_seed
from pccore.tensorboard import RunLogger

SMOKE_BATCHES = 2
"""Training batches of a --smoke run (one epoch, first seed only)."""
SMOKE_BATCH_SIZE = 8
"""Largest batch of a --smoke run."""
SMOKE_WIDTH = 0.0625
"""Largest architecture `width` of a --smoke run."""
SMOKE_HIDDEN = 32
"""Largest hidden layer of a --smoke run (architectures with a `hidden` list or an integer `width`)."""
SMOKE_DEPTH = 3
"""Largest integer `depth` (number of hidden layers) of a --smoke run."""


# --- entry points --------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """`pccore run RECIPE [...]` and `pccore run --resume RUN_DIR`: train, print a summary, return 0.
    With `--nproc N`, start N data-parallel processes that do so instead (see `pccore.launch`)."""
    if args.resume and (args.recipe or args.overrides or args.out or args.smoke):
        raise UsageError(
            "--resume RUN_DIR continues a run with the recipe saved in RUN_DIR/recipe.toml; "
            "it takes no RECIPE, --set, --out or --smoke (only --device and --nproc)."
        )
    if not args.resume and not args.recipe:
        raise UsageError("pccore run needs a RECIPE (a TOML file), or --resume RUN_DIR to continue a run.")
    if getattr(args, "nproc", None) is not None:
        return _launch(args)
    with distributed.session() as world:
        return _run(args, world)


def _run(args: argparse.Namespace, world: distributed.World) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        recipe, smoke = world.from_rank_zero(lambda: load_run(run_dir), "reading the run's recipe")
        train(recipe, run_dir, device=args.device, smoke=smoke, resume=True)
        return 0
    from pccore.plugins import get_registry
    from pccore.recipe import load_recipe

    registry = get_registry()
    recipe = load_recipe(args.recipe, args.overrides, registry=registry)
    out = Path(args.out) if args.out else None
    train(recipe, out, device=args.device, smoke=args.smoke, registry=registry)
    return 0


def _launch(args: argparse.Namespace) -> int:
    """`pccore run ... --nproc N`: check the recipe (or the run to resume) once, then start N processes
    that each run the same command without --nproc."""
    from pccore.launch import launch_local

    if args.resume:
        load_run(Path(args.resume))
    else:
        from pccore.plugins import get_registry
        from pccore.recipe import load_recipe

        load_recipe(args.recipe, args.overrides, registry=get_registry())
    if getattr(args, "debug", False):
        os.environ["PCCORE_DEBUG"] = "1"
    argv = ["run", *(["--resume", args.resume] if args.resume else [args.recipe])]
    argv += [item for override in args.overrides for item in ("--set", override)]
    argv += ["--device", args.device] if args.device else []
    argv += ["--out", args.out] if args.out else []
    argv += ["--smoke"] if args.smoke else []
    return launch_local(args.nproc, argv)


def train(
    recipe: Any,
    out_dir: Path | None = None,
    *,
    device: str | None = None,
    smoke: bool = False,
    resume: bool = False,
    registry: Any = None,
    stream: TextIO | None = None,
    epoch_end: EpochHook | None = None,
    only_seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train and evaluate `recipe` once per seed and return the aggregate summary (also saved as JSON).

    `out_dir` None makes `run.out_dir/<name>/version_<N>` (under `smoke/` for smoke runs); a given folder
    is used exactly. `device` overrides `run.device`. `smoke` trains a few batches of random data shaped
    like the dataset with a reduced model. `resume` continues the run already in `out_dir`.
    `epoch_end` is called after every epoch (see `EpochReport`); a reason it returns stops the run there.
    `only_seeds` (with `resume`) trains just those of the recipe's seeds, leaving run.json and the
    aggregate summary.json to the caller, so that several processes can train the seeds of one run
    directory (`pccore sweep`); the summary returned then holds only `seeds`.
    """
    if registry is None:
        from pccore.plugins import get_registry

        registry = get_registry()
    world = distributed.join()
    stream = world.rank_zero_stream(sys.stdout if stream is None else stream)
    if device is not None:
        try:
            recipe = attrs.evolve(recipe, run=attrs.evolve(recipe.run, device=device))
        except ValueError as err:  # the schema's check of run.device
            raise UsageError(f"--device {device}: expected {err}") from None
    if smoke:
        recipe = smoke_recipe(recipe)
    torch_device = world.place(resolve_device(recipe.run.device))
    autocast_dtype(recipe, torch_device)  # bf16 off CUDA is refused here, before any folder is made
    check_cuda_graphs(recipe, torch_device, world.size)  # so is run.cuda_graphs where it cannot work
    restarted = False
    if not resume and world.restarts > 0:
        if out_dir is None:
            raise world.shared(UsageError(
                f"torchrun --max-restarts {world.restarts} restarts the processes after a failure, and a restarted "
                "attempt must find the run directory of the failed one: give it with --out DIR (or continue a run "
                "with --resume DIR)."
            ))
        restarted = world.from_rank_zero(
            lambda: rundir.made_by_this_launch(Path(out_dir), recipe, smoke, world.launch_id),
            "looking for the run of a failed attempt",
        )
        resume = restarted
    if resume:
        world.from_rank_zero(lambda: rundir.check_run_dir(out_dir), "opening the run directory")
        run_dir = Path(out_dir)
    seeds = _seeds(recipe) if only_seeds is None else _chosen_seeds(recipe, only_seeds, resume)
    dataset = registry.build("dataset", recipe.data.name, recipe.data.params)
    spec = dataset.spec()
    preflight(recipe, spec, torch_device, registry)  # components built, sizes checked: before any folder
    data = (
        smoke_data(spec, SMOKE_BATCHES, recipe.data.batch_size, seeds[0]) if smoke
        else world.local_zero_first(dataset.load, "loading the dataset")
    )
    data, validation = _validation_data(recipe, data, smoke)
    images = getattr(data, "train_images", None)
    if isinstance(images, torch.Tensor) and images.dim() == 4:  # a training batch the model cannot take
        world.check_batches(recipe.data.batch_size, int(images.shape[0]), recipe.train.max_batches)
        preflight(recipe, spec, torch_device, registry, train_size=int(images.shape[0]), shards=world.size)
    if resume and only_seeds is None:
        world.from_rank_zero(lambda: rundir.update_run_info(run_dir, status="running", error=None, reason=None),
                             "marking the run as running")
    elif not resume:
        run_dir = world.from_rank_zero(lambda: rundir.create_run(recipe, out_dir, smoke, world.launch_id),
                                       "making the run directory")
    context = _RunContext(
        recipe=recipe,
        run_dir=run_dir,
        device=torch_device,
        dtype=DTYPES[recipe.run.dtype],
        spec=spec,
        data=data,
        registry=registry,
        progress=Progress(stream),
        plugins=sorted({f"{p.distribution} {p.version}".strip() for p in registry.plugins}),
        world=world,
        validation=validation,
        epoch_end=epoch_end,
    )
    print(f"run directory: {run_dir}", file=stream, flush=True)
    if world.size > 1:
        context.progress.note(f"data-parallel over {world.size} processes: data.batch_size = "
                              f"{recipe.data.batch_size} is the global batch")
    if restarted:
        context.progress.note(f"torchrun restarted the processes: continuing {run_dir}")
    note = schedule_note(recipe)
    if note:
        context.progress.note(note)
    results = []
    try:
        for seed in seeds:
            results.append(_train_seed(context, seed, resume))
            if context.stop_reason is not None:
                break
        if only_seeds is not None:
            return {"seeds": results}
        summary = aggregate(results)
        summary = {"name": rundir.run_name(recipe), "run_dir": str(run_dir), "device": str(torch_device),
                   "world_size": world.size, **summary}
        if context.stop_reason is not None:
            summary["stopped"] = context.stop_reason
        world.from_rank_zero(lambda: atomic_write_json(run_dir / "summary.json", summary), "writing the summary")
    except (Exception, KeyboardInterrupt) as err:
        context.progress.abort()
        if only_seeds is None:
            rundir.record_failure(run_dir, err)
        raise
    if context.stop_reason is not None:
        world.from_rank_zero(lambda: rundir.update_run_info(run_dir, status="stopped", reason=context.stop_reason),
                             "marking the run as stopped")
    else:
        world.from_rank_zero(lambda: rundir.update_run_info(run_dir, status="finished", reason=None),
                             "marking the run as finished")
    context.progress.final(summary)
    return summary


# --- recipe helpers ------------------------------------------------------------------------------


def smoke_recipe(recipe: Any) -> Any:
    """The recipe reduced for --smoke: first seed, one epoch of two batches of at most 8, a thin model."""
    run = attrs.evolve(recipe.run, seeds=list(_seeds(recipe)[:1]))
    data = attrs.evolve(
        recipe.data,
        batch_size=min(recipe.data.batch_size, SMOKE_BATCH_SIZE),
        eval_batch_size=min(recipe.data.eval_batch_size, SMOKE_BATCH_SIZE),
    )
    train_section = attrs.evolve(recipe.train, epochs=1, max_batches=SMOKE_BATCHES)
    model = attrs.evolve(recipe.model, params=_thin_params(recipe.model.params))
    return attrs.evolve(recipe, run=run, data=data, train=train_section, model=model)


def schedule_note(recipe: Any) -> str | None:
    """A note for runs longer than the learning-rate schedule, whose rate then stays at its minimum (the
    paper's protocol: a 25-epoch schedule, up to 50 epochs), or None."""
    epochs, schedule_epochs = int(recipe.train.epochs), int(recipe.optimizer.schedule_epochs)
    if epochs <= schedule_epochs:
        return None
    return (
        f"note: train.epochs = {epochs} is more than optimizer.schedule_epochs = {schedule_epochs}: the "
        f"learning rate stays at its minimum ({END_FACTOR:g} * optimizer.lr = {END_FACTOR * recipe.optimizer.lr:g}) "
        f"after epoch {schedule_epochs}; set optimizer.schedule_epochs = {epochs} to spread the schedule over "
        "every epoch."
    )


def _thin_params(params: Any) -> Any:
    """Architecture parameters made cheap: a float `width` (a multiplier) capped at SMOKE_WIDTH, an integer
    `width` (units) and each `hidden` size at SMOKE_HIDDEN, an integer `depth` at SMOKE_DEPTH."""
    if params is None or not attrs.has(type(params)):
        return params
    names = {f.name for f in attrs.fields(type(params))}
    changes: dict[str, Any] = {}
    width = getattr(params, "width", None)
    if "width" in names and isinstance(width, float):
        changes["width"] = min(width, SMOKE_WIDTH)
    elif "width" in names and _is_int(width):
        changes["width"] = min(width, SMOKE_HIDDEN)
    hidden = getattr(params, "hidden", None)
    if "hidden" in names and isinstance(hidden, (list, tuple)):
        changes["hidden"] = type(hidden)(min(int(h), SMOKE_HIDDEN) for h in hidden)
    depth = getattr(params, "depth", None)
    if "depth" in names and _is_int(depth):
        changes["depth"] = min(depth, SMOKE_DEPTH)
    return attrs.evolve(params, **changes) if changes else params


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seeds(recipe: Any) -> list[int]:
    """The seeds to train (distinct: the schema checks it)."""
    return [int(s) for s in recipe.run.seeds]


def _chosen_seeds(recipe: Any, only_seeds: Sequence[int], resume: bool) -> list[int]:
    """`only_seeds`, checked: they continue an existing run and are among its recipe's seeds."""
    if not resume:
        raise UsageError("training only some seeds (only_seeds) continues an existing run directory: pass resume")
    chosen = [int(s) for s in only_seeds]
    missing = [s for s in chosen if s not in _seeds(recipe)]
    if missing:
        raise UsageError(f"seeds {missing} are not among the run's seeds {_seeds(recipe)} (run.seeds)")
    return chosen


# --- validation split and the epoch-end hook (tuners) -------------------------------------------


@attrs.frozen
class EpochReport:
    """What an epoch-end hook sees: the seed, the epoch just finished (1-based) and its metrics
    (fractions in [0, 1]; the validation ones are None without a validation split)."""

    seed: int
    epoch: int
    epochs: int
    loss: float
    top1: float
    top5: float
    val_top1: float | None
    val_top5: float | None


EpochHook = Callable[[EpochReport], "str | None"]
"""Called after every epoch, once its checkpoint is written; a string it returns is the reason to stop
the run there (a tuner's pruner), None lets it go on."""


def _validation_data(recipe: Any, data: Any, smoke: bool) -> tuple[Any, Any]:
    """The data to train on and the validation data (None without `data.validation_fraction`). A smoke
    run's random labels are too few to stratify: it validates on its random test split instead."""
    fraction = float(recipe.data.validation_fraction)
    if fraction <= 0:
        return data, None
    if smoke:
        return data, data
    return carve_validation(data, fraction, validation_seed(recipe.data))


# --- one seed ------------------------------------------------------------------------------------


@attrs.define
class _RunContext:
    recipe: Any
    run_dir: Path
    device: torch.device
    dtype: torch.dtype
    spec: Any
    data: Any
    registry: Any
    progress: Progress
    plugins: list[str]
    world: distributed.World = attrs.Factory(distributed.current)
    validation: Any = None
    epoch_end: EpochHook | None = None
    stop_reason: str | None = None


@attrs.define
class SeedState:
    """What a checkpoint carries besides the model, optimizer, schedule and random generators."""

    epochs_done: int = 0
    best_top1: float = 0.0
    best_top5: float = 0.0
    best_epoch: int = 0
    since_best: int = 0
    history: list[dict[str, float]] = attrs.Factory(list)
    wall_s: float = 0.0
    best_val_top1: float = 0.0
    best_val_epoch: int = 0
    test_top1_at_best_val: float = 0.0


def _train_seed(ctx: _RunContext, seed: int, resume: bool) -> dict[str, Any]:
    """Train one seed to the end (or early stop) and return its summary, resuming when asked."""
    recipe, world = ctx.recipe, ctx.world
    seed_dir = ctx.run_dir / f"seed_{seed}"
    summary_path = seed_dir / "summary.json"
    if resume:
        finished = world.from_rank_zero(
            lambda: json.loads(summary_path.read_text()) if summary_path.is_file() else None,
            "reading the summaries of finished seeds",
        )
        if finished is not None:
            ctx.progress.note(f"seed {seed}: finished earlier, skipped")
            return finished
    world.from_rank_zero(lambda: make_folder(seed_dir, "the seed folder"), "making the seed folder")
    checkpoint_path = seed_dir / "checkpoint.pt"

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    asm = assemble(recipe, ctx.spec, ctx.device, registry=ctx.registry)
    world.broadcast_module(asm.blocks)  # every rank starts from rank 0's weights, as with DDP
    channels_last = bool(recipe.run.channels_last)
    shard = (world.rank, world.size)
    train_feeder = BatchFeeder(
        ctx.data, train=True, batch_size=recipe.data.batch_size, device=ctx.device, dtype=ctx.dtype,
        channels_last=channels_last, max_batches=recipe.train.max_batches, shard=shard,
    )
    test_feeder = BatchFeeder(
        ctx.data, train=False, batch_size=recipe.data.eval_batch_size, device=ctx.device, dtype=ctx.dtype,
        channels_last=channels_last, max_batches=0, shard=shard,
    )
    val_feeder = None if ctx.validation is None else BatchFeeder(
        ctx.validation, train=False, batch_size=recipe.data.eval_batch_size, device=ctx.device,
        dtype=ctx.dtype, channels_last=channels_last, max_batches=0, shard=shard,
    )
    batches = len(train_feeder)
    optimizer = make_optimizer([p for p in asm.blocks.parameters() if p.requires_grad], recipe.optimizer,
                               for_graphs=bool(recipe.run.cuda_graphs))
    schedule = WarmupCosine(
        optimizer, recipe.optimizer.lr, recipe.optimizer.schedule_epochs * batches, recipe.optimizer.warmup
    )

    state = SeedState()
    saved = None
    if resume:
        saved = world.from_rank_zero(
            lambda: load_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None, "reading the checkpoint"
        )
    if saved is not None:
        try:
            state = _restore(saved, checkpoint_path, asm, optimizer, schedule, seed)
        except CheckpointError as err:  # every rank restores the same checkpoint: rank 0 reports it
            world.shared(err)
            raise
        ctx.progress.note(f"seed {seed}: resuming after epoch {state.epochs_done}")
    fresh = state.epochs_done == 0
    # A resumed seed hides the events its interrupted epoch logged after the checkpoint (all of them when
    # no epoch had finished).
    purge_step = None if not resume else (0 if fresh else schedule.step_count + 1)
    logger = RunLogger(seed_dir, enabled=bool(recipe.log.tensorboard) and world.is_zero, purge_step=purge_step)
    try:
        if fresh:
            from pccore.recipe import recipe_to_toml

            logger.log_start(recipe_to_toml(recipe), asm.table)
        loop = _SeedLoop(ctx, seed, asm, optimizer, schedule, train_feeder, test_feeder, logger, state, val_feeder)
        loop.run(checkpoint_path, seed_dir / "best.pt")
        from pccore.recipe import flatten_recipe

        hparams = {**flatten_recipe(recipe), "run/seed": seed}
        logger.log_hparams(hparams, state.best_top1, schedule.step_count)
    finally:
        logger.close()

    last = state.history[-1]
    summary = {
        "seed": seed,
        "best_top1": state.best_top1,
        "best_top5": state.best_top5,
        "best_epoch": state.best_epoch,
        "final_top1": last["top1"],
        "final_top5": last["top5"],
        "epochs": state.epochs_done,
        "wall_s": state.wall_s,
        "device": str(ctx.device),
        "pccore_version": pccore.__version__,
        "torch_version": torch.__version__,
        "plugins": ctx.plugins,
        "history": state.history,
    }
    if val_feeder is not None:
        summary.update(
            best_val_top1=state.best_val_top1,
            best_val_epoch=state.best_val_epoch,
            test_top1_at_best_val=state.test_top1_at_best_val,
            validation={"fraction": recipe.data.validation_fraction, "seed": validation_seed(recipe.data),
                        "images": val_feeder.size},
        )
    if ctx.stop_reason is not None:
        summary["stopped"] = ctx.stop_reason
    world.from_rank_zero(lambda: atomic_write_json(summary_path, summary), "writing the seed's summary")
    return summary


def _restore(saved: dict[str, Any], path: Path, asm: Any, optimizer: Any, schedule: Any, seed: int) -> SeedState:
    """Put a checkpoint's model, optimizer, schedule and generators back; a checkpoint that does not fit
    the run's recipe (edited since, or from another run) is a CheckpointError naming the mismatch."""
    try:
        asm.blocks.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["scheduler"])
        state = SeedState(**saved["state"])
        restore_rng_state(saved["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(
            f"the checkpoint {path} does not fit this run's recipe ({type(err).__name__}: {detail[:300]}); if "
            f"{path.parent.parent / 'recipe.toml'} was edited, restore it, or delete {path} to restart seed "
            f"{seed} from scratch"
        ) from err
    return state


class _SeedLoop:
    """The epoch loop of one seed: train, evaluate, track the best, checkpoint, log, stop early."""

    def __init__(self, ctx, seed, asm, optimizer, schedule, train_feeder, test_feeder, logger, state,
                 val_feeder=None) -> None:
        self.ctx = ctx
        self.recipe = ctx.recipe
        self.seed = seed
        self.asm = asm
        self.engine = asm.engine
        self.optimizer = optimizer
        self.schedule = schedule
        self.train_feeder = train_feeder
        self.test_feeder = test_feeder
        self.logger = logger
        self.state = state
        self.layers = len(asm.blocks)
        self.top_k = min(5, ctx.spec.num_classes)
        self.every = int(self.recipe.log.every)
        self.world = ctx.world
        self.replicas = distributed.ReplicaSync(self.world, asm.blocks, asm.components["normalization"])
        self.val_feeder: BatchFeeder | None = val_feeder
        # run.cuda_graphs: full batches replay one captured step (train_step and the optimizer step)
        self.captured = CapturedStep(self.engine, optimizer) if self.recipe.run.cuda_graphs else None

    def run(self, checkpoint_path: Path, best_path: Path) -> None:
        """Epochs until `train.epochs`, or until `train.patience` epochs pass without a better top-1 (the
        validation top-1 when there is a validation split), or until the epoch-end hook stops the run."""
        state = self.state
        epochs = int(self.recipe.train.epochs)
        patience = int(self.recipe.train.patience)
        while state.epochs_done < epochs and state.since_best < patience:
            epoch = state.epochs_done
            start = time.perf_counter()
            self.asm.nudging.begin_epoch(self.seed, epoch)
            loss, energy = self._train_epoch(epoch, epochs, checkpoint_path)
            top1, top5 = evaluate(self.engine, self.test_feeder.epoch(self.seed, 0), self.top_k, self.world)
            val_top1 = val_top5 = None
            if self.val_feeder is not None:
                val_top1, val_top5 = evaluate(self.engine, self.val_feeder.epoch(self.seed, 0), self.top_k,
                                              self.world)
            seconds = time.perf_counter() - start
            improved = self._track_best(epoch + 1, top1, top5, val_top1)
            state.epochs_done = epoch + 1
            state.wall_s += seconds
            entry = {"epoch": epoch + 1, "loss": loss, "top1": top1, "top5": top5, "seconds": seconds}
            if val_top1 is not None:
                entry.update(val_top1=val_top1, val_top5=val_top5)
            state.history.append(entry)
            if self.recipe.log.checkpoints:
                best = best_path if improved else None
                save = functools.partial(self._save, checkpoint_path, best)
                self.world.from_rank_zero(save, "writing the checkpoint")
            self.logger.log_epoch(
                self.schedule.step_count, epoch=epoch + 1, loss=loss, top1=top1, top5=top5, energy=energy,
                val_top1=val_top1, val_top5=val_top5,
            )
            self.ctx.progress.epoch_end(self.seed, epoch + 1, epochs, loss, top1, top5, state, seconds, val_top1)
            if self.ctx.epoch_end is not None:
                report = EpochReport(self.seed, epoch + 1, epochs, loss, top1, top5, val_top1, val_top5)
                # rank 0 decides, so that every process stops after the same epoch
                reason = self.world.from_rank_zero(functools.partial(self.ctx.epoch_end, report),
                                                   "asking whether to stop")
                if reason:
                    self.ctx.stop_reason = str(reason)
                    self.ctx.progress.note(f"seed {self.seed}: stopped after epoch {epoch + 1}: {reason}")
                    return

    def _track_best(self, epoch: int, top1: float, top5: float, val_top1: float | None) -> bool:
        """Update the best test (and validation) top-1; whether the epoch is the new best by the selection
        metric (validation top-1 when there is one, else test top-1), which early stopping and best.pt
        follow."""
        state = self.state
        test_improved = state.best_epoch == 0 or top1 > state.best_top1
        if test_improved:
            state.best_top1, state.best_epoch = top1, epoch
        state.best_top5 = max(state.best_top5, top5)
        improved = test_improved
        if val_top1 is not None:
            improved = state.best_val_epoch == 0 or val_top1 > state.best_val_top1
            if improved:
                state.best_val_top1, state.best_val_epoch, state.test_top1_at_best_val = val_top1, epoch, top1
        state.since_best = 0 if improved else state.since_best + 1
        return improved

    def _save(self, checkpoint_path: Path, best_path: Path | None) -> None:
        checkpoint = self._checkpoint()
        save_checkpoint(checkpoint_path, checkpoint)
        if best_path is not None:
            save_checkpoint(best_path, checkpoint)

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.asm.blocks.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "rng": capture_rng_state(),
            "state": attrs.asdict(self.state),
            "seed": self.seed,
        }

    def _train_epoch(self, epoch: int, epochs: int, checkpoint_path: Path) -> tuple[float, list[float]]:
        """One pass over the training feeder; returns the mean loss and mean per-layer energies."""
        window: list[torch.Tensor] = []
        totals = [0.0] * (self.layers + 1)
        seen = 0
        samples = 0
        start = time.perf_counter()
        batches = len(self.train_feeder)
        batch = 0
        for batch, (x, y) in enumerate(self.train_feeder.epoch(self.seed, epoch), start=1):
            size = self.train_feeder.global_size(batch - 1)  # this rank's shard averages over the global batch
            if self.captured is not None:  # one process (check_cuda_graphs): nothing to sum across ranks
                out = self.captured(x, y)
            else:
                out = self.engine.train_step(x, y, size)
                self.replicas.sum_gradients()
                self.optimizer.step()
            self.schedule.step()
            self.replicas.average_buffers()
            window.append(torch.cat([out.loss.reshape(1).to(out.energy.dtype), out.energy]))
            samples += size
            rate = samples / max(time.perf_counter() - start, 1e-9)
            if batch % self.every == 0:
                rows = self._read(window, epoch, batch, checkpoint_path)
                seen += len(rows)
                totals = [t + sum(r[i] for r in rows) for i, t in enumerate(totals)]
                mean_loss = sum(r[0] for r in rows) / len(rows)
                lr = self.schedule.current_lr()
                self.logger.log_train(self.schedule.step_count, mean_loss, lr)
                self.ctx.progress.log_point(self.seed, epoch + 1, epochs, batch, batches, mean_loss, lr, rate)
                window = []
            else:
                self.ctx.progress.tick(self.seed, epoch + 1, epochs, batch, batches, rate)
        if window:
            rows = self._read(window, epoch, batch, checkpoint_path)
            seen += len(rows)
            totals = [t + sum(r[i] for r in rows) for i, t in enumerate(totals)]
        return totals[0] / seen, [t / seen for t in totals[1:]]

    def _read(self, window: list[torch.Tensor], epoch: int, last_batch: int, checkpoint_path: Path) -> list:
        """Bring a window of per-batch [loss, energy_1..energy_L] rows to the host (one synchronisation;
        in a data-parallel run the sum of the ranks' shares, one all-reduce) and stop with DivergenceError at
        the first non-finite value, on every rank alike."""
        rows = self.world.sum(torch.stack(window).detach(), "adding up the losses").to("cpu", torch.float64)
        finite = torch.isfinite(rows)
        if not bool(finite.all()):
            first_row = int((~finite).any(dim=1).nonzero()[0, 0])
            raise self.world.shared(DivergenceError(
                _divergence_message(
                    self.seed, epoch + 1, last_batch - len(window) + 1 + first_row, rows[first_row].tolist(),
                    checkpoint_path,
                )
            ))
        return rows.tolist()


def _divergence_message(seed: int, epoch: int, batch: int, row: Sequence[float], checkpoint: Path) -> str:
    """Which epoch, batch and layer went non-finite, and what is kept."""
    loss, energies = row[0], row[1:]
    bad = [i for i, v in enumerate(energies, start=1) if not math.isfinite(v)]
    what = (
        f"the energy of layer {bad[0]} is {energies[bad[0] - 1]} "
        f"(the first non-finite layer of {len(energies)})"
        if bad
        else "every layer's energy is finite"
    )
    kept = (
        f"the checkpoint of the last good epoch is kept in {checkpoint}"
        if checkpoint.is_file()
        else "there is no checkpoint to fall back on (no epoch finished, or log.checkpoints is off)"
    )
    return (
        f"training diverged in epoch {epoch}, batch {batch} (seed {seed}): {what}, the loss is {loss}; "
        f"{kept}. Lower inference.lr or optimizer.lr and run again."
    )


def evaluate(
    engine: Any, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], k: int,
    world: distributed.World | None = None,
) -> tuple[float, float]:
    """Top-1 and top-k accuracy (fractions in [0, 1]) of `engine.predict` over the given batches; with
    `world`, over every rank's batches (the correct counts are summed exactly)."""
    correct1: torch.Tensor | None = None
    correctk: torch.Tensor | None = None
    total = 0
    for x, y in batches:
        if y.shape[0] == 0:  # a rank's empty share of a last batch smaller than the number of ranks
            continue
        logits = engine.predict(x)
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y.view(-1, 1))
        c1, ck = hits[:, 0].sum(), hits.any(dim=1).sum()
        correct1 = c1 if correct1 is None else correct1 + c1
        correctk = ck if correctk is None else correctk + ck
        total += int(y.shape[0])
    counts = [int(correct1) if correct1 is not None else 0, int(correctk) if correctk is not None else 0, total]
    if world is not None:
        counts = world.sum_counts(counts, "adding up the test accuracy")
    hits1, hitsk, total = counts
    if total == 0:
        raise UsageError("the test set yields no batch, so the run cannot be evaluated.")
    return hits1 / total, hitsk / total


# --- summaries and output ------------------------------------------------------------------------


def aggregate(seed_summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and population standard deviation (ddof 0) of the seeds' best top-1 and top-5, and with a
    validation split of their best validation top-1 and the test top-1 at that epoch."""
    top1 = [float(s["best_top1"]) for s in seed_summaries]
    top5 = [float(s["best_top5"]) for s in seed_summaries]
    out = {
        "top1_mean": _mean(top1),
        "top1_std": _population_std(top1),
        "top5_mean": _mean(top5),
        "top5_std": _population_std(top5),
    }
    if seed_summaries and all("best_val_top1" in s for s in seed_summaries):
        for key in ("best_val_top1", "test_top1_at_best_val"):
            values = [float(s[key]) for s in seed_summaries]
            out.update({f"{key}_mean": _mean(values), f"{key}_std": _population_std(values)})
    return {**out, "std": "population (ddof 0)", "seeds": list(seed_summaries)}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _population_std(values: Sequence[float]) -> float:
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


class Progress:
    """Progress on stdout: a single redrawn line per epoch on a terminal, plain log lines otherwise."""

    BAR = 20
    REFRESH_S = 0.2

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)()) if tty is None else tty
        self.loss: float | None = None
        self.top1: float | None = None
        self._drawn = 0.0
        self._open = False

    def note(self, text: str) -> None:
        """A line of its own (closing a progress line first)."""
        self._close_line()
        print(text, file=self.stream, flush=True)

    def tick(self, seed: int, epoch: int, epochs: int, batch: int, batches: int, rate: float) -> None:
        """A batch finished: redraw the bar (terminal only, at most every REFRESH_S seconds)."""
        if self.tty and time.perf_counter() - self._drawn >= self.REFRESH_S:
            self._draw(seed, epoch, epochs, batch, batches, rate)

    def log_point(
        self, seed: int, epoch: int, epochs: int, batch: int, batches: int, loss: float, lr: float,
        rate: float,
    ) -> None:
        """A log point: the mean loss since the previous one is known."""
        self.loss = loss
        if self.tty:
            self._draw(seed, epoch, epochs, batch, batches, rate)
            return
        print(
            f"seed {seed} epoch {epoch}/{epochs} batch {batch}/{batches} loss {loss:.4g} lr {lr:.3g} "
            f"{rate:.0f} samples/s",
            file=self.stream,
            flush=True,
        )

    def epoch_end(
        self, seed: int, epoch: int, epochs: int, loss: float, top1: float, top5: float, state: SeedState,
        seconds: float, val_top1: float | None = None,
    ) -> None:
        """The epoch's line: loss, test accuracy (and validation accuracy), best so far, time."""
        self.top1 = top1
        if val_top1 is None:
            best = f"best {state.best_top1:.4f} (epoch {state.best_epoch})"
        else:
            best = f"val_top1 {val_top1:.4f} best val {state.best_val_top1:.4f} (epoch {state.best_val_epoch})"
        line = (
            f"seed {seed} epoch {epoch}/{epochs} loss {loss:.4g} top1 {top1:.4f} top5 {top5:.4f} "
            f"{best} {seconds:.1f}s"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self._open = False
        print(line, file=self.stream, flush=True)

    def abort(self) -> None:
        """End a half-drawn progress line (interruption)."""
        self._close_line()

    def final(self, summary: dict[str, Any]) -> None:
        """A table of the seeds and the mean ± population std line."""
        self._close_line()
        validated = "best_val_top1_mean" in summary
        header = ("seed", "best_top1", "best_top5", "final_top1", "epochs", "wall_s")
        header += ("best_val", "test@val") if validated else ()
        widths = {"seed": 6, "epochs": 6, "wall_s": 8}
        lines = [" ".join(f"{h:>{widths.get(h, 10)}}" for h in header)]
        for s in summary["seeds"]:
            line = (
                f"{s['seed']:>6} {s['best_top1']:>10.4f} {s['best_top5']:>10.4f} {s['final_top1']:>10.4f} "
                f"{s['epochs']:>6} {s['wall_s']:>8.1f}"
            )
            if validated:
                line += f" {s['best_val_top1']:>10.4f} {s['test_top1_at_best_val']:>10.4f}"
            lines.append(line)
        n = len(summary["seeds"])
        at_val = (
            f", test top-1 at the best validation epoch {summary['test_top1_at_best_val_mean']:.4f} ± "
            f"{summary['test_top1_at_best_val_std']:.4f}" if validated else ""
        )
        lines.append(
            f"top-1 {summary['top1_mean']:.4f} ± {summary['top1_std']:.4f}, "
            f"top-5 {summary['top5_mean']:.4f} ± {summary['top5_std']:.4f}{at_val} "
            f"(mean ± population std over {n} seed{'s' if n != 1 else ''}); summary: "
            f"{Path(summary['run_dir']) / 'summary.json'}"
        )
        print("\n".join(lines), file=self.stream, flush=True)

    def _draw(self, seed: int, epoch: int, epochs: int, batch: int, batches: int, rate: float) -> None:
        filled = self.BAR * batch // max(batches, 1)
        bar = "#" * filled + "." * (self.BAR - filled)
        loss = f"{self.loss:.4g}" if self.loss is not None else "-"
        top1 = f"{self.top1:.4f}" if self.top1 is not None else "-"
        self.stream.write(
            f"\r\x1b[2Kseed {seed} epoch {epoch}/{epochs} [{bar}] {batch}/{batches} loss {loss} "
            f"last top1 {top1} {rate:.0f} samples/s"
        )
        self.stream.flush()
        self._drawn = time.perf_counter()
        self._open = True

    def _close_line(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
