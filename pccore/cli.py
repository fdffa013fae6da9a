"""The `pccore` command line. Each subcommand hands its parsed arguments to the module that owns it."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from pccore.experiments.tune import DEFAULT_GRACE_PERIOD

EPILOG = """\
examples:
  pccore run recipes/quickstart.toml
  pccore run recipes/vgg10_cifar10_sf_bf.toml --set inference.steps=14 --device cuda
  pccore run recipes/vgg5_cifar10_sf.toml --nproc 2    (data-parallel on 2 GPUs of this machine)
  pccore recipe show recipes/quickstart.toml
  pccore schedule recipes/vgg5_cifar10_sf.toml --json
  pccore diagnose recipes/quickstart.toml --smoke --plot diagnosis.png
  pccore bench recipes/vgg5_cifar10_sf_bf.toml --steps 10
  pccore tune recipes/studies/quickstart.toml --workers 2
  pccore tune show runs/quickstart_search
  pccore sweep recipes/vgg5_cifar10_*.toml --seeds 0-4 --out runs/grid
  pccore report runs/grid --format md --plot depth.png
  pccore plugins --json
  pccore --debug run recipes/quickstart.toml --smoke    (a traceback with any error)
"""


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="path to a TOML recipe")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, parsed as TOML (repeatable), e.g. --set inference.steps=14",
    )


def _sub(subs, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return subs.add_parser(
        name,
        help=help,
        description=help,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pccore",
        description="Train deep predictive coding networks from TOML recipes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of any error (also PCCORE_DEBUG=1)")
    parser.add_argument(
        "--strict-plugins",
        action="store_true",
        help="fail when any plugin cannot be loaded (also PCCORE_STRICT_PLUGINS=1)",
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = _sub(
        subs,
        "run",
        "train and evaluate a recipe (one training per seed)",
        "  pccore run recipes/quickstart.toml\n"
        "  pccore run recipes/vgg5_cifar10_sf.toml --set run.seeds=[0] --device cuda --out runs/try1\n"
        "  pccore run recipes/vgg15_tinyimagenet_sf_bf.toml --smoke\n"
        "  pccore run --resume runs/quickstart/version_0\n"
        "  pccore run recipes/quickstart.toml --nproc 2          (data-parallel, 2 processes on this machine)\n"
        "  torchrun --nproc-per-node 4 -m pccore run recipes/vgg5_cifar10_sf.toml   (the same through torchrun)\n"
        "\nIn data-parallel runs each process waits at most PCCORE_DIST_TIMEOUT seconds (default 1800) for the\n"
        "others; under torchrun --max-restarts, give --out.\n",
    )
    run.add_argument("recipe", nargs="?", help="path to a TOML recipe (omit with --resume)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe value, parsed as TOML (repeatable)")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides run.device)")
    run.add_argument("--out", help="run directory, used exactly as given")
    run.add_argument("--smoke", action="store_true",
                     help="a few batches of random data shaped like the recipe's dataset, reduced width")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoints")
    run.add_argument("--nproc", type=int, metavar="N",
                     help="train data-parallel in N processes on this machine (one per GPU), started through "
                          "torch's launcher as torchrun would; data.batch_size stays the global batch")

    recipe = _sub(subs, "recipe", "validate or print a recipe",
                  "  pccore recipe check recipes/quickstart.toml\n"
                  "  pccore recipe show recipes/quickstart.toml --set inference.steps=9\n")
    recipe_subs = recipe.add_subparsers(dest="recipe_command", metavar="ACTION")
    check = _sub(recipe_subs, "check",
                 "validate a recipe and its components; report its model's layers L and parameter count",
                 "  pccore recipe check recipes/quickstart.toml\n"
                 "  pccore recipe check recipes/vgg15_tinyimagenet_sf_bf.toml --set model.name=\"vgg19\" --json\n")
    _add_recipe_args(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    show = _sub(recipe_subs, "show", "print the resolved recipe (defaults filled in) as TOML",
                "  pccore recipe show recipes/quickstart.toml > resolved.toml\n")
    _add_recipe_args(show)

    plugins = _sub(subs, "plugins", "list installed plugins and the components they provide",
                   "  pccore plugins\n  pccore plugins --json\n")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    schedule = _sub(subs, "schedule", "print the precision table pi[t][l] a recipe will use",
                    "  pccore schedule recipes/vgg5_cifar10_sf.toml\n"
                    "  pccore schedule recipes/vgg5_cifar10_df.toml --set precision.k=1.5 --json\n"
                    "  pccore schedule recipes/vgg10_cifar10_sf.toml --plot spiking.png\n")
    _add_recipe_args(schedule)
    schedule.add_argument("--json", action="store_true", help="machine-readable output")
    schedule.add_argument("--plot", metavar="FILE.png",
                          help='also draw the table as a heatmap into FILE.png (needs pip install "pccore[plot]")')

    diagnose = _sub(subs, "diagnose",
                    "run one batch: per-layer energy at every step, cosine of each layer's update to backprop",
                    "  pccore diagnose recipes/quickstart.toml\n"
                    "  pccore diagnose recipes/vgg10_cifar10_sf_bf.toml --smoke --json\n"
                    "  pccore diagnose recipes/quickstart.toml --plot diagnosis.png\n")
    _add_recipe_args(diagnose)
    diagnose.add_argument("--smoke", action="store_true", help="random data shaped like the dataset")
    diagnose.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    diagnose.add_argument("--json", action="store_true", help="machine-readable output")
    diagnose.add_argument("--plot", metavar="FILE.png",
                          help="also draw the energy heatmap (log scale) beside the cosines to backprop into "
                               'FILE.png (needs pip install "pccore[plot]")')

    bench = _sub(subs, "bench", "time training steps of a recipe against backprop on the same model",
                 "  pccore bench recipes/vgg5_cifar10_sf_bf.toml --set model.width=0.25 --steps 5\n"
                 "  pccore bench recipes/vgg5_cifar10_sf_bf.toml --variant precision.base=0 "
                 "--variant 'inference.skip_below=0.01'\n")
    _add_recipe_args(bench)
    bench.add_argument("--variant", dest="variants", action="append", default=[], metavar="KEY=VALUE[;...]",
                       help="also time the recipe with these overrides (repeatable; ';' separates several), "
                            "e.g. --variant precision.base=0 for the pure spike")
    bench.add_argument("--steps", type=int, default=5, help="timed steps after warm-up (default 5)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    bench.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    _add_tune(subs)
    _add_sweep(subs)
    _add_report(subs)
    return parser


def _add_tune(subs) -> None:
    tune = _sub(subs, "tune",
                "search hyperparameters with Optuna (a study file), or show a study's results",
                "  pccore tune recipes/studies/quickstart.toml --workers 2\n"
                "  pccore tune study.toml --trials 40 --out runs/mystudy      (run again: the study continues)\n"
                "  pccore tune study.toml --storage postgresql://user@db-host/pccore --workers 4 --devices "
                "cuda:0,cuda:1\n"
                "  pccore tune study.toml --storage journal:/shared/studies/mystudy.log --grace-period 600\n"
                "  pccore tune study.toml --check                 (validate the study file, run nothing)\n"
                "  pccore tune show runs/quickstart_search --top 5 --plot figures/\n"
                "  pccore tune show postgresql://user@db-host/pccore --study mystudy --json\n")
    tune.add_argument("study", metavar="STUDY", help='a study file (TOML), or "show" to report on a study')
    tune.add_argument("target", nargs="?", metavar="DIR_OR_STORAGE",
                      help="(show) the study's output folder, an SQLAlchemy URL or journal:PATH")
    tune.add_argument("--trials", type=int, help="finished trials (complete + pruned) to aim for (overrides the file)")
    tune.add_argument("--workers", type=int, default=1, help="local worker processes on the study (default 1)")
    tune.add_argument("--devices", metavar="LIST",
                      help="devices for the workers, round-robin, e.g. cuda:0,cuda:1 (default: run.device)")
    tune.add_argument("--storage", metavar="URL",
                      help="an SQLAlchemy URL or journal:PATH (default: sqlite in the output folder, study.db)")
    tune.add_argument("--out", metavar="DIR", help="output folder (default: run.out_dir/<study name>)")
    tune.add_argument("--grace-period", type=int, default=DEFAULT_GRACE_PERIOD, metavar="SECONDS",
                      help="a running trial whose worker sent no heartbeat for this long is marked failed "
                           f"(default {DEFAULT_GRACE_PERIOD})")
    tune.add_argument("--check", action="store_true", help="validate the study file against its recipe and stop")
    tune.add_argument("--json", action="store_true", help="machine-readable output (progress lines go to stderr)")
    tune.add_argument("--top", type=int, default=10, help="(show) how many of the best trials to list (default 10)")
    tune.add_argument("--study", dest="study_name", metavar="NAME",
                      help="(show) the study's name, when the storage holds several")
    tune.add_argument("--plot", metavar="DIR",
                      help="(show) write Optuna's figures (history, parallel coordinates, importances) as PNG "
                           'files into DIR (needs pip install "pccore[plot]")')
    tune.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    tune.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)


def _add_sweep(subs) -> None:
    sweep = _sub(subs, "sweep",
                 "run recipes for several seeds, each (recipe, seed) in its own process, N at a time",
                 "  pccore sweep recipes/vgg*_cifar10_*.toml --seeds 0-4 --out runs/cifar10 --workers 2 "
                 "--devices cuda:0,cuda:1\n"
                 "  pccore sweep recipes/quickstart*.toml --seeds 0,1,2 --out runs/quick --set train.epochs=2\n"
                 "  pccore sweep recipes/quickstart.toml --seeds 0-9 --out runs/quick   (again: skips finished "
                 "seeds, resumes the others)\n"
                 "  pccore sweep recipes/vgg5_cifar10_sf.toml --seeds 0-4 --out runs/grid --timeout 7200 --json\n")
    sweep.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe files (TOML)")
    sweep.add_argument("--seeds", help="seeds, e.g. 0-4 or 0,1,2 (default: each recipe's run.seeds)")
    sweep.add_argument("--out", metavar="DIR", help="the sweep folder (required): DIR/<run name>/seed_<n>/")
    sweep.add_argument("--workers", type=int, default=1, help="runs at a time, each its own process (default 1)")
    sweep.add_argument("--devices", metavar="LIST", help="devices for the workers, round-robin, e.g. cuda:0,cuda:1")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a value in every recipe, parsed as TOML (repeatable)")
    sweep.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="stop a run that takes longer (its checkpoint is kept; a later sweep resumes it)")
    sweep.add_argument("--json", action="store_true", help="machine-readable output (progress lines go to stderr)")
    sweep.add_argument("--train-seed", type=int, help=argparse.SUPPRESS)
    sweep.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)


def _add_report(subs) -> None:
    report = _sub(subs, "report",
                  "collect run directories into the paper's tables: methods by model, mean ± std over seeds",
                  "  pccore report runs/cifar10                     (a sweep folder)\n"
                  "  pccore report runs/*/version_0 --format latex > table.tex\n"
                  "  pccore report runs/cifar10 --format csv --plot depth.png\n"
                  "  pccore report runs/ablation --by method,inference.steps\n"
                  "  pccore report runs/cifar10 --json > cells.json\n")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    report.add_argument("--format", choices=("md", "csv", "latex"), default="md", help="table format (default md)")
    report.add_argument("--by", default="method",
                        help="what the rows are: method (default), recipe, or dotted recipe keys, comma-separated "
                             "(e.g. method,inference.steps)")
    report.add_argument("--plot", metavar="FILE.png",
                        help='also draw top-1 against depth per row into FILE.png (needs pip install "pccore[plot]")')
    report.add_argument("--json", action="store_true", help="the cells as data instead of a table")


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "run":
        from pccore.run.command import run_command

        return run_command(args)
    if args.command == "recipe":
        if args.recipe_command is None:
            parser.parse_args(["recipe", "--help"])
        from pccore.inspect.recipe_check import recipe_command

        return recipe_command(args)
    if args.command == "plugins":
        from pccore.core.registry import plugins_command

        return plugins_command(args)
    if args.command in ("schedule", "diagnose"):
        from pccore.inspect import diagnose

        return diagnose.schedule_command(args) if args.command == "schedule" else diagnose.diagnose_command(args)
    if args.command == "bench":
        from pccore.inspect.bench import bench_command

        return bench_command(args)
    if args.command == "tune":
        from pccore.experiments.tune.command import tune_command

        return tune_command(args)
    if args.command == "sweep":
        from pccore.experiments.sweep import sweep_command

        return sweep_command(args)
    if args.command == "report":
        from pccore.experiments.report import report_command

        return report_command(args)
    parser.print_help()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """The `pccore` command. Every command runs inside one guard: no exception reaches the user as a raw
    traceback unless --debug or PCCORE_DEBUG=1 asks for it (see `pccore.core.failures`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from pccore.core.version import __version__

        print(f"pccore {__version__}")
        return 0
    if args.strict_plugins:
        os.environ["PCCORE_STRICT_PLUGINS"] = "1"
    from pccore.core.failures import debug_from_env, describe_failure, interrupts_held

    debug = args.debug or debug_from_env()
    restore_sigterm = _sigterm_interrupts()
    try:
        return _dispatch(args, parser)
    except KeyboardInterrupt as err:
        with interrupts_held():  # (a second Ctrl-C, or the launcher's SIGTERM, while this one is reported)
            terminated = isinstance(err, _Terminated)
            if not _reported_elsewhere(err):
                print(f"pccore: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:
        # The reader went away (e.g. `pccore plugins --json | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        with interrupts_held():  # a signal now would end in a traceback instead of this message
            if debug:
                traceback.print_exc()
            try:
                message, status = describe_failure(err, shlex.join(["pccore", *argv]), debug)
            except Exception:  # an exception whose own message cannot be rendered: still one line, no traceback
                message, status = f"pccore: error: {type(err).__name__} (its message could not be shown)", 1
            if not _reported_elsewhere(err):
                print(_with_rank(message), file=sys.stderr)
        return status
    finally:
        restore_sigterm()


def _reported_elsewhere(err: BaseException) -> bool:
    """Whether rank 0 of a data-parallel run reports `err` for this process (see pccore.parallel.distributed)."""
    if "RANK" not in os.environ:
        return False
    from pccore.parallel.distributed import quiet_here

    return quiet_here(err)


def _with_rank(message: str) -> str:
    """`message` with the rank of a process started by torchrun: "pccore (rank 3): error: ..."."""
    if "RANK" not in os.environ:
        return message
    from pccore.parallel.distributed import rank_label

    label = rank_label()
    return message.replace("pccore:", f"pccore{label}:", 1) if label and message.startswith("pccore:") else message


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, `kill`), handled like Ctrl-C: a run is marked interrupted."""


def _sigterm_interrupts() -> Callable[[], None]:
    """Make SIGTERM raise `_Terminated` while a command runs; returns what puts the old handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(_signum: int, _frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
