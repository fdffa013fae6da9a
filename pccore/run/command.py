"""`pccore run RECIPE` and `pccore run --resume RUN_DIR`: the command, in one process or data-parallel."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pccore.core.errors import UsageError
from pccore.parallel import distributed
from pccore.run.rundir import load_run
from pccore.run.training import train


def run_command(args: argparse.Namespace) -> int:
    """`pccore run RECIPE [...]` and `pccore run --resume RUN_DIR`: train, print a summary, return 0.
    With `--nproc N`, start N data-parallel processes that do so instead (see `pccore.parallel.launch`)."""
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
    from pccore.core.registry import get_registry
    from pccore.recipe import load_recipe

    registry = get_registry()
    recipe = load_recipe(args.recipe, args.overrides, registry=registry)
    out = Path(args.out) if args.out else None
    train(recipe, out, device=args.device, smoke=args.smoke, registry=registry)
    return 0


def _launch(args: argparse.Namespace) -> int:
    """`pccore run ... --nproc N`: check the recipe (or the run to resume) once, then start N processes
    that each run the same command without --nproc."""
    from pccore.parallel.launch import launch_local

    if args.resume:
        load_run(Path(args.resume))
    else:
        from pccore.core.registry import get_registry
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
