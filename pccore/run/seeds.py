"""One seed of a run: its model and optimizer, the epoch loop (train, evaluate, track the best, checkpoint,
log, stop early or when the epoch-end hook says so) and its summary; resuming from its checkpoint."""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from pccore.core.errors import DivergenceError
from pccore.core.optim import WarmupCosine, WeightStepper, make_optimizer
from pccore.core.version import __version__
from pccore.parallel import distributed
from pccore.run.assemble import assemble
from pccore.run.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pccore.run.data import BatchFeeder
from pccore.run.evaluation import evaluate
from pccore.run.files import atomic_write_json, make_folder
from pccore.run.graphs import CapturedStep
from pccore.run.progress import Progress
from pccore.run.splits import validation_seed
from pccore.run.tensorboard import RunLogger


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


@attrs.define
class RunContext:
    """What every seed of a run shares."""

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


def train_seed(ctx: RunContext, seed: int, resume: bool) -> dict[str, Any]:
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
    # An inference algorithm may take several weight steps per batch (incremental PC: T); the schedule
    # counts every one of them.
    schedule = WarmupCosine(
        optimizer, recipe.optimizer.lr,
        recipe.optimizer.schedule_epochs * batches * asm.engine.weight_steps_per_batch, recipe.optimizer.warmup,
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
        loop = SeedLoop(ctx, seed, asm, optimizer, schedule, train_feeder, test_feeder, logger, state, val_feeder)
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
        "pccore_version": __version__,
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


class SeedLoop:
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
        self.weight_step = WeightStepper(optimizer, schedule, self.replicas.sum_gradients)
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
                self.schedule.step()
            else:
                out = self.engine.train_step(x, y, size, weight_step=self.weight_step)
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
