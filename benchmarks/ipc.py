"""Incremental PC's cost, measured side by side: iPC against PC at the same T, and the pure-spike iPC
against the pure-spike S+F step, each pair timed in the same interleaved rounds of one `pccore bench`
process (`--variant`), from the same weights, on the same batch.

    python benchmarks/ipc.py                    # VGG5 and VGG15 (the matrix's sizes), 5 timed steps
    python benchmarks/ipc.py --models vgg5 --steps 3 --out /tmp/ipc.md

Pairs (both under BatchNorm Freezing; iPC is iPC_BN.py's variant, T - 1 joint steps and a last
weight-only step): "PC (BF)" against "iPC (BF)" (constant precision, standard update), and "S+F pure
spike (BF)" against "S+iPC pure spike (BF)" (spiking precision with base 0). The ratios are the medians'.
The table goes to stdout and to `results/<machine>-ipc.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from matrix import MATRIX
from setups import ALGORITHMS, BASE_RECIPE, RESULTS, fmt, machine, markdown_table, slug

PAIRS = [("pc", "ipc"), ("sf0", "ipc0")]
"""(reference, iPC) algorithms timed together."""
TARGETS = {("pc", "ipc"): 1.3, ("sf0", "ipc0"): 1.2}
"""The issue's targets on this CPU: iPC <= 1.3 x PC's step, the pure-spike iPC <= 1.2 x the pure-spike S+F's."""


def pair_command(key: str, reference: str, ipc: str, steps: int, warmup: int) -> list[str]:
    setup = MATRIX[key]
    command = [sys.executable, "-m", "pccore.cli", "bench", str(BASE_RECIPE)]
    for override in [*setup.overrides(), *ALGORITHMS[reference][1]]:
        command += ["--set", override]
    command += ["--variant", ";".join(ALGORITHMS[ipc][1])]
    return command + ["--steps", str(steps), "--warmup", str(warmup), "--json", "--device", "cpu"]


def measure(key: str, reference: str, ipc: str, steps: int, warmup: int) -> dict:
    done = subprocess.run(pair_command(key, reference, ipc, steps, warmup), capture_output=True, text=True,
                          check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": " ".join(done.stderr.strip().splitlines()[-2:]) or f"exit status {done.returncode}"}
    return json.loads(lines[-1])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vgg5,vgg15", help="rows of benchmarks/matrix.py (default vgg5,vgg15)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (default 2)")
    parser.add_argument("--out", type=Path, help="Markdown file (default results/<machine>-ipc.md)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MATRIX]
    if unknown:
        print(f"unknown model {unknown[0]!r}; choose from {', '.join(MATRIX)}", file=sys.stderr)
        return 2
    head = ["model", "input", "batch", "width", "T", "reference", "s/step", "iPC", "s/step", "iPC / reference",
            "target"]
    rows, errors = [], []
    for key in keys:
        setup = MATRIX[key]
        for reference, ipc in PAIRS:
            report = measure(key, reference, ipc, args.steps, args.warmup)
            cells = [setup.model.upper(), f"{setup.size}x{setup.size}", str(setup.batch), f"{setup.width:g}",
                     str(setup.steps), ALGORITHMS[reference][0]]
            if "error" in report:
                errors.append(f"{key} {reference}/{ipc}: {report['error']}")
                rows.append([*cells, "failed", ALGORITHMS[ipc][0], "-", "-", f"<= {TARGETS[reference, ipc]:g}"])
                continue
            ref_s, ipc_s = report["pc_step_s"], report["variants"][0]["step_s"]
            rows.append([*cells, fmt(ref_s), ALGORITHMS[ipc][0], fmt(ipc_s), f"{ipc_s / ref_s:.2f}",
                         f"<= {TARGETS[reference, ipc]:g}"])
            print(f"{key}: {ALGORITHMS[ipc][0]} / {ALGORITHMS[reference][0]} = {ipc_s / ref_s:.2f}", file=sys.stderr)
    info = machine("cpu")
    text = "\n".join([
        f"# iPC against PC, side by side: {info['cpu']}",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}; date {info['date']}",
        f"- each pair: one `pccore bench --variant` process, median of {args.steps} interleaved rounds after "
        f"{args.warmup} warm-up rounds; an iPC step includes its T AdamW steps, a PC step its one",
        "",
        markdown_table(head, rows),
        *(["", "Errors:", "", *[f"- {e}" for e in errors]] if errors else []),
    ]) + "\n"
    print(text)
    out = args.out or RESULTS / f"{slug(str(info['cpu']))}-ipc.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
