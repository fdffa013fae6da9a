"""`pccore sweep RECIPE... --seeds 0-4 --out DIR`: every recipe for every seed, each (recipe, seed) in its
own process, N at a time.

DIR/<run name>/ is an ordinary pccore run directory for each recipe (recipe.toml with the sweep's seeds,
run.json, the aggregate summary.json once every seed has finished) and DIR/<run name>/seed_<n>/ the seed's
folder, written by its own `pccore` process (its output in seed_<n>/train.log), so that a crash, a
divergence or a timeout of one run leaves the others going. A seed with a summary.json is finished and
skipped; any other seed resumes from its last checkpoint, so running the same sweep again continues it
(and `pccore run --resume DIR/<run name>` works on each run directory too). The exit status is 0 when
every seed finished, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from pccore.core.errors import UsageError
from pccore.parallel.processes import check_workers, device_for, parse_devices, stop, threads_per_worker, worker_env
from pccore.run.files import atomic_write_bytes, atomic_write_json, make_folder

POLL_S = 0.2
"""How often the sweep looks at its running processes."""
LOG_FILE = "train.log"
_SEED_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")


def parse_seeds(text: str) -> list[int]:
    """`0-4`, `0,1,2` or a mix (`0-2,7`) as a list of distinct seeds in the order given."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        span = _SEED_RANGE.fullmatch(part)
        if span:
            low, high = int(span.group(1)), int(span.group(2))
            if low > high:
                raise UsageError(f"--seeds {text}: the range {part} runs backwards; write {high}-{low}")
            values = list(range(low, high + 1))
        elif part.isdigit():
            values = [int(part)]
        else:
            raise UsageError(f"--seeds {text}: {part!r} is not a seed (an integer >= 0) or a range such as 0-4")
        for seed in values:
            if seed in seeds:
                raise UsageError(f"--seeds {text}: seed {seed} is given twice")
            seeds.append(seed)
    return seeds


@attrs.define
class SweepRun:
    """One recipe of the sweep: its run directory and what became of each seed ("finished earlier",
    "finished", or why it did not finish)."""

    name: str
    source: str
    run_dir: Path
    seeds: list[int]
    outcome: dict[int, str] = attrs.Factory(dict)

    def pending(self) -> list[int]:
        return [s for s in self.seeds if s not in self.outcome]

    def succeeded(self) -> bool:
        return all(self.outcome.get(s, "").startswith("finished") for s in self.seeds)


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two recipe dicts (run.seeds aside)."""
    keys = []
    for section in sorted(set(saved) | set(wanted)):
        old, new = saved.get(section, {}), wanted.get(section, {})
        for key in sorted(set(old) | set(new)):
            if (section, key) != ("run", "seeds") and old.get(key) != new.get(key):
                keys.append(f"{section}.{key}")
    return keys


def prepare_run(recipe: Any, source: str, out: Path, seeds: list[int], registry: Any) -> SweepRun:
    """The run directory of one recipe under `out`: made with the sweep's seeds, or an existing one of the
    same recipe, its seeds extended by any new ones (a run of another recipe there is refused)."""
    from pccore.recipe import load_recipe, recipe_to_dict, recipe_to_toml
    from pccore.run.rundir import RUN_INFO, start_run

    run_dir = out / recipe.run.name
    saved_path = run_dir / "recipe.toml"
    if not saved_path.is_file():
        start_run(attrs.evolve(recipe, run=attrs.evolve(recipe.run, seeds=list(seeds))), run_dir)
        return SweepRun(recipe.run.name, source, run_dir, list(seeds))
    info_path = run_dir / RUN_INFO
    if info_path.is_file() and json.loads(info_path.read_text(encoding="utf-8")).get("smoke"):
        raise UsageError(f"{run_dir} holds a --smoke run; choose another --out for the sweep")
    saved = load_recipe(saved_path, registry=registry)
    changed = _differences(recipe_to_dict(saved), recipe_to_dict(recipe))
    if changed:
        raise UsageError(
            f"{run_dir} holds a run of a different recipe than {source} (they differ in {', '.join(changed[:5])}); "
            "choose another --out, or move that run directory away"
        )
    union = list(saved.run.seeds) + [s for s in seeds if s not in saved.run.seeds]
    if union != list(saved.run.seeds):
        extended = attrs.evolve(saved, run=attrs.evolve(saved.run, seeds=union))
        atomic_write_bytes(saved_path, recipe_to_toml(extended).encode("utf-8"))
    run = SweepRun(recipe.run.name, source, run_dir, list(seeds))
    for seed in seeds:
        if (run_dir / f"seed_{seed}" / "summary.json").is_file():
            run.outcome[seed] = "finished earlier"
    return run


def plan(recipes: Sequence[str | os.PathLike[str]], out: Path, seeds: str | None, overrides: Sequence[str],
         registry: Any) -> list[SweepRun]:
    """Every recipe loaded (with the overrides) and checked, and its run directory under `out` prepared."""
    from pccore.recipe import load_recipe

    loaded = []
    names: dict[str, str] = {}
    for source in map(str, recipes):
        recipe = load_recipe(source, overrides, registry=registry)
        if recipe.run.name in names:
            raise UsageError(
                f"{source} and {names[recipe.run.name]} both have the run name {recipe.run.name!r}, so they would "
                "share DIR/<run name>; give one of them another run.name"
            )
        names[recipe.run.name] = source
        chosen = parse_seeds(seeds) if seeds is not None else [int(s) for s in recipe.run.seeds]
        loaded.append((recipe, source, chosen))
    out = make_folder(Path(out), "the sweep folder (--out)")
    return [prepare_run(recipe, source, out, chosen, registry) for recipe, source, chosen in loaded]


@attrs.define
class _Active:
    run: SweepRun
    seed: int
    process: subprocess.Popen
    log: TextIO
    started: float


def _launch(run: SweepRun, seed: int, device: str | None, threads: int, debug: bool) -> _Active:
    seed_dir = make_folder(run.run_dir / f"seed_{seed}", "the seed folder")
    log = open(seed_dir / LOG_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed when the process ends
    log.write(f"--- pccore sweep, {time.strftime('%Y-%m-%d %H:%M:%S')}: {run.name} seed {seed} ---\n")
    log.flush()
    command = [sys.executable, "-m", "pccore.cli", "sweep", str(run.run_dir.absolute()), "--train-seed", str(seed),
               "--worker-threads", str(threads)]
    if device is not None:
        command += ["--devices", device]
    env = worker_env(threads)
    if debug:
        env["PCCORE_DEBUG"] = "1"
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return _Active(run, seed, process, log, time.monotonic())


def _last_error(log_path: Path) -> str:
    """The last `pccore: error:` line a seed's process wrote, or its last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    errors = [line for line in lines if line.startswith("pccore: error:")]
    text = errors[-1] if errors else next((line for line in reversed(lines) if line), "(empty log)")
    return text.removeprefix("pccore: error: ")


def _finish(active: _Active, code: int, timed_out: float | None) -> str:
    """The outcome of a seed's process and the progress line that says it."""
    active.log.close()
    run, seed = active.run, active.seed
    seconds = time.monotonic() - active.started
    summary_path = run.run_dir / f"seed_{seed}" / "summary.json"
    if timed_out is not None:
        run.outcome[seed] = f"timed out after {timed_out:g} s"
        return (f"timed out {run.name} seed {seed} after {timed_out:g} s: its last checkpoint is kept; run the "
                "sweep again to continue it")
    if code == 0 and summary_path.is_file():
        run.outcome[seed] = "finished"
        seed_summary = json.loads(summary_path.read_text(encoding="utf-8"))
        epochs = seed_summary["epochs"]
        return (f"done {run.name} seed {seed}: best top-1 {seed_summary['best_top1']:.4f} "
                f"({epochs} epoch{'s' if epochs != 1 else ''}, {seconds:.0f} s)")
    reason = _last_error(run.run_dir / f"seed_{seed}" / LOG_FILE)
    run.outcome[seed] = f"failed (exit {code}): {reason}"
    return f"FAILED {run.name} seed {seed} (exit {code}): {reason}"


def _finalize(run: SweepRun) -> None:
    """Once no seed of a run is left to try: the aggregate summary.json when every seed of the run
    directory has finished, and run.json's status."""
    from pccore.recipe import load_recipe
    from pccore.run.rundir import record_status
    from pccore.run.training import aggregate

    recipe = load_recipe(run.run_dir / "recipe.toml")
    summaries = []
    for seed in recipe.run.seeds:
        path = run.run_dir / f"seed_{seed}" / "summary.json"
        if path.is_file():
            summaries.append(json.loads(path.read_text(encoding="utf-8")))
    if len(summaries) == len(recipe.run.seeds):
        devices = sorted({s.get("device", "") for s in summaries})
        atomic_write_json(run.run_dir / "summary.json", {
            "name": run.name, "run_dir": str(run.run_dir), "device": ", ".join(devices), **aggregate(summaries)
        })
        record_status(run.run_dir, "finished", error=None)
        return
    missing = [f"seed {s}: {run.outcome.get(s, 'not in this sweep')}" for s in recipe.run.seeds
               if not (run.run_dir / f"seed_{s}" / "summary.json").is_file()]
    record_status(run.run_dir, "failed", error="; ".join(missing) + "; run the sweep again to continue")


def run_sweep(runs: list[SweepRun], workers: int, devices: list[str], timeout: float | None, progress: TextIO,
              debug: bool = False) -> None:
    """Train every pending seed of `runs`, `workers` processes at a time; outcomes go into `runs`."""
    queue = deque((run, seed) for run in runs for seed in run.pending())
    threads = threads_per_worker(workers)
    slots: list[_Active | None] = [None] * workers
    try:
        while queue or any(slots):
            for index, slot in enumerate(slots):
                if slot is None and queue:
                    run, seed = queue.popleft()
                    slots[index] = _launch(run, seed, device_for(devices, index), threads, debug)
            time.sleep(POLL_S)
            for index, active in enumerate(slots):
                if active is None:
                    continue
                code = active.process.poll()
                late = timeout is not None and time.monotonic() - active.started > timeout
                if code is None and not late:
                    continue
                if code is None:
                    stop([active.process])
                    code = active.process.returncode
                print(_finish(active, code, timeout if late else None), file=progress, flush=True)
                slots[index] = None
                if not active.run.pending():  # its last seed: the run's summary is ready now
                    _finalize(active.run)
    except KeyboardInterrupt:
        stop([s.process for s in slots if s is not None])
        from pccore.core.failures import interrupts_held

        with interrupts_held():  # a second Ctrl-C must not leave some runs marked "running"
            for run in runs:
                _mark_interrupted(run)
        raise
    for run in runs:  # (again for those that had nothing to run)
        _finalize(run)


def _mark_interrupted(run: SweepRun) -> None:
    from pccore.run.rundir import record_status

    if run.run_dir.is_dir():
        record_status(run.run_dir, "interrupted")


def _report(runs: list[SweepRun]) -> str:
    lines = [f"{'run':<28} {'seeds':>7} {'top-1 (mean ± std)':>22}  status"]
    for run in runs:
        done = [s for s in run.seeds if run.outcome.get(s, "").startswith("finished")]
        summary_path = run.run_dir / "summary.json"
        top1 = ""
        if run.succeeded() and summary_path.is_file():
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            top1 = f"{summary['top1_mean']:.4f} ± {summary['top1_std']:.4f}"
        status = "ok" if run.succeeded() else "; ".join(
            f"seed {s} {text}" for s, text in run.outcome.items() if not text.startswith("finished"))
        lines.append(f"{run.name:<28} {len(done):>3}/{len(run.seeds):<3} {top1:>22}  {status}")
    return "\n".join(lines)


def sweep_command(args: argparse.Namespace) -> int:
    """`pccore sweep`: plan, run and report; 0 when every seed finished, 1 otherwise."""
    if args.train_seed is not None:
        return _train_one_seed(args)
    if args.out is None:
        raise UsageError("pccore sweep needs --out DIR, the folder that holds one run directory per recipe")
    progress = sys.stderr if args.json else sys.stdout
    result = sweep_recipes(args.recipes, out=args.out, seeds=args.seeds, workers=args.workers, devices=args.devices,
                           overrides=args.overrides, timeout=args.timeout, progress=progress,
                           debug=bool(args.debug))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["table"], flush=True)
    return 0 if result["ok"] else 1


def sweep_recipes(
    recipes: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str],
    seeds: str | None = None,
    workers: int = 1,
    devices: str | None = None,
    overrides: Sequence[str] = (),
    timeout: float | None = None,
    progress: TextIO | None = None,
    registry: Any = None,
    debug: bool = False,
) -> dict[str, Any]:
    """Train every recipe for every seed (`seeds` as `"0-4"` or `"0,1,2"`; default each recipe's
    run.seeds) in `out/<run name>/`, each (recipe, seed) in its own process, `workers` at a time on
    `devices` (round-robin); `timeout` stops a run after that many seconds. Returns `ok` (every seed
    finished), `runs` (each run directory and what became of each seed) and `table` (the text summary)."""
    if registry is None:
        from pccore.core.registry import get_registry

        registry = get_registry()
    progress = sys.stdout if progress is None else progress
    check_workers(workers)
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout {timeout:g}: expected a number of seconds > 0")
    device_list = parse_devices(devices)
    runs = plan(recipes, Path(out), seeds, overrides, registry)
    jobs = sum(len(run.pending()) for run in runs)
    earlier = sum(len(run.seeds) - len(run.pending()) for run in runs)
    print(f"sweep: {len(runs)} recipe{'s' if len(runs) != 1 else ''}, {jobs + earlier} runs: {earlier} finished "
          f"earlier (skipped), {jobs} to run, {min(workers, max(jobs, 1))} at a time; in {out}",
          file=progress, flush=True)
    run_sweep(runs, workers, device_list, timeout, progress, debug=debug)
    return {
        "ok": all(run.succeeded() for run in runs),
        "runs": [{"name": run.name, "recipe": run.source, "run_dir": str(run.run_dir),
                  "seeds": {str(s): run.outcome.get(s, "not run") for s in run.seeds}} for run in runs],
        "table": _report(runs),
    }


def _train_one_seed(args: argparse.Namespace) -> int:
    """The process of one (recipe, seed): train that seed of the run directory, resuming its checkpoint."""
    from pccore.run import rundir, training

    if len(args.recipes) != 1:
        raise UsageError("--train-seed takes exactly one run directory")
    if args.worker_threads:
        import torch

        torch.set_num_threads(args.worker_threads)
    run_dir = Path(args.recipes[0])
    recipe, _smoke = rundir.load_run(run_dir)
    devices = parse_devices(args.devices)
    training.train(recipe, run_dir, device=device_for(devices, 0), resume=True, only_seeds=[args.train_seed])
    return 0
