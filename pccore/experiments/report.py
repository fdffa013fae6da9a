"""`pccore report RUN_DIR...`: run directories collected into the paper's table shape.

Rows are methods (or what `--by` names), columns are (dataset, model) pairs, and each cell is the mean ±
population standard deviation (ddof 0) over the seeds of the best test top-1 (in %), with the number of
seeds; runs with a validation split add two tables: the test top-1 at the epoch of the best validation
top-1, and the best validation top-1. Names come from the components' labels (`Component.label`): a method
joins its precision, update rule, nudging and inference-algorithm labels with "+" ("S+F", "S+iPC"; "PC"
when all four are the plain defaults; an update rule without inference, such as backprop, stands alone:
"BP"); a column is the dataset's label and the architecture's label followed by the normalisation's
("CIFAR-10 VGG5BF"), with " L=N" added when one model appears at several depths (an MLP's hidden widths:
"MLP L=5"). The depth of a model (`--plot`) is its number of blocks L, counted by building the
architecture on the meta device. A (row, column) with no run is blank. Only finished seeds (with a
summary.json) count.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from pccore.core.errors import UsageError

PLAIN_METHOD = "PC"
"""The method whose precision, update rule and nudging all have empty labels: standard predictive coding."""
IGNORED_KEYS = {("run", "name"), ("run", "seeds"), ("run", "out_dir"), ("run", "device")}
"""Recipe keys that may differ between runs pooled in one cell (they do not change what is trained)."""
TABLES = {
    "best_top1": "best test top-1 (%)",
    "test_top1_at_best_val": "test top-1 at the best validation epoch (%)",
    "best_val_top1": "best validation top-1 (%)",
}
"""The tables, by the seed summary field each one averages."""


@attrs.frozen
class Run:
    """One run directory as the report sees it."""

    run_dir: Path
    recipe: Any
    seeds: tuple[dict[str, Any], ...]
    method: str
    method_order: tuple
    dataset: str
    model: str
    normalization: str
    depth: int | None
    architecture: str


def _label(registry: Any, kind: str, name: str) -> str:
    component = registry.component(kind, name)
    return component.name if component.label is None else component.label


def _depth(recipe: Any, registry: Any) -> int | None:
    """L, the number of blocks of the recipe's model, built on the meta device (None when it cannot be)."""
    from pccore.core import limits

    spec = registry.build("dataset", recipe.data.name, recipe.data.params).spec()
    architecture = registry.build("architecture", recipe.model.name, recipe.model.params)
    norm = registry.build("normalization", recipe.normalization.name, recipe.normalization.params)
    try:
        blocks = limits.meta_blocks(
            lambda: architecture.build(tuple(spec.input_shape), spec.num_classes, norm), f"model '{recipe.model.name}'"
        )
    except (UsageError, ValueError):
        return None
    return None if blocks is None else len(blocks)


def describe_run(run_dir: Path, registry: Any) -> Run:
    """A run directory's recipe, finished seeds, method, dataset, model and depth."""
    from pccore.recipe import load_recipe

    recipe = load_recipe(run_dir / "recipe.toml", registry=registry)
    seeds = []
    for seed in recipe.run.seeds:
        path = run_dir / f"seed_{seed}" / "summary.json"
        if path.is_file():
            try:
                seeds.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as err:
                raise UsageError(f"{path}: unreadable seed summary ({err})") from None
    update = registry.build("update", recipe.update.name, recipe.update.params)
    precision = _label(registry, "precision", recipe.precision.name)
    update_label = _label(registry, "update", recipe.update.name)
    nudging = _label(registry, "nudging", recipe.nudging.name)
    algorithm = _label(registry, "inference", recipe.inference.name)
    inference = bool(getattr(update, "runs_inference", True))
    parts = [precision, update_label, nudging, algorithm] if inference else [update_label]
    method = "+".join(p for p in parts if p) or PLAIN_METHOD
    order = (inference, bool(update_label), update_label, precision, nudging, algorithm)
    return Run(
        run_dir=run_dir, recipe=recipe, seeds=tuple(seeds), method=method, method_order=order,
        dataset=_label(registry, "dataset", recipe.data.name),
        model=_label(registry, "architecture", recipe.model.name)
        + _label(registry, "normalization", recipe.normalization.name),
        normalization=_label(registry, "normalization", recipe.normalization.name),
        depth=_depth(recipe, registry),
        architecture=_label(registry, "architecture", recipe.model.name),
    )


def find_run_dirs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The run directories (folders with a recipe.toml) given, or found below the folders given (a sweep
    folder, a runs folder); a run directory's own subfolders are its seeds and are not searched."""
    found: list[Path] = []
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            raise UsageError(f"{root}: not a folder (give run directories or folders that hold them)")
        before = len(found)
        for folder, subfolders, files in os.walk(root):
            if "recipe.toml" in files:
                found.append(Path(folder))
                subfolders.clear()
            else:
                subfolders.sort()
        if len(found) == before:
            raise UsageError(f"{root}: no run directory (a folder with recipe.toml) in it")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [next(p for p in found if p.resolve() == u) for u in unique]


def _row_key(run: Run, by: list[str]) -> tuple[str, tuple]:
    """The row label of a run and its sort key."""
    from pccore.recipe import recipe_to_dict
    from pccore.recipe.render import render_value

    flat = recipe_to_dict(run.recipe)
    labels, order = [], []
    for key in by:
        if key == "method":
            labels.append(run.method)
            order.append(run.method_order)
        elif key == "recipe":
            labels.append(run.recipe.run.name)
            order.append((run.recipe.run.name,))
        else:
            section, _, field = key.partition(".")
            value = flat.get(section, {}).get(field)
            labels.append(f"{field}={render_value(value)}")
            order.append((not isinstance(value, (int, float)), value if isinstance(value, (int, float)) else
                          render_value(value)))
    return ", ".join(labels), tuple(order)


def _check_by(by: str) -> list[str]:
    """`--by` as a list of row keys: method, recipe, or SECTION.KEY of the schema or a component."""
    from pccore.recipe.schema import SECTION_CLASSES

    keys = [k.strip() for k in by.split(",") if k.strip()]
    if not keys:
        raise UsageError(f"--by {by!r}: expected method, recipe or recipe keys such as inference.steps")
    for key in keys:
        if key in ("method", "recipe"):
            continue
        section, dot, field = key.partition(".")
        if not dot or section not in SECTION_CLASSES or not field:
            raise UsageError(f"--by {by}: {key!r} is not method, recipe or a recipe key SECTION.KEY "
                             "(e.g. inference.steps)")
    return keys


def _check_keys_exist(keys: list[str], runs: list[Run]) -> None:
    """A recipe key in --by must exist in some run's recipe (a misspelt key would put every run in one row)."""
    from pccore.recipe import recipe_to_dict

    tables = [recipe_to_dict(run.recipe) for run in runs]
    for key in keys:
        section, _, field = key.partition(".")
        if key not in ("method", "recipe") and all(field not in table.get(section, {}) for table in tables):
            raise UsageError(f"--by {key}: no run's recipe has the key {key}")


def _stats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _differences(a: Any, b: Any) -> list[str]:
    from pccore.recipe import recipe_to_dict

    left, right = recipe_to_dict(a), recipe_to_dict(b)
    keys = []
    for section in left:
        for key in sorted(set(left[section]) | set(right.get(section, {}))):
            if (section, key) not in IGNORED_KEYS and left[section].get(key) != right.get(section, {}).get(key):
                keys.append(f"{section}.{key}")
    return keys


def build_report(paths: Sequence[str | os.PathLike[str]], by: str = "method", registry: Any = None) -> dict:
    """The report as data: `rows` and `columns` in table order and one entry per non-empty cell under
    `cells` (row, dataset, model, depth, n, the mean and std of each table's field, the run directories).
    Runs pooled in one cell must share their recipe (but for its name, seeds, output folder and device)
    and must not repeat a seed; UsageError otherwise."""
    if registry is None:
        from pccore.core.registry import get_registry

        registry = get_registry()
    keys = _check_by(by)
    runs = [describe_run(path, registry) for path in find_run_dirs(paths)]
    _check_keys_exist(keys, runs)
    notes = [f"{run.run_dir} has no finished seed yet: left out" for run in runs if not run.seeds]
    runs = [run for run in runs if run.seeds]
    if not runs:
        raise UsageError("no run with a finished seed (seed_<n>/summary.json) to report")
    # A model whose depth is a parameter (an MLP's hidden widths) gets a column per depth: "MLP L=5".
    depths: dict[tuple[str, str], set] = {}
    for run in runs:
        depths.setdefault((run.dataset, run.model), set()).add(run.depth)

    def model_label(run: Run) -> str:
        several = len(depths[(run.dataset, run.model)]) > 1 and run.depth is not None
        return f"{run.model} L={run.depth}" if several else run.model

    cells: dict[tuple[str, str, str], list[Run]] = {}
    row_order: dict[str, tuple] = {}
    column_order: dict[tuple[str, str], tuple] = {}
    for run in runs:
        row, order = _row_key(run, keys)
        row_order[row] = order
        model = model_label(run)
        column_order[(run.dataset, model)] = (run.dataset, run.normalization, run.depth or 0, model)
        cells.setdefault((row, run.dataset, model), []).append(run)
    entries = []
    for (row, dataset, model), members in cells.items():
        seen: dict[int, Path] = {}
        for run in members:
            changed = _differences(members[0].recipe, run.recipe)
            if changed:
                raise UsageError(
                    f"the cell ({row}, {dataset} {model}) holds runs of different recipes, {members[0].run_dir} and "
                    f"{run.run_dir} (they differ in {', '.join(changed[:5])}); tell them apart with --by, e.g. "
                    f"--by {','.join(keys)},{changed[0]}"
                )
            for summary in run.seeds:
                seed = int(summary["seed"])
                if seed in seen:
                    raise UsageError(f"seed {seed} of the cell ({row}, {dataset} {model}) is in both {seen[seed]} and "
                                     f"{run.run_dir}; report one of them")
                seen[seed] = run.run_dir
        seeds = [s for run in members for s in run.seeds]
        entry: dict[str, Any] = {"row": row, "dataset": dataset, "model": model, "depth": members[0].depth,
                                 "family": _family(members[0].architecture), "n": len(seeds),
                                 "run_dirs": [str(run.run_dir) for run in members]}
        for field in TABLES:
            if all(field in s for s in seeds):
                entry[f"{field}_mean"], entry[f"{field}_std"] = _stats([float(s[field]) for s in seeds])
        entries.append(entry)
    rows = sorted(row_order, key=lambda r: row_order[r])
    columns = sorted(column_order, key=lambda c: column_order[c])
    return {"by": keys, "rows": rows,
            "columns": [{"dataset": d, "model": m, "normalization": column_order[(d, m)][1]} for d, m in columns],
            "cells": entries, "notes": notes}


def _family(architecture: str) -> str:
    """The family of an architecture label, its members told apart by depth: VGG5 and VGG15 are "VGG"."""
    return re.sub(r"\d+$", "", architecture) or architecture


def _grid(report: dict, field: str) -> list[list[str]]:
    """One table as text cells: a header row, then a row per report row; blank where there is no value."""
    lookup = {(c["row"], c["dataset"], c["model"]): c for c in report["cells"]}
    header = [", ".join(report["by"]) if report["by"] != ["method"] else "method"]
    header += [f"{col['dataset']} {col['model']}" for col in report["columns"]]
    grid = [header]
    for row in report["rows"]:
        line = [row]
        for col in report["columns"]:
            cell = lookup.get((row, col["dataset"], col["model"]))
            if cell is None or f"{field}_mean" not in cell:
                line.append("")
            else:
                line.append(f"{100 * cell[f'{field}_mean']:.2f} ± {100 * cell[f'{field}_std']:.2f} ({cell['n']})")
        grid.append(line)
    return grid


def _tables(report: dict) -> list[str]:
    """The fields that have a table: best test top-1 always, the validation ones when any cell has them."""
    return [f for f in TABLES if f == "best_top1" or any(f"{f}_mean" in c for c in report["cells"])]


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                          ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(char, escaped)
    return text


def render(report: dict, fmt: str) -> str:
    """The report's tables as markdown, CSV or LaTeX (booktabs); cells are "mean ± std (n)" in %."""
    tables = _tables(report)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for index, field in enumerate(tables):
            grid = _grid(report, field)
            if index == 0:
                writer.writerow(["table", *grid[0]])
            writer.writerows([TABLES[field], *line] for line in grid[1:])
        return buffer.getvalue()
    parts = []
    for field in tables:
        grid = _grid(report, field)
        title = f"{TABLES[field]}, mean ± population std over seeds (number of seeds)"
        if fmt == "md":
            lines = [f"### {title}", "", "| " + " | ".join(grid[0]) + " |", "|" + "---|" * len(grid[0])]
            lines += ["| " + " | ".join(line) + " |" for line in grid[1:]]
        else:
            lines = [f"% {title}", r"\begin{tabular}{l" + "c" * (len(grid[0]) - 1) + "}", r"\toprule",
                     " & ".join(_latex_escape(h) for h in grid[0]) + r" \\", r"\midrule"]
            for line in grid[1:]:
                cells = [_latex_escape(line[0])] + [
                    "" if not c else "$" + c.split(" (")[0].replace("±", r"\pm") + "$ (" + c.split(" (")[1]
                    for c in line[1:]
                ]
                lines.append(" & ".join(cells) + r" \\")
            lines += [r"\bottomrule", r"\end{tabular}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def report_command(args: argparse.Namespace) -> int:
    """`pccore report RUN_DIR... [--format md|csv|latex] [--by ...] [--plot FILE.png] [--json]`."""
    if args.plot is not None:
        from pccore.inspect.figures import check_png_path

        check_png_path(args.plot)
    report = build_report(args.runs, args.by)
    for note in report["notes"]:
        print(f"pccore: note: {note}", file=sys.stderr)
    if args.plot is not None:
        from pccore.inspect.figures import plot_depth, save_png

        save_png(plot_depth(report), args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(render(report, args.format))
    return 0
