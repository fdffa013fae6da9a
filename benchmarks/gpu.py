"""The prepared GPU benchmark: S+F with BatchNorm Freezing against backprop at the paper's sizes.

    python benchmarks/gpu.py                        # on a CUDA machine; results go to $OUT or results/
    python benchmarks/gpu.py --out /tmp/gpu         # an explicit results folder
    python benchmarks/gpu.py --device cpu --tiny    # tiny sizes on the CPU: checks the script's logic

Variants: VGG15 at full width on 64x64 inputs (T=15) and VGG5 at full width on 32x32 inputs (T=5), batch
128, random data on the device; eager, compiled (`run.compile = true`), and bf16 autocast with
channels_last. For each: seconds per step of S+F and of backprop (`pccore bench`, interleaved), the
implied seconds per epoch (782 steps for Tiny ImageNet, 391 for CIFAR) next to the paper's PCX figures,
and peak memory. Each variant runs in its own process, so a crash, an out-of-memory error or a slow
compilation costs only that variant, and all of them share one time budget (default 420 s): a variant
that would overrun it is stopped and reported. Results are written as gpu.json and gpu.md and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from setups import ALGORITHMS, BASE_RECIPE, PAPER_EPOCH_S, RESULTS, Setup, fmt, machine, markdown_table

FULL: dict[str, Setup] = {
    "vgg15": Setup("vgg15", 64, 200, 128, 1.0, 15, "Tiny ImageNet", 782),
    "vgg5": Setup("vgg5", 32, 10, 128, 1.0, 5, "CIFAR-10", 391),
}
TINY: dict[str, Setup] = {
    "vgg15": Setup("vgg15", 32, 10, 4, 0.0625, 15, "Tiny ImageNet", 782),
    "vgg5": Setup("vgg5", 16, 10, 4, 0.0625, 5, "CIFAR-10", 391),
}
"""The same models at sizes a CPU runs in a second, to exercise the script without a GPU."""

ALGORITHM = "sf"
MIN_LEFT_S = 15.0
"""A variant is not started with less than this many seconds of the budget left."""


@dataclass(frozen=True)
class Variant:
    """One measurement: a model, compiled or eager, with or without bf16 autocast + channels_last."""

    name: str
    model: str
    compile: bool = False
    bf16_channels_last: bool = False
    raise_limits: bool = False

    def overrides(self, setup: Setup) -> list[str]:
        """`--set` arguments: the setup, S+F with BatchNorm Freezing, and this variant's run options."""
        run = [f"run.compile={str(self.compile).lower()}"]
        if self.bf16_channels_last:
            run += ['run.precision="bf16"', "run.channels_last=true"]
        return [*setup.overrides(), *ALGORITHMS[ALGORITHM][1], *run]


VARIANTS: list[Variant] = [
    Variant("vgg5-eager", "vgg5"),
    Variant("vgg15-eager", "vgg15"),
    Variant("vgg5-bf16-cl", "vgg5", bf16_channels_last=True),
    Variant("vgg15-bf16-cl", "vgg15", bf16_channels_last=True),
    Variant("vgg5-compiled", "vgg5", compile=True),
    Variant("vgg15-compiled", "vgg15", compile=True),
    Variant("vgg15-compiled-bf16-cl", "vgg15", compile=True, bf16_channels_last=True),
    Variant("vgg15-compiled-limits", "vgg15", compile=True, raise_limits=True),
]
"""In the order they run: cheap ones first, so a slow compilation cannot starve them. `-limits` raises
dynamo's recompile limit (8 per code object; every block shares `nn.Sequential.forward`) and turns off
automatic dynamic shapes, to show what compiling every block can give."""

RECOMPILE_LIMIT = 256

BY_NAME = {v.name: v for v in VARIANTS}


# --- one variant (child process) -----------------------------------------------------------------


def run_variant(variant: Variant, setup: Setup, device_name: str, steps: int, warmup: int) -> dict:
    """Benchmark one variant in this process: `pccore bench`'s report plus setup time and graph count."""
    import torch

    from pccore.assemble import resolve_device
    from pccore.bench import run_bench
    from pccore.plugins import get_registry
    from pccore.recipe import load_recipe

    start = time.perf_counter()
    if variant.raise_limits:
        import torch._dynamo.config

        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
        torch._dynamo.config.automatic_dynamic_shapes = False
    registry = get_registry()
    recipe = load_recipe(BASE_RECIPE, variant.overrides(setup), registry)
    device = resolve_device(device_name)
    report = run_bench(recipe, registry, device, steps=steps, warmup=warmup, label=variant.name,
                       cpu_memory=False)
    wall = time.perf_counter() - start
    report["wall_s"] = wall
    report["setup_s"] = wall - sum(report["pc_samples_s"]) - sum(report["bp_samples_s"])
    if variant.compile:
        from torch._dynamo.utils import counters

        report["graphs"] = int(counters["stats"]["unique_graphs"])
        report["frames_left_eager"] = int(counters["frames"]["total"] - counters["frames"]["ok"])
    report["torch_threads"] = torch.get_num_threads()
    return report


# --- the driver ----------------------------------------------------------------------------------


def skip_reason(variant: Variant, device: str) -> str | None:
    """Why a variant cannot run on `device`, or None."""
    if variant.bf16_channels_last and not device.startswith("cuda"):
        return "skipped: bf16 autocast needs CUDA"
    return None


def run_child(variant: Variant, args: argparse.Namespace, timeout: float) -> dict:
    """Run one variant in a fresh process (its own session, killed whole on timeout); its report, or a
    record whose `status` says what went wrong."""
    with tempfile.TemporaryDirectory(prefix="pccore-gpu-") as folder:
        result = Path(folder) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", variant.name, "--result",
                   str(result), "--device", args.device, "--steps", str(args.steps), "--warmup",
                   str(args.warmup)] + (["--tiny"] if args.tiny else [])
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        try:
            _, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return {"status": f"timed out after {timeout:.0f} s (budget)"}
        if child.returncode != 0 or not result.is_file():
            tail = " ".join(err.strip().splitlines()[-3:]) or "no error output"
            return {"status": f"failed (exit {child.returncode}): {tail}"}
        report = json.loads(result.read_text())
    report["status"] = "ok"
    if "graphs" in report:
        report["note"] = f"{report['graphs']} graphs, {report['frames_left_eager']} frames left eager"
    return report


def add_epochs(record: dict, setup: Setup) -> dict:
    """Implied seconds per epoch of each side, and the paper's PCX figures for the same model."""
    paper = PAPER_EPOCH_S[setup.model]
    record.update(epoch_steps=setup.epoch_steps, pcx_sf_epoch_s=paper[ALGORITHM], pcx_bp_epoch_s=paper["bp"],
                  pcx_ratio=paper[ALGORITHM] / paper["bp"])
    if record.get("status") == "ok":
        record["sf_epoch_s"] = record["pc_step_s"] * setup.epoch_steps
        record["bp_epoch_s"] = record["bp_step_s"] * setup.epoch_steps
    return record


HEAD = ["variant", "input", "batch", "width", "T", "S+F s/step", "BP s/step", "ratio", "S+F s/epoch",
        "BP s/epoch", "PCX S+F s/epoch", "PCX BP s/epoch", "PCX ratio", "S+F MB", "BP MB", "setup s",
        "status"]


def _cell(record: dict, key: str, digits: int = 3) -> str:
    """A measured value of a variant that ran, else a dash."""
    return fmt(record.get(key), digits) if record.get("status") == "ok" else "-"


def render(info: dict, args: argparse.Namespace, records: list[dict]) -> str:
    """The Markdown report: machine, settings, one table row per variant."""
    timed = ("pc_step_s", "bp_step_s", "ratio", "sf_epoch_s", "bp_epoch_s")
    rows = []
    for r in records:
        rows.append([r["variant"], r["input"], str(r["batch"]), f"{r['width']:g}", str(r["T"]),
                     *(_cell(r, key) for key in timed),
                     fmt(r["pcx_sf_epoch_s"]), fmt(r["pcx_bp_epoch_s"]), fmt(r["pcx_ratio"]),
                     _cell(r, "pc_peak_mb", 5), _cell(r, "bp_peak_mb", 5), _cell(r, "setup_s"),
                     "; ".join(filter(None, [r["status"], r.get("note")])).replace("|", "/")])
    lines = [
        f"# pccore GPU benchmark: {info.get('gpu', info['device'])}",
        "",
        f"- machine: {info.get('gpu', 'no GPU')}; CPU {info['cpu']}, {info['cores']} cores",
        f"- torch {info['torch']}, device {info['device']}, date {info['date']}",
        f"- {'TINY sizes (logic check only)' if args.tiny else 'full sizes'}; median of {args.steps} "
        f"interleaved S+F/BP steps after {args.warmup} warm-up steps; one random batch on the device",
        "- S+F: spiking precision, forward update, BatchNorm Freezing; BP: the same model and weights",
        "- s/epoch = s/step x 782 (Tiny ImageNet, VGG15) or x 391 (CIFAR, VGG5); PCX = the paper's JAX "
        "figures on one H100",
        "- memory: torch.cuda.max_memory_allocated per step, less the other model's resident tensors",
        "- setup s: building, compiling and warming up, outside the timed steps",
        "",
        markdown_table(HEAD, rows),
    ]
    return "\n".join(lines) + "\n"


def write(out: Path, args: argparse.Namespace, records: list[dict]) -> str:
    """Write gpu.json and gpu.md (after every variant, so a run cut short keeps what it measured)."""
    info = machine(args.device)
    text = render(info, args, records)
    (out / "gpu.json").write_text(json.dumps({"machine": info, "tiny": args.tiny, "steps": args.steps,
                                              "warmup": args.warmup, "results": records}, indent=1))
    (out / "gpu.md").write_text(text)
    return text


def drive(args: argparse.Namespace) -> int:
    """Run the chosen variants under the budget, then write and print the results."""
    setups = TINY if args.tiny else FULL
    out = Path(args.out or os.environ.get("OUT") or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    records = []
    for variant in args.variants:
        setup = setups[variant.model]
        record = {"variant": variant.name, "model": variant.model, "input": f"{setup.size}x{setup.size}",
                  "batch": setup.batch, "width": setup.width, "T": setup.steps, "compile": variant.compile,
                  "bf16_channels_last": variant.bf16_channels_last}
        left = args.budget - (time.monotonic() - began)
        reason = skip_reason(variant, args.device)
        if reason is None and left < MIN_LEFT_S:
            reason = f"skipped: {max(left, 0):.0f} s of the budget left"
        print(f"... {variant.name}: {reason or 'running'}", file=sys.stderr, flush=True)
        result = {"status": reason} if reason else run_child(variant, args, left)
        records.append(add_epochs({**record, **result}, setup))
        done = records[-1]
        timed = (f": S+F {done['pc_step_s']:.4f} s/step, BP {done['bp_step_s']:.4f}"
                 if "pc_step_s" in done else "")
        print(f"    {'; '.join(filter(None, [done['status'], done.get('note')]))}{timed}", file=sys.stderr,
              flush=True)
        text = write(out, args, records)
    print(text)
    print(f"written to {out / 'gpu.json'} and {out / 'gpu.md'}", file=sys.stderr)
    return 0 if any(r["status"] == "ok" for r in records) else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with defaults that depend on --tiny; bad ones exit with status 2."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, to check the logic on a CPU")
    parser.add_argument("--steps", type=int, help="timed steps per variant (default 10, --tiny 1)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per variant (default 3, --tiny 1)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all variants (default 420)")
    parser.add_argument("--variants", default=",".join(BY_NAME),
                        help=f"comma-separated subset, in run order: {', '.join(BY_NAME)}")
    parser.add_argument("--out", help="results folder (default $OUT, else benchmarks/results)")
    parser.add_argument("--child", choices=list(BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        parser.error(f"--variants: unknown or empty {unknown or names}; choose from {', '.join(BY_NAME)}")
    args.variants = [BY_NAME[n] for n in names]
    if args.child and not args.result:
        parser.error("--child needs --result FILE")
    if args.steps is None:
        args.steps = 1 if args.tiny else 10
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 3
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Drive the variants, or (with --child) run one and write its report to --result."""
    args = parse_args(argv)
    if args.child:
        variant = BY_NAME[args.child]
        setup = (TINY if args.tiny else FULL)[variant.model]
        report = run_variant(variant, setup, args.device, args.steps, args.warmup)
        Path(args.result).write_text(json.dumps(report))
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
