"""The prepared GPU benchmark: the paper's Table 6 rows, eager, compiled and captured as CUDA graphs.

    python benchmarks/gpu.py                        # on a CUDA machine; results go to $OUT or results/
    python benchmarks/gpu.py --out /tmp/gpu         # an explicit results folder
    python benchmarks/gpu.py --device cpu --tiny    # tiny sizes on the CPU: checks the script's logic

Rows: VGG5 and VGG7 on CIFAR-10 inputs (T = 5, 7), VGG10 on CIFAR-100 inputs (T = 10) and VGG15 on Tiny
ImageNet inputs (T = 15), full width, batch 128, fp32, random data on the device; standard PC, S+F and S+F
with the pure spike, all with BatchNorm Freezing, each timed against backprop on the same model and weights
(`pccore bench`, interleaved steps); each in three modes: eager, compiled (`run.compile`) and captured
(`run.cuda_graphs`: the whole step replayed as a CUDA graph; backprop's step too). Seconds per epoch are
seconds per step times 391 (CIFAR) or 782 (Tiny ImageNet) steps, next to the paper's PCX figures on one
H100. Each row runs in its own process, so a crash, an out-of-memory error or a slow compilation costs only
that row, and all rows share one time budget (default 540 s): a row that would overrun it is stopped and
reported. Results are written as gpu.json and gpu.md (after every row) and printed.
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
    "vgg5": Setup("vgg5", 32, 10, 128, 1.0, 5, "CIFAR-10", 391),
    "vgg7": Setup("vgg7", 32, 10, 128, 1.0, 7, "CIFAR-10", 391),
    "vgg10": Setup("vgg10", 32, 100, 128, 1.0, 10, "CIFAR-100", 391),
    "vgg15": Setup("vgg15", 64, 200, 128, 1.0, 15, "Tiny ImageNet", 782),
}
TINY: dict[str, Setup] = {
    "vgg5": Setup("vgg5", 16, 10, 4, 0.0625, 5, "CIFAR-10", 391),
    "vgg7": Setup("vgg7", 32, 10, 4, 0.0625, 7, "CIFAR-10", 391),
    "vgg10": Setup("vgg10", 16, 100, 4, 0.0625, 10, "CIFAR-100", 391),
    "vgg15": Setup("vgg15", 32, 200, 4, 0.0625, 15, "Tiny ImageNet", 782),
}
"""The same models at sizes a CPU runs in a second, to exercise the script without a GPU."""

MODES: dict[str, list[str]] = {
    "eager": [],
    "captured": ["run.cuda_graphs=true"],
    "compiled": ["run.compile=true"],
}
"""How a row runs its steps, as `--set` arguments."""

TARGET_EPOCH_S: dict[str, float] = {"vgg5": 2.37, "vgg7": 3.58, "vgg10": 10.88, "vgg15": 77.6}
"""Issue 12's targets for S+F seconds per epoch on one GPU: the paper's PCX figures on one H100."""

MIN_LEFT_S = 15.0
"""A row is not started with less than this many seconds of the budget left."""


@dataclass(frozen=True)
class Variant:
    """One row: a model, an algorithm (timed against backprop) and a mode, with or without bf16 autocast
    and channels_last."""

    model: str
    algorithm: str
    mode: str
    bf16_channels_last: bool = False

    @property
    def name(self) -> str:
        return f"{self.model}-{self.algorithm}-{self.mode}" + ("-bf16-cl" if self.bf16_channels_last else "")

    def overrides(self, setup: Setup) -> list[str]:
        """`--set` arguments: the setup, the algorithm (with BatchNorm Freezing) and the mode."""
        run = list(MODES[self.mode])
        if self.bf16_channels_last:
            run += ['run.precision="bf16"', "run.channels_last=true"]
        return [*setup.overrides(), *ALGORITHMS[self.algorithm][1], *run]


VARIANTS: list[Variant] = [
    *(Variant(m, a, mode) for mode in ("eager", "captured") for m in FULL for a in ("sf", "sf0", "pc")),
    Variant("vgg15", "sf", "captured", bf16_channels_last=True),
    Variant("vgg15", "sf0", "captured", bf16_channels_last=True),
    *(Variant(m, a, "compiled") for m in FULL for a in ("sf", "sf0")),
]
"""In the order they run: eager and captured rows first (cheap), compiled last (slow to compile)."""

BY_NAME = {v.name: v for v in VARIANTS}


# --- one row (child process) ---------------------------------------------------------------------


def run_variant(variant: Variant, setup: Setup, device_name: str, steps: int, warmup: int) -> dict:
    """Benchmark one row in this process: `pccore bench`'s report plus setup time and graph count."""
    import torch

    from pccore.core.devices import resolve_device
    from pccore.core.registry import get_registry
    from pccore.inspect.bench import run_bench
    from pccore.recipe import load_recipe

    start = time.perf_counter()
    registry = get_registry()
    recipe = load_recipe(BASE_RECIPE, variant.overrides(setup), registry)
    device = resolve_device(device_name)
    report = run_bench(recipe, registry, device, steps=steps, warmup=warmup, label=variant.name,
                       cpu_memory=False)
    wall = time.perf_counter() - start
    report["wall_s"] = wall
    report["setup_s"] = wall - sum(report["pc_samples_s"]) - sum(report["bp_samples_s"])
    if variant.mode == "compiled":
        from torch._dynamo.utils import counters

        report["graphs"] = int(counters["stats"]["unique_graphs"])
        report["frames_left_eager"] = int(counters["frames"]["total"] - counters["frames"]["ok"])
    report["torch_threads"] = torch.get_num_threads()
    return report


# --- the driver ----------------------------------------------------------------------------------


def skip_reason(variant: Variant, device: str) -> str | None:
    """Why a row cannot run on `device`, or None."""
    if not device.startswith("cuda"):
        if variant.bf16_channels_last:
            return "skipped: bf16 autocast needs CUDA"
        if variant.mode == "captured":
            return "skipped: CUDA graphs need CUDA"
    return None


def run_child(variant: Variant, args: argparse.Namespace, timeout: float) -> dict:
    """Run one row in a fresh process (its own session, killed whole on timeout); its report, or a
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
    """Implied seconds per epoch of the row's algorithm and of backprop, the paper's PCX figures for the
    same model (where it has one for the algorithm) and the issue's target."""
    paper = PAPER_EPOCH_S[setup.model]
    algorithm = record["algorithm"]
    record.update(epoch_steps=setup.epoch_steps, pcx_epoch_s=paper.get(algorithm), pcx_bp_epoch_s=paper["bp"],
                  target_epoch_s=TARGET_EPOCH_S[setup.model] if algorithm in ("sf", "sf0") else None)
    if record.get("status") == "ok":
        record["pc_epoch_s"] = record["pc_step_s"] * setup.epoch_steps
        record["bp_epoch_s"] = record["bp_step_s"] * setup.epoch_steps
        record["t_times_bp"] = setup.steps * record["bp_epoch_s"]
    return record


HEAD = ["row", "dataset", "T", "algorithm", "mode", "s/step", "BP s/step", "ratio", "s/epoch", "BP s/epoch",
        "T x BP s/epoch", "PCX s/epoch", "PCX BP s/epoch", "target s/epoch", "MB", "BP MB", "setup s", "status"]


def _cell(record: dict, key: str, digits: int = 3) -> str:
    """A measured value of a row that ran, else a dash."""
    return fmt(record.get(key), digits) if record.get("status") == "ok" else "-"


def _given(value: float | None) -> str:
    return "-" if value is None else fmt(value)


def render(info: dict, args: argparse.Namespace, records: list[dict]) -> str:
    """The Markdown report: machine, settings, one table row per benchmark row."""
    timed = ("pc_step_s", "bp_step_s", "ratio", "pc_epoch_s", "bp_epoch_s", "t_times_bp")
    rows = []
    for r in records:
        rows.append([r["variant"], r["dataset"], str(r["T"]), ALGORITHMS[r["algorithm"]][0], r["mode"]
                     + (" bf16-cl" if r["bf16_channels_last"] else ""),
                     *(_cell(r, key) for key in timed),
                     _given(r["pcx_epoch_s"]), _given(r["pcx_bp_epoch_s"]), _given(r["target_epoch_s"]),
                     _cell(r, "pc_peak_mb", 5), _cell(r, "bp_peak_mb", 5), _cell(r, "setup_s"),
                     "; ".join(filter(None, [r["status"], r.get("note")])).replace("|", "/")])
    lines = [
        f"# pccore GPU benchmark: {info.get('gpu', info['device'])}",
        "",
        f"- machine: {info.get('gpu', 'no GPU')}; CPU {info['cpu']}, {info['cores']} cores",
        f"- torch {info['torch']}, device {info['device']}, date {info['date']}",
        f"- {'TINY sizes (logic check only)' if args.tiny else 'full width, batch 128, fp32'}; median of "
        f"{args.steps} interleaved steps of the algorithm and of backprop after {args.warmup} warm-up steps; "
        "one random batch on the device",
        "- algorithms with BatchNorm Freezing; BP: the same model and weights, ordinary BatchNorm step; "
        "captured: the whole step (both sides) replayed as a CUDA graph",
        "- s/epoch = s/step x 391 (CIFAR) or x 782 (Tiny ImageNet); PCX = the paper's JAX figures on one "
        "H100; target = issue 12's S+F target (the PCX figure)",
        "- memory: torch.cuda.max_memory_allocated per step, less the other model's resident tensors",
        "- setup s: building, compiling or capturing and warming up, outside the timed steps",
        "",
        markdown_table(HEAD, rows),
    ]
    return "\n".join(lines) + "\n"


def write(out: Path, args: argparse.Namespace, records: list[dict]) -> str:
    """Write gpu.json and gpu.md (after every row, so a run cut short keeps what it measured)."""
    info = machine(args.device)
    text = render(info, args, records)
    (out / "gpu.json").write_text(json.dumps({"machine": info, "tiny": args.tiny, "steps": args.steps,
                                              "warmup": args.warmup, "results": records}, indent=1))
    (out / "gpu.md").write_text(text)
    return text


def drive(args: argparse.Namespace) -> int:
    """Run the chosen rows under the budget, then write and print the results."""
    setups = TINY if args.tiny else FULL
    out = Path(args.out or os.environ.get("OUT") or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    records = []
    for variant in args.variants:
        setup = setups[variant.model]
        record = {"variant": variant.name, "model": variant.model, "dataset": setup.dataset,
                  "algorithm": variant.algorithm, "mode": variant.mode, "input": f"{setup.size}x{setup.size}",
                  "batch": setup.batch, "width": setup.width, "T": setup.steps,
                  "bf16_channels_last": variant.bf16_channels_last}
        left = args.budget - (time.monotonic() - began)
        reason = skip_reason(variant, args.device)
        if reason is None and left < MIN_LEFT_S:
            reason = f"skipped: {max(left, 0):.0f} s of the budget left"
        print(f"... {variant.name}: {reason or 'running'}", file=sys.stderr, flush=True)
        result = {"status": reason} if reason else run_child(variant, args, left)
        records.append(add_epochs({**record, **result}, setup))
        done = records[-1]
        timed = (f": {done['pc_step_s']:.4f} s/step, BP {done['bp_step_s']:.4f}" if "pc_step_s" in done else "")
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
    parser.add_argument("--steps", type=int, help="timed steps per row (default 10, --tiny 1)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per row (default 5, --tiny 1)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all rows (default 540)")
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
        args.warmup = 1 if args.tiny else 5
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Drive the rows, or (with --child) run one and write its report to --result."""
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
