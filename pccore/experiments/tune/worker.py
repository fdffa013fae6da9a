"""One tuning worker: it takes trials of a study one at a time until the study has enough finished trials.

Each trial is an ordinary `pccore run` of the study's recipe with `[set]` and the trial's sampled values
applied, in `OUT/trials/<number>/` (its output in `train.log` there). Its value is the validation top-1 of
its best epoch (the mean over the recipe's seeds); the first seed reports its validation top-1 every
epoch to the pruner, which may stop the trial early (PRUNED). A diverging trial is PRUNED, a sampled value
the recipe rejects (or too large for the device) FAILs the trial; either way the reason is kept in the
trial's `reason` attribute and the study goes on. Any other error stops the worker.

Optuna runs each trial (`Study.optimize` for one trial at a time: its heartbeat, its bookkeeping); before
each, the worker counts the finished (COMPLETE + PRUNED) and running trials under a lock shared by the
workers of one output folder and held until the new trial is registered, so local workers never start
more trials than the study needs. Workers on other machines count on their own; at worst a study then
ends with one trial more than asked for per machine that started one at the same moment.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import attrs
import numpy as np
import optuna
from optuna.trial import TrialState

from pccore.core.errors import DivergenceError, PccoreError, UsageError
from pccore.experiments.tune.storage import (
    WORKER_ATTR,
    fail_stale_trials,
    journal_heartbeat,
    reporting_storage_loss,
    storage_trouble,
    worker_name,
)
from pccore.experiments.tune.study import Range, Study
from pccore.run.files import make_folder

REASON_ATTR = "reason"
RUN_DIR_ATTR = "run_dir"
TEST_ATTR = "test_top1_at_best_val"
STUDY_ATTR = "pccore_study"
LOCK_FILE = ".tune.lock"
POLL_S = 1.0
"""How often a worker that waits for other workers' running trials looks again."""
FAILURES_IN_A_ROW = 5
"""A worker whose trials fail this many times in a row stops: the study, not a sampled value, is wrong."""
STATE_WORDS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


class TrialFailed(Exception):
    """A trial the recipe or the device refused; the trial is FAILED with this message and the study
    goes on."""


def make_sampler(kind: str, seed: int, startup_trials: int = 10) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded; TPE samples at random for its first `startup_trials` trials."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)


def make_pruner(kind: str, epochs: int | None) -> optuna.pruners.BasePruner:
    """The study's pruner; Hyperband's largest resource is the recipe's epochs (when not searched)."""
    if kind == "median":
        return optuna.pruners.MedianPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto")
    return optuna.pruners.NopPruner()


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number`: from (study seed, trial number) alone, so that parallel
    workers and machines draw different values and one worker's study is reproducible."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def open_study(study: Study, storage: Any, epochs: int | None) -> optuna.Study:
    """The study in `storage`, created on first use (and found again by name afterwards)."""
    settings = study.settings
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # pccore prints its own line per trial
    handle = optuna.create_study(
        study_name=study.name, storage=storage,
        sampler=make_sampler(settings.sampler, settings.seed, settings.startup_trials),
        pruner=make_pruner(settings.pruner, epochs), direction=settings.direction, load_if_exists=True,
    )
    if handle.direction.name.lower() != settings.direction:
        raise UsageError(
            f"the study {study.name!r} in this storage was created to {handle.direction.name.lower()}; "
            f"{study.path} says direction = {settings.direction!r} (give the study another name, or fix the file)"
        )
    if STUDY_ATTR not in handle.user_attrs:
        handle.set_user_attr(STUDY_ATTR, study.as_dict())
    return handle


@attrs.define
class Counts:
    """The study's trials by state."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count_trials(handle: optuna.Study) -> Counts:
    counts = Counts()
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for trial in handle.get_trials(deepcopy=False):
        setattr(counts, names[trial.state], getattr(counts, names[trial.state]) + 1)
    return counts


@contextlib.contextmanager
def _folder_lock(out_dir: Path) -> Iterator[Callable[[], None]]:
    """An exclusive lock shared by the workers of one output folder; yields a function that releases it
    early (the worker releases it once its new trial is registered)."""
    import fcntl

    handle = open(out_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held across the trial's start
    fcntl.flock(handle, fcntl.LOCK_EX)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    try:
        yield release
    finally:
        release()


@attrs.define
class Worker:
    """Runs trials of `study` (kept in `storage`) in `out_dir/trials/<number>` until `target` are finished."""

    study: Study
    storage: Any
    out_dir: Path
    target: int
    grace_period: int
    device: str | None = None
    progress: TextIO | None = None
    registry: Any = None
    epochs: int | None = None
    handle: optuna.Study | None = None
    failures: list[str] = attrs.Factory(list)
    """Why this worker's latest trials failed, since its last trial that did not fail."""
    watching: set[int] = attrs.Factory(set)
    """Other workers' trials seen running at the last check (this worker runs none while it checks)."""
    reported: set[int] = attrs.Factory(set)
    """The lost trials already reported."""

    def run(self) -> Counts:
        """Take trials until the study has `target` finished ones; the final counts. The database not
        answering stops the worker with StorageUnavailable (at the latest when its running trial next
        reports, at the end of an epoch)."""
        with reporting_storage_loss(self.storage):
            return self._run()

    def _run(self) -> Counts:
        self.handle = open_study(self.study, self.storage, self.epochs)
        make_folder(self.out_dir / "trials", "the trials folder")
        while True:
            if len(self.failures) >= FAILURES_IN_A_ROW:
                raise PccoreError(
                    f"{len(self.failures)} trials in a row failed, the last because: {self.failures[-1]}; the worker "
                    "stops (the finished trials are kept): fix the study file or its recipe and run the command "
                    "again to continue the study"
                )
            for number in self._lost_trials():
                self._say(f"trial {number} failed: its worker stopped (no heartbeat for {self.grace_period} s)")
            with _folder_lock(self.out_dir) as release:
                counts = count_trials(self.handle)
                if counts.finished >= self.target:
                    return counts
                if counts.waiting == 0 and counts.finished + counts.running >= self.target:
                    release()
                    time.sleep(POLL_S)  # the running trials may still fail: then more are needed
                    continue
                self._run_one(release)

    def _lost_trials(self) -> list[int]:
        """The trials of other workers that are now failed for want of a heartbeat, each reported once: those
        this check fails, and those found running before and failed since without a reason of their own
        (Optuna fails stale trials too, when a worker starts its next trial)."""
        failed = set(fail_stale_trials(self.handle, self.storage, self.grace_period))
        trials = self.handle.get_trials(deepcopy=False)
        failed |= {t.number for t in trials if t.number in self.watching and t.state == TrialState.FAIL
                   and REASON_ATTR not in t.user_attrs}
        self.watching = {t.number for t in trials if t.state == TrialState.RUNNING}
        lost = sorted(failed - self.reported)
        self.reported.update(lost)
        return lost

    def _run_one(self, release: Callable[[], None]) -> None:
        """One trial through Optuna (the lock is released once it is registered)."""

        def objective(trial: optuna.Trial) -> float:
            release()
            return self._objective(trial)

        try:
            self.handle.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[self._report])
        except optuna.exceptions.UpdateFinishedTrialError:
            self._say("note: a trial of this worker had been marked failed by another worker (its heartbeat "
                      "was late); the study goes on")

    def _objective(self, trial: optuna.Trial) -> float:
        from pccore.run import training

        trial.set_user_attr(WORKER_ATTR, worker_name())
        settings = self.study.settings
        self.handle.sampler = make_sampler(settings.sampler, trial_seed(settings.seed, trial.number),
                                           settings.startup_trials)
        params = {key: _suggest(trial, key, entry) for key, entry in self.study.space.items()}
        run_dir = make_folder(self.out_dir / "trials" / str(trial.number), "the trial's run directory")
        trial.set_user_attr(RUN_DIR_ATTR, str(run_dir.absolute()))
        with journal_heartbeat(trial, self.storage, self.grace_period), \
                open(run_dir / "train.log", "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
            try:
                recipe = self.study.recipe_for(params, f"trial {trial.number}:", self.registry)
                summary = training.train(recipe, run_dir, device=self.device, registry=self.registry, stream=log,
                                         epoch_end=self._pruning_hook(trial, recipe))
            except DivergenceError as err:
                raise self._pruned(trial, str(err)) from None
            except UsageError as err:
                raise self._failed(trial, str(err)) from None
            except Exception as err:
                if storage_trouble(err):
                    raise  # nothing more can be recorded: the worker stops (see run)
                if _out_of_memory(err):
                    raise self._failed(trial, f"out of memory: {' '.join(str(err).split())[:300]}") from None
                message = str(err) if isinstance(err, PccoreError) else f"{type(err).__name__}: {err}"
                trial.set_user_attr(REASON_ATTR, " ".join(message.split()))
                raise
            except KeyboardInterrupt:
                trial.set_user_attr(REASON_ATTR, "interrupted")
                raise
        if "stopped" in summary:
            raise self._pruned(trial, summary["stopped"])
        seeds = summary["seeds"]
        trial.set_user_attr(TEST_ATTR, float(np.mean([s["test_top1_at_best_val"] for s in seeds])))
        return float(np.mean([s["best_val_top1"] for s in seeds]))

    def _pruning_hook(self, trial: optuna.Trial, recipe: Any) -> Callable[[Any], str | None]:
        """Report the first seed's validation top-1 every epoch; the pruner's verdict stops the run."""
        first_seed = int(recipe.run.seeds[0])

        def hook(report: Any) -> str | None:
            if report.seed != first_seed or report.val_top1 is None:
                return None
            trial.report(report.val_top1, report.epoch)
            if trial.should_prune():
                return (f"pruned by the {self.study.settings.pruner} pruner after epoch {report.epoch} "
                        f"(validation top-1 {report.val_top1:.4f})")
            return None

        return hook

    def _pruned(self, trial: optuna.Trial, reason: str) -> optuna.TrialPruned:
        trial.set_user_attr(REASON_ATTR, " ".join(reason.split()))
        return optuna.TrialPruned(reason)

    def _failed(self, trial: optuna.Trial, reason: str) -> TrialFailed:
        trial.set_user_attr(REASON_ATTR, " ".join(reason.split()))
        return TrialFailed(reason)

    def _report(self, handle: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """The progress line of a finished trial: its state and value, the best so far, the count."""
        if trial.state == TrialState.FAIL:
            self.failures.append(trial.user_attrs.get(REASON_ATTR, "unknown"))
        else:
            self.failures.clear()
        counts = count_trials(handle)
        state = STATE_WORDS.get(trial.state, trial.state.name)
        if trial.state == TrialState.COMPLETE:
            what = f"value {trial.value:.4f}"
        else:
            what = trial.user_attrs.get(REASON_ATTR, "no reason recorded")
        try:
            best = f"best {handle.best_value:.4f} (trial {handle.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        params = " ".join(f"{key}={_shown(value)}" for key, value in trial.params.items())
        self._say(f"trial {trial.number} {state}: {what} | {best} | {counts.finished}/{self.target} finished"
                  f" | {params}")

    def _say(self, line: str) -> None:
        """One progress line, written at once: print writes the line and its newline separately, and on an
        unbuffered stderr (--json) the lines of workers writing at the same moment ran into each other."""
        if self.progress is not None:
            self.progress.write(line + "\n")
            self.progress.flush()


def _suggest(trial: optuna.Trial, key: str, entry: Any) -> Any:
    if isinstance(entry, Range):
        if entry.integer:
            return trial.suggest_int(key, entry.low, entry.high, step=entry.step or 1, log=entry.log)
        return trial.suggest_float(key, entry.low, entry.high, step=entry.step, log=entry.log)
    return trial.suggest_categorical(key, list(entry.choices))


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, MemoryError))
