"""Run directories: making one (a given --out or the next free `version_<N>`), its `run.json` marker and
status, and reading a run back for --resume. Under torchrun only rank 0 calls these (the training loop
sends their results to the other ranks).

`recipe.toml` holds the resolved recipe; `run.json` says how the run was started and how it stands.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from pccore.core.errors import DivergenceError, PccoreError, UsageError
from pccore.core.version import __version__
from pccore.parallel import distributed
from pccore.run.checkpoint import CheckpointError
from pccore.run.files import OutputError, atomic_write_bytes, atomic_write_json, is_folder, make_folder

RUN_INFO = "run.json"
"""Marker file of a run directory: how the run was started (smoke or not; under torchrun the launch's id,
under "launch"), read by --resume, and its status: "running", "finished", "interrupted" (Ctrl-C, SIGTERM),
"failed" (with the error under "error") or "stopped" (by an epoch-end hook such as a tuner's pruner, with
its reason under "reason")."""


def load_run(run_dir: Path) -> tuple[Any, bool]:
    """The recipe saved in an existing run directory and whether that run is a --smoke run."""
    from pccore.recipe import load_recipe

    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.toml"
    if not recipe_path.is_file():
        raise UsageError(
            f"cannot resume {run_dir}: it has no recipe.toml, so it is not a pccore run directory "
            "(give the folder that holds recipe.toml and the seed_<n> folders)."
        )
    info_path = run_dir / RUN_INFO
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot resume {run_dir}: {info_path} is unreadable ({err}).") from None
    return load_recipe(recipe_path), bool(info.get("smoke", False))


def run_name(recipe: Any) -> str:
    """run.name, or the recipe file's stem, or "run"."""
    if getattr(recipe.run, "name", None):
        return str(recipe.run.name)
    source = getattr(recipe, "source", None)
    return Path(source).stem if source else "run"


def start_run(recipe: Any, out_dir: Path) -> Path:
    """Make the run directory `out_dir` for `recipe` (run.json, recipe.toml) without training anything, for
    processes that then train its seeds (`pccore sweep`); UsageError when it holds a run already."""
    return create_run(recipe, Path(out_dir), smoke=False)


def made_by_this_launch(out_dir: Path, recipe: Any, smoke: bool, launch_id: str | None) -> bool:
    """Whether `out_dir` holds a run that an earlier attempt of this torchrun launch started with this very
    recipe (then this attempt is a restart and continues it); decided by rank 0, which owns the files."""
    from pccore.recipe import recipe_to_toml

    if launch_id is None:
        return False
    try:
        info = json.loads((out_dir / RUN_INFO).read_text(encoding="utf-8"))
        saved = (out_dir / "recipe.toml").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    return info.get("launch") == launch_id and info.get("smoke") == smoke and saved == recipe_to_toml(recipe)


def check_run_dir(out_dir: Path | None) -> None:
    """Refuse to resume from a run directory that does not exist."""
    if out_dir is None or not Path(out_dir).is_dir():
        raise UsageError(f"cannot resume: the run directory {out_dir} does not exist.")


def create_run(recipe: Any, out_dir: Path | None, smoke: bool, launch_id: str | None = None) -> Path:
    """Make the run directory and write `run.json` (status "running"; the torchrun launch that started it,
    if any) and `recipe.toml` into it; when that fails, remove what was made, so that no half-made run
    directory is left behind."""
    from pccore.recipe import recipe_to_toml

    run_dir, created = _make_run_dir(recipe, out_dir, smoke)
    info = {"smoke": smoke, "pccore_version": __version__, "status": "running"}
    if launch_id is not None:
        info["launch"] = launch_id
    try:
        atomic_write_json(run_dir / RUN_INFO, info)
        atomic_write_bytes(run_dir / "recipe.toml", recipe_to_toml(recipe).encode("utf-8"))
    except BaseException:
        with contextlib.suppress(OSError):
            (run_dir / RUN_INFO).unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    return run_dir


def _make_run_dir(recipe: Any, out_dir: Path | None, smoke: bool) -> tuple[Path, bool]:
    """`out_dir` exactly (it must not hold a run already), or the next free version_<N> folder; and
    whether the folder was created here."""
    if out_dir is not None:
        out_dir = Path(out_dir)
        existed = is_folder(out_dir, "the run directory (--out)")
        if existed and (out_dir / "recipe.toml").exists():
            raise UsageError(
                f"{out_dir} already holds a run; continue it with --resume {out_dir}, "
                "or choose another --out."
            )
        return make_folder(out_dir, "the run directory (--out)"), not existed
    root = Path(recipe.run.out_dir)
    if smoke:
        root = root / "smoke"
    parent = make_folder(root / run_name(recipe), "the runs folder (run.out_dir)")
    while True:
        taken = [int(m.group(1)) for p in parent.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
        candidate = parent / f"version_{max(taken, default=-1) + 1}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"cannot create the run directory {candidate}: {err.strerror or err}") from None
        return candidate, True


def record_status(run_dir: Path, status: str, **details: Any) -> None:
    """Set the status in a run directory's run.json, with details such as `error` (None removes a key),
    for callers that train a run's seeds in their own processes (`pccore sweep`)."""
    update_run_info(Path(run_dir), status=status, **details)


def update_run_info(run_dir: Path, **changes: Any) -> None:
    """Rewrite run.json with `changes` (a None value removes its key)."""
    path = run_dir / RUN_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    info = {**info, **changes}
    atomic_write_json(path, {k: v for k, v in info.items() if v is not None})


@distributed.rank_zero_only
def record_failure(run_dir: Path, err: BaseException) -> None:
    """Mark the run interrupted or failed in run.json (best effort: a full disk may refuse even that) and
    say how to continue it where resuming can help."""
    interrupted = isinstance(err, KeyboardInterrupt)
    if interrupted:
        status, error = "interrupted", None
    else:
        message = str(err) if isinstance(err, PccoreError) else f"{type(err).__name__}: {err}"
        status, error = "failed", " ".join(message.split())
    with contextlib.suppress(PccoreError, OSError):
        update_run_info(run_dir, status=status, error=error)
    if interrupted or not isinstance(err, (UsageError, DivergenceError, CheckpointError)):
        print(f"pccore: continue this run with: pccore run --resume {run_dir}", file=sys.stderr)
