"""The depth table of docs/deeper.md ("Deeper networks"), measured on the offline digits.

    python benchmarks/deeper.py                   # every row at the recipes' epochs (CPU: over an hour)
    python benchmarks/deeper.py --epochs 5        # the table of docs/deeper.md (CPU: about 40 minutes)
    python benchmarks/deeper.py --rows mupc-d8,standard-d8 --epochs 2 --out /tmp/deeper.md

Rows: muPC's residual MLP (recipes/mupc_digits_d32.toml) at depth 8, 32 and 128 against the same network in
the standard parameterisation (recipes/mupc_digits_d32_standard.toml), and the thin ResNet18 of
recipes/quickstart_resnet.toml with and without auxiliary skip neurons, against backprop on the same
network. Settings are chosen on a validation split, never on the test set: every row trains each of its
candidate settings with 20% of the training images held out (`data.validation_fraction = 0.2`), keeps the
candidate with the best validation top-1, and reports the test top-1 of that candidate at its best
validation epoch (`test_top1_at_best_val`). Each training runs in its own process (`pccore run`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from setups import RESULTS, cpu_model, machine, markdown_table, slug

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
VALIDATION = ["data.validation_fraction=0.2"]


@dataclass(frozen=True)
class Row:
    """One line of the table: a recipe, the overrides that make the row, and the candidates to choose from."""

    name: str
    label: str
    recipe: str
    overrides: list[str]
    candidates: dict[str, list[str]] = field(default_factory=dict)
    layers: str = ""


def _mupc(depth: int, standard: bool) -> Row:
    recipe = "mupc_digits_d32_standard.toml" if standard else "mupc_digits_d32.toml"
    kind = "standard" if standard else "mupc"
    # The Adam rate is the setting both parameterisations are most sensitive to; the state rate stays at
    # its published value (jpc's 0.5, or the standard baseline's 1e-2, over the batch of 64).
    rates = ["1e-2", "1e-3"] if standard else ["1e-1", "1e-2"]
    return Row(f"{kind}-d{depth}", f"resmlp {kind}, H = {depth}", recipe,
               [f"model.depth={depth}", f"inference.steps={depth}"],
               {f"Adam {r}": [f"optimizer.lr={r}"] for r in rates}, layers=str(depth + 1))


ROWS: dict[str, Row] = {
    row.name: row
    for row in [
        *(_mupc(depth, standard) for standard in (False, True) for depth in (8, 32, 128)),
        Row("resnet18-aux", "ResNet18 (width 1/8), S+F BF, aux", "quickstart_resnet.toml", ["model.aux=true"],
            {f"AdamW {r}": [f"optimizer.lr={r}"] for r in ("1e-3", "3e-3")}, layers="18"),
        Row("resnet18-plain", "ResNet18 (width 1/8), S+F BF, no aux", "quickstart_resnet.toml",
            ["model.aux=false", "inference.steps=10"],
            {f"AdamW {r}": [f"optimizer.lr={r}"] for r in ("1e-3", "3e-3")}, layers="10"),
        Row("resnet18-bp", "ResNet18 (width 1/8), BP with BatchNorm", "quickstart_resnet.toml",
            ["update.name=backprop", "precision.name=constant", "normalization.name=batchnorm",
             "inference.steps=0"],
            {f"AdamW {r}": [f"optimizer.lr={r}"] for r in ("1e-3", "3e-3")}, layers="18"),
    ]
}


def train(recipe: Path, overrides: Sequence[str], out: Path, timeout: float) -> dict:
    """`pccore run` in a fresh process; the seed summary, or {"error": ...}."""
    command = [sys.executable, "-m", "pccore.cli", "run", str(recipe), "--device", "cpu", "--out", str(out)]
    for override in overrides:
        command += ["--set", override]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"over the {timeout:.0f} s limit"}
    if done.returncode != 0:
        return {"error": " ".join(done.stderr.strip().splitlines()[-2:]) or f"exit {done.returncode}"}
    summary = json.loads((out / "summary.json").read_text())["seeds"][0]
    summary["wall_s"] = time.perf_counter() - start
    return summary


def run_row(row: Row, epochs: int | None, timeout: float, scratch: Path) -> dict:
    """Every candidate of a row on the validation split; the best by validation top-1."""
    extra = [*VALIDATION, *row.overrides] + ([f"train.epochs={epochs}", f"optimizer.schedule_epochs={epochs}",
                                              f"train.patience={epochs}"] if epochs else [])
    results = {}
    for name, overrides in row.candidates.items():
        print(f"... {row.label}: {name}", file=sys.stderr, flush=True)
        out = scratch / f"{row.name}-{slug(name)}"
        results[name] = train(RECIPES / row.recipe, [*extra, *overrides], out, timeout)
    finished = {k: v for k, v in results.items() if "error" not in v}
    if not finished:
        return {"row": row, "results": results, "chosen": None}
    chosen = max(finished, key=lambda k: finished[k]["best_val_top1"])
    return {"row": row, "results": results, "chosen": chosen}


def table(outcomes: list[dict]) -> str:
    head = ["model", "layers", "chosen on validation", "val top-1", "test top-1 at best val", "epochs",
            "seconds"]
    rows = []
    for outcome in outcomes:
        row, chosen = outcome["row"], outcome["chosen"]
        if chosen is None:
            errors = "; ".join(v.get("error", "") for v in outcome["results"].values())
            rows.append([row.label, row.layers, "failed", "-", "-", "-", errors])
            continue
        best = outcome["results"][chosen]
        seconds = sum(v.get("wall_s", 0.0) for v in outcome["results"].values())
        rows.append([row.label, row.layers, chosen, f"{best['best_val_top1']:.4f}",
                     f"{best['test_top1_at_best_val']:.4f}", str(best["epochs"]), f"{seconds:.0f}"])
    return markdown_table(head, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {list(ROWS)}")
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs (and its schedule)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per training")
    parser.add_argument("--out", type=Path, help="Markdown file (default results/deeper-<machine>.md)")
    args = parser.parse_args(argv)
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        parser.error(f"--rows: unknown or empty {unknown or names}; choose from {', '.join(ROWS)}")
    with tempfile.TemporaryDirectory(prefix="pccore-deeper-") as folder:
        outcomes = [run_row(ROWS[n], args.epochs, args.timeout, Path(folder)) for n in names]
    info = machine("cpu")
    text = "\n".join([
        f"# Deeper networks on digits: {info['cpu']}",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, date {info['date']}",
        "- each row: every candidate trained once (seed 0) with 20% of the training images held out; the "
        "candidate with the best validation top-1 is kept and its test top-1 at that epoch reported",
        "",
        table(outcomes),
        "",
        "Candidates: " + "; ".join(f"{o['row'].label}: " + ", ".join(
            f"{k} (val {v['best_val_top1']:.4f})" if "error" not in v else f"{k} (failed)"
            for k, v in o["results"].items()) for o in outcomes),
    ]) + "\n"
    label = slug(f"{cpu_model()} {info['cores']}cores")
    out = args.out or RESULTS / f"deeper-{label}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0 if all(o["chosen"] is not None for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
