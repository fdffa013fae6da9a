"""Complete training runs (`pccore run`): one training per seed, evaluation, early stopping, summaries.

A run directory (made and marked by `pccore.run.rundir`) holds the resolved recipe (`recipe.toml`), a marker
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

Data-parallel runs (torchrun, or `pccore run --nproc N`; see `pccore.parallel.distributed`): every rank trains its
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

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import torch

from pccore.core.devices import resolve_device
from pccore.core.errors import UsageError
from pccore.core.failures import interrupts_held
from pccore.core.optim import END_FACTOR
from pccore.parallel import distributed
from pccore.run import rundir
from pccore.run.assemble import DTYPES, autocast_dtype, preflight
from pccore.run.data import smoke_data
from pccore.run.evaluation import aggregate
from pccore.run.files import atomic_write_json
from pccore.run.graphs import check_cuda_graphs
from pccore.run.progress import Progress
from pccore.run.seeds import EpochHook, EpochReport, RunContext, SeedState, train_seed
from pccore.run.smoke import SMOKE_BATCHES, seeds_of, smoke_recipe
from pccore.run.splits import carve_validation, validation_seed

__all__ = ["EpochHook", "EpochReport", "SeedState", "schedule_note", "train"]


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
        from pccore.core.registry import get_registry

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
    check_cuda_graphs(recipe, torch_device, world.size, registry)  # so is run.cuda_graphs where it cannot work
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
    seeds = seeds_of(recipe) if only_seeds is None else _chosen_seeds(recipe, only_seeds, resume)
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
    context = RunContext(
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
            results.append(train_seed(context, seed, resume))
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
        with interrupts_held():
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


# --- helpers ---------------------------------------------------------------------------------------


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


def _chosen_seeds(recipe: Any, only_seeds: Sequence[int], resume: bool) -> list[int]:
    """`only_seeds`, checked: they continue an existing run and are among its recipe's seeds."""
    if not resume:
        raise UsageError("training only some seeds (only_seeds) continues an existing run directory: pass resume")
    chosen = [int(s) for s in only_seeds]
    missing = [s for s in chosen if s not in seeds_of(recipe)]
    if missing:
        raise UsageError(f"seeds {missing} are not among the run's seeds {seeds_of(recipe)} (run.seeds)")
    return chosen


def _validation_data(recipe: Any, data: Any, smoke: bool) -> tuple[Any, Any]:
    """The data to train on and the validation data (None without `data.validation_fraction`). A smoke
    run's random labels are too few to stratify: it validates on its random test split instead."""
    fraction = float(recipe.data.validation_fraction)
    if fraction <= 0:
        return data, None
    if smoke:
        return data, data
    return carve_validation(data, fraction, validation_seed(recipe.data))
