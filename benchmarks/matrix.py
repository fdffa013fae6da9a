"""The benchmark matrix: `pccore bench --json` over models x algorithms, as one Markdown table.

    python benchmarks/matrix.py                 # the full matrix (CPU: several minutes)
    python benchmarks/matrix.py --quick         # fewer steps
    python benchmarks/matrix.py --models vgg5 --algorithms sf --width 0.0625 --batch 8 --out /tmp/m.md

Rows: VGG5 (32x32, batch 128, width 0.25, T=5), VGG10 (32x32, batch 128, width 0.25, T=10), VGG15
(64x64, batch 32, width 0.125, T=15) and VGG15 on 32x32 inputs (batch 32, width 0.125, T=15), each with
S+F (spiking base 0.001), S+F with the pure spike (base 0), standard PC and ePC (T steps on the errors, lr_e
0.001 as the authors' CNN settings), all under BatchNorm Freezing;
every row also times backprop on the same model. The table goes to stdout and to `results/<machine>.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from setups import (
    ALGORITHMS,
    BASE_RECIPE,
    RESULTS,
    Setup,
    cpu_model,
    fmt,
    machine,
    markdown_table,
    paper_ratio,
    slug,
)

MATRIX: dict[str, Setup] = {
    "vgg5": Setup("vgg5", 32, 10, 128, 0.25, 5, "CIFAR-10", 391),
    "vgg10": Setup("vgg10", 32, 100, 128, 0.25, 10, "CIFAR-100", 391),
    "vgg15": Setup("vgg15", 64, 200, 32, 0.125, 15, "Tiny ImageNet", 782),
    "vgg15s": Setup("vgg15", 32, 10, 32, 0.125, 15, "CIFAR-10", 391),
}

HEAD = ["model", "input", "batch", "width", "T", "algorithm", "pc s/step", "bp s/step", "ratio", "pc MB",
        "bp MB", "PCX ratio", "target ratio", "memory ratio"]

CPU_TARGETS: dict[tuple[str, str], float] = {
    ("vgg5", "sf"): 3.0, ("vgg10", "sf"): 4.7, ("vgg15", "sf"): 6.5,
    ("vgg5", "sf0"): 1.5, ("vgg15s", "sf0"): 1.6,
}
"""Step-time ratio to BP that pccore must meet on a 2-core CPU at these sizes: S+F (BF), issue 5, with peak
memory within 2x backprop's; S+F with the pure spike, issue 14, with peak memory within 1.5x."""


def bench_command(setup: Setup, algorithm: str, steps: int, warmup: int, device: str | None) -> list[str]:
    """The `pccore bench --json` command line of one row."""
    command = [sys.executable, "-m", "pccore.cli", "bench", str(BASE_RECIPE)]
    for override in [*setup.overrides(), *ALGORITHMS[algorithm][1]]:
        command += ["--set", override]
    command += ["--steps", str(steps), "--warmup", str(warmup), "--json"]
    if device:
        command += ["--device", device]
    return command


def run_row(setup: Setup, algorithm: str, steps: int, warmup: int, device: str | None) -> dict:
    """Run one row's benchmark in a fresh process; its report, or {"error": ...} when it failed."""
    done = subprocess.run(bench_command(setup, algorithm, steps, warmup, device), capture_output=True,
                          text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " ".join(done.stderr.strip().splitlines()[-2:]) or "no output"
        return {"error": f"exit status {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def table_row(key: str, setup: Setup, algorithm: str, report: dict) -> list[str]:
    """One Markdown row: the setup, then the measurements (or the error) and the paper's ratio."""
    paper = paper_ratio(setup.model, algorithm)
    target = f"<= {CPU_TARGETS[key, algorithm]:g}" if (key, algorithm) in CPU_TARGETS else "-"
    cells = [setup.model.upper(), f"{setup.size}x{setup.size}", str(setup.batch), f"{setup.width:g}",
             str(setup.steps), ALGORITHMS[algorithm][0]]
    if "error" in report:
        return [*cells, "failed", "-", "-", "-", "-", fmt(paper), target, "-"]
    memory = f"{report['pc_peak_mb'] / report['bp_peak_mb']:.2f}" if report["bp_peak_mb"] > 0 else "-"
    return [*cells, fmt(report["pc_step_s"]), fmt(report["bp_step_s"]), f"{report['ratio']:.2f}",
            fmt(report["pc_peak_mb"], 4), fmt(report["bp_peak_mb"], 4), fmt(paper), target, memory]


def render(info: dict, steps: int, warmup: int, rows: list[list[str]], errors: list[str],
           reports: list[dict]) -> str:
    """The whole Markdown document: machine description, table, notes and errors."""
    threads = next((r["threads"] for r in reports if "threads" in r), info["threads"])
    lines = [
        f"# pccore bench matrix: {info['cpu']}",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores"
        + (f", GPU {info['gpu']}" if "gpu" in info else ""),
        f"- torch {info['torch']}, device {info['device']}, {threads} threads",
        f"- date: {info['date']}",
        f"- each row: `pccore bench --json`, median of {steps} interleaved pc/bp steps after {warmup} "
        "warm-up steps, on one random batch",
        "- memory: " + next((r["memory"] for r in reports if "memory" in r), "n/a"),
        "- PCX ratio: the paper's time ratio (algorithm / backprop, seconds per epoch on one H100 with PCX: "
        "VGG5 CIFAR-10, VGG10 CIFAR-100, VGG15 Tiny ImageNet) at full width",
        "- target ratio: the step-time ratio to BP that pccore must meet at these reduced sizes on a "
        "2-core CPU; memory ratio = pc MB / bp MB (target <= 2 for S+F, <= 1.5 for the pure spike)",
        "",
        markdown_table(HEAD, rows),
    ]
    if errors:
        lines += ["", "Errors:", "", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options; unknown models or algorithms exit with status 2."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="timed steps per row (default 5, --quick 2)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per row (default 2, --quick 1)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the recipe's, auto)")
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--models", default=",".join(MATRIX),
                        help=f"comma-separated subset of {list(MATRIX)}")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS),
                        help=f"comma-separated subset of {list(ALGORITHMS)}")
    parser.add_argument("--width", type=float, help="override every model's width")
    parser.add_argument("--batch", type=int, help="override every model's batch size")
    parser.add_argument("--out", type=Path, help="Markdown file to write (default results/<machine>.md)")
    args = parser.parse_args(argv)
    for option, valid in (("models", MATRIX), ("algorithms", ALGORITHMS)):
        chosen = [v for v in getattr(args, option).split(",") if v]
        unknown = [v for v in chosen if v not in valid]
        if unknown or not chosen:
            parser.error(f"--{option}: unknown or empty {unknown or chosen}; choose from {', '.join(valid)}")
        setattr(args, option, chosen)
    if args.steps is None:
        args.steps = 2 if args.quick else 5
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every row, then print and write the table; status 1 when a row failed."""
    args = parse_args(argv)
    device = args.device or "auto"
    reports, rows, errors = [], [], []
    for name in args.models:
        setup = MATRIX[name].with_(width=args.width, batch=args.batch)
        for algorithm in args.algorithms:
            print(f"... {setup.model} {ALGORITHMS[algorithm][0]}", file=sys.stderr, flush=True)
            report = run_row(setup, algorithm, args.steps, args.warmup, args.device)
            reports.append(report)
            rows.append(table_row(name, setup, algorithm, report))
            if "error" in report:
                errors.append(f"{setup.model} {ALGORITHMS[algorithm][0]}: {report['error']}")
    measured = next((r["device"] for r in reports if "device" in r), device)
    info = machine(measured)
    text = render(info, args.steps, args.warmup, rows, errors, reports)
    label = info.get("gpu") if measured.startswith("cuda") else f"{cpu_model()} {info['cores']}cores"
    out = args.out or RESULTS / f"{slug(str(label))}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
