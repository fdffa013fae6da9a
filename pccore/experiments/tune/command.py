"""`pccore tune STUDY` (search; `--workers N` local worker processes) and `pccore tune show DIR_OR_STORAGE`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

import optuna

from pccore.core.errors import PccoreError, UsageError
from pccore.experiments.tune import DEFAULT_GRACE_PERIOD
from pccore.experiments.tune.results import SUMMARY_FILE, show_data, show_text, write_figures, write_results
from pccore.experiments.tune.storage import (
    DEFAULT_STORAGE_FILE,
    STORAGE_LOST_EXIT,
    StorageUnavailable,
    describe,
    open_storage,
    reporting_storage_loss,
    storage_failure,
)
from pccore.experiments.tune.study import check_study, read_study
from pccore.experiments.tune.worker import Worker, count_trials, open_study
from pccore.parallel.processes import check_workers, device_for, parse_devices, stop, threads_per_worker, worker_env
from pccore.run.files import make_folder


def tune_command(args: argparse.Namespace) -> int:
    """`pccore tune STUDY [...]` or `pccore tune show DIR_OR_STORAGE [...]`."""
    if args.study == "show":
        return show_command(args)
    if args.target is not None:
        raise UsageError(f"pccore tune takes one STUDY file, got also {args.target!r} (or did you mean "
                         "pccore tune show DIR_OR_STORAGE?)")
    for option in ("plot", "study_name"):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option.replace('_name', '').replace('_', '-')} belongs to pccore tune show")
    return run_command(args)


def _check_trial_folders(handle: optuna.Study, out_dir: Path, storage: str) -> None:
    """Refuse an output folder whose trials/ holds runs that are not trials of this study (a folder
    reused with another storage), before a new trial could collide with one."""
    known = {t.number for t in handle.get_trials(deepcopy=False)}
    trials = out_dir / "trials"
    if not trials.is_dir():
        return
    foreign = sorted(int(p.name) for p in trials.iterdir()
                     if p.name.isdigit() and int(p.name) not in known and (p / "recipe.toml").exists())
    if foreign:
        raise UsageError(
            f"{trials} holds runs ({', '.join(map(str, foreign[:5]))}) that are not trials of the study "
            f"{handle.study_name!r} in {storage}: the folder belongs to another study or storage; choose another "
            "--out, or pass the storage it was made with (--storage)"
        )


def run_command(args: argparse.Namespace) -> int:
    """`pccore tune STUDY`: check the study file (`--check` stops there), or run it (a worker process that
    `--workers N` started runs its trials only). Returns 0, or 1 when a worker process failed."""
    if args.worker:
        return _worker_process(args)
    progress = sys.stderr if args.json else sys.stdout
    if args.check:
        study = read_study(args.study, args.trials)
        check_study(study)
        print(f"OK {study.path} (study {study.name}): recipe {study.recipe_path}, {study.settings.trials} finished "
              f"trials wanted, searching {', '.join(study.space)}")
        return 0
    summary = search(args.study, trials=args.trials, workers=args.workers, devices=args.devices,
                     storage=args.storage, out=args.out, grace_period=args.grace_period, progress=progress,
                     debug=bool(args.debug))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_final_text(summary), flush=True)
    for index, code in summary.get("failed_workers", {}).items():
        print(f"pccore: worker {index} of {args.workers} stopped with exit status {code} (its message is above)",
              file=sys.stderr)
    return 1 if summary.get("failed_workers") else 0


def search(
    study_file: str | os.PathLike[str],
    *,
    trials: int | None = None,
    workers: int = 1,
    devices: str | None = None,
    storage: str | None = None,
    out: str | os.PathLike[str] | None = None,
    grace_period: int = DEFAULT_GRACE_PERIOD,
    progress: TextIO | None = None,
    registry: Any = None,
    debug: bool = False,
) -> dict[str, Any]:
    """Run the study in `study_file` until it has its finished trials (`trials` overrides the file's
    count), with `workers` local processes (1: in this process) on `devices` (`"cuda:0,cuda:1"`,
    round-robin); write `summary.json` and `best.toml` into `out` (default `run.out_dir/<study name>`) and
    return the summary. `storage` is an SQLAlchemy URL or `journal:PATH` (default: `out/study.db`).
    Progress lines go to `progress` (default stdout). A worker process that failed is listed under
    `failed_workers` (worker number: exit status)."""
    if registry is None:
        from pccore.core.registry import get_registry

        registry = get_registry()
    progress = sys.stdout if progress is None else progress
    check_workers(workers)
    if grace_period < 1:
        raise UsageError(f"--grace-period {grace_period}: expected at least 1 (seconds)")
    study = read_study(study_file, trials)
    base = check_study(study, registry)
    target = int(study.settings.trials)
    device_list = parse_devices(devices)
    out_dir = make_folder(Path(out) if out else Path(base.run.out_dir) / study.name,
                          "the study's output folder (--out)")
    opened = open_storage(storage, out_dir, grace_period)
    shown = describe(storage, out_dir)
    epochs = None if "train.epochs" in study.space else int(base.train.epochs)
    with reporting_storage_loss(shown):
        handle = open_study(study, opened, epochs)
        _check_trial_folders(handle, out_dir, shown)
        counts = count_trials(handle)
    print(f"study {study.name}: {counts.finished} of {target} finished trials so far; storage {shown}; "
          f"trials in {out_dir / 'trials'}", file=progress, flush=True)
    failed: dict[int, int] = {}
    try:
        if workers == 1:
            Worker(study, opened, out_dir, target, grace_period, device_for(device_list, 0), progress, registry,
                   epochs).run()
        else:
            command = [str(study.path.absolute()), "--out", str(out_dir.absolute()), "--trials", str(target),
                       "--grace-period", str(grace_period)] + ([] if storage is None else ["--storage", storage])
            failed = _run_workers(command, workers, device_list, progress is sys.stderr, debug)
    except (PccoreError, KeyboardInterrupt):
        with contextlib.suppress(Exception):  # best effort: the error that stopped the study is what to report
            write_results(study, handle, out_dir, target, shown, registry)
        raise
    lost = sorted(index for index, code in failed.items() if code == STORAGE_LOST_EXIT)
    if lost:  # those workers said nothing: this process reports the storage once, for all of them
        try:
            write_results(study, handle, out_dir, target, shown, registry)
        except Exception as err:
            if storage_failure(err) is None:
                raise
            raise StorageUnavailable(shown, err, workers=len(lost)) from err
        raise StorageUnavailable(shown, workers=len(lost))
    with reporting_storage_loss(shown):
        summary = write_results(study, handle, out_dir, target, shown, registry)
    summary["out_dir"] = str(out_dir)
    if failed:
        summary["failed_workers"] = failed
    return summary


def _worker_process(args: argparse.Namespace) -> int:
    """One of the processes `--workers N` started: take trials until the study has its finished ones."""
    from pccore.core.registry import get_registry

    if args.worker_threads:
        import torch

        torch.set_num_threads(args.worker_threads)
    registry = get_registry()
    study = read_study(args.study, args.trials)
    base = check_study(study, registry)
    out_dir = Path(args.out)
    epochs = None if "train.epochs" in study.space else int(base.train.epochs)
    progress = sys.stderr if args.json else sys.stdout
    parent = os.getppid()
    try:
        Worker(study, open_storage(args.storage, out_dir, args.grace_period), out_dir, int(study.settings.trials),
               args.grace_period, device_for(parse_devices(args.devices), 0), progress, registry, epochs).run()
    except StorageUnavailable:
        if os.getppid() != parent:  # the `pccore tune` that started this worker is gone: say it here
            raise
        return STORAGE_LOST_EXIT  # that command reports it, once for all its workers
    return 0


def _run_workers(arguments: list[str], workers: int, devices: list[str], quiet_stdout: bool,
                 debug: bool) -> dict[int, int]:
    """Start `workers` worker processes (`pccore tune ... --worker`; devices round-robin, the CPU cores
    shared out) and wait for all of them; the exit status of each that failed, by worker number."""
    threads = threads_per_worker(workers)
    env = worker_env(threads)
    if debug:
        env["PCCORE_DEBUG"] = "1"
    processes = []
    for index in range(workers):
        command = [sys.executable, "-m", "pccore.cli", "tune", *arguments, "--worker", "--worker-threads",
                   str(threads)]
        if devices:
            command += ["--devices", device_for(devices, index)]
        if quiet_stdout:
            command.append("--json")
        processes.append(subprocess.Popen(command, env=env))
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:
        stop(processes)
        raise
    return {index + 1: code for index, code in enumerate(codes) if code != 0}


def _final_text(summary: dict[str, Any]) -> str:
    lines = [
        f"study {summary['study']}: {summary['n_complete']} complete, {summary['n_pruned']} pruned, "
        f"{summary['n_failed']} failed ({summary['n_complete'] + summary['n_pruned']} finished of "
        f"{summary['trials_wanted']} wanted)"
    ]
    if summary["best_trial"] is None:
        lines.append("no complete trial: nothing to report as best")
    else:
        test = summary.get("best_test_top1_at_best_val")
        at = f" (test top-1 at its best validation epoch {test:.4f})" if test is not None else ""
        lines.append(f"best: trial {summary['best_trial']}, validation top-1 {summary['best_value']:.4f}{at}")
        lines += [f"  {key} = {value!r}" for key, value in summary["best_params"].items()]
        lines.append(f"best recipe: {summary['best_recipe']}   (pccore run {summary['best_recipe']})")
    out_dir = summary["out_dir"]
    lines.append(f"summary: {Path(out_dir) / SUMMARY_FILE}; top trials and importances: pccore tune show {out_dir}")
    return "\n".join(lines)


# --- pccore tune show ----------------------------------------------------------------------------


def _locate(target: str, name: str | None) -> tuple[Any, str, str]:
    """The storage, its description and the study name for `pccore tune show TARGET [--study NAME]`."""
    folder = Path(target)
    storage_text: str | None = target
    if folder.is_dir():
        summary_path = folder / SUMMARY_FILE
        recorded: dict[str, Any] = {}
        if summary_path.is_file():
            try:
                recorded = json.loads(summary_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                recorded = {}
        if (folder / DEFAULT_STORAGE_FILE).is_file():
            storage_text = None
        elif recorded.get("storage"):
            storage_text = recorded["storage"]
        else:
            raise UsageError(
                f"{folder} holds no {DEFAULT_STORAGE_FILE} and no {SUMMARY_FILE} naming a storage; give the "
                "storage itself: pccore tune show postgresql://... or journal:PATH"
            )
        name = name or recorded.get("study")
    elif not (target.startswith("journal:") or "://" in target):
        raise UsageError(f"pccore tune show {target}: not a folder, an SQLAlchemy URL or journal:PATH")
    storage = open_storage(storage_text, folder, DEFAULT_GRACE_PERIOD)
    shown = describe(storage_text, folder)
    with reporting_storage_loss(shown):
        names = optuna.study.get_all_study_names(storage)
    if name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise UsageError(f"{shown} holds {len(names)} studies ({listed}): choose one with --study NAME")
        name = names[0]
    elif name not in names:
        raise UsageError(f"{shown} holds no study {name!r}; its studies: {', '.join(names) or 'none'}")
    return storage, shown, name


def show_command(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    """Print the top trials and parameter importances of a study; `--plot DIR` writes Optuna's figures."""
    stream = sys.stdout if stream is None else stream
    if args.target is None:
        raise UsageError("pccore tune show needs the study's output folder or its storage (DIR_OR_STORAGE)")
    if args.top < 1:
        raise UsageError(f"--top {args.top}: expected at least 1")
    storage, shown, name = _locate(args.target, args.study_name)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with reporting_storage_loss(shown):
        handle = optuna.load_study(study_name=name, storage=storage)
        data = show_data(handle, args.top)
        if args.plot is not None:
            folder = Path(args.plot)
            if not folder.is_dir():
                raise UsageError(f"--plot {folder}: not an existing folder (the figures are written into it)")
            data["figures"] = [str(p) for p in write_figures(handle, folder)]
    if args.json:
        print(json.dumps(data, indent=2), file=stream)
    else:
        text = show_text(data)
        if args.plot is not None:
            text += "\nfigures: " + (", ".join(data["figures"]) or "none yet (no complete trial)")
        print(text, file=stream)
    return 0
