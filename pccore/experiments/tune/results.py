"""What a study leaves in its output folder and what `pccore tune show` prints: the summary of every
trial, the best trial's recipe, the top trials, Optuna's parameter importances and Optuna's figures."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pccore.experiments.tune.study import Study
from pccore.experiments.tune.worker import REASON_ATTR, RUN_DIR_ATTR, STUDY_ATTR, TEST_ATTR, WORKER_ATTR, count_trials
from pccore.recipe import recipe_to_toml
from pccore.run.files import atomic_write_bytes, atomic_write_json

SUMMARY_FILE = "summary.json"
BEST_RECIPE_FILE = "best.toml"
FIGURES = {
    "history.png": "plot_optimization_history",
    "parallel_coordinate.png": "plot_parallel_coordinate",
    "importances.png": "plot_param_importances",
}
"""The PNG files `--plot DIR` writes and the function of `optuna.visualization.matplotlib` that draws each."""
SHOWN_FAILURES = 10
"""How many failed trials `pccore tune show` lists with their reasons (--json lists every trial)."""


def _value(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def trial_rows(handle: optuna.Study) -> list[dict[str, Any]]:
    """Every trial as plain data: number, state, value, params (dotted keys), run directory, reason."""
    rows = []
    for trial in handle.get_trials(deepcopy=False):
        row = {
            "number": trial.number,
            "state": trial.state.name,
            "value": _value(trial.value) if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
            "params": dict(trial.params),
            "run_dir": trial.user_attrs.get(RUN_DIR_ATTR),
        }
        for key, attr in (("test_top1_at_best_val", TEST_ATTR), ("reason", REASON_ATTR), ("worker", WORKER_ATTR)):
            if attr in trial.user_attrs:
                row[key] = trial.user_attrs[attr]
        if trial.state == TrialState.FAIL and "reason" not in row:
            row["reason"] = "stopped without a result (its worker was killed or lost)"
        rows.append(row)
    return rows


def study_summary(handle: optuna.Study, target: int | None = None, storage: str | None = None) -> dict[str, Any]:
    """best_value, best_params, best_trial, the counts by state and every trial."""
    counts = count_trials(handle)
    try:
        best = handle.best_trial
    except ValueError:  # no complete trial
        best = None
    summary: dict[str, Any] = {
        "study": handle.study_name,
        "direction": handle.direction.name.lower(),
        "best_value": None if best is None else _value(best.value),
        "best_params": {} if best is None else dict(best.params),
        "best_trial": None if best is None else best.number,
        "n_complete": counts.complete,
        "n_pruned": counts.pruned,
        "n_failed": counts.failed,
        "n_running": counts.running,
    }
    if best is not None and TEST_ATTR in best.user_attrs:
        summary["best_test_top1_at_best_val"] = best.user_attrs[TEST_ATTR]
    if target is not None:
        summary["trials_wanted"] = target
    if storage is not None:
        summary["storage"] = storage
    summary["trials"] = trial_rows(handle)
    return summary


def best_recipe_text(study: Study, handle: optuna.Study, registry: Any = None) -> str | None:
    """The best trial's full resolved recipe as TOML (run.name `<study>_best`), or None without a complete
    trial. `pccore run` accepts it as it is; it trains into run.out_dir/<study>_best/version_<N>."""
    import attrs

    try:
        best = handle.best_trial
    except ValueError:
        return None
    recipe = study.recipe_for(best.params, f"trial {best.number}:", registry)
    recipe = attrs.evolve(recipe, run=attrs.evolve(recipe.run, name=f"{study.name}_best"))
    header = (
        f"# The best trial of the study {study.name!r}: trial {best.number}, validation top-1 {best.value:.4f}.\n"
        f"# {study.recipe_path} with the study's [set] and these values: "
        + ", ".join(f"{key} = {value!r}" for key, value in best.params.items())
        + ".\n# Train it again with: pccore run best.toml (raise train.epochs for a full run).\n\n"
    )
    return header + recipe_to_toml(recipe)


def write_results(study: Study, handle: optuna.Study, out_dir: Path, target: int, storage: str,
                  registry: Any = None) -> dict[str, Any]:
    """Write `summary.json` and (given a complete trial) `best.toml` into `out_dir`; the summary."""
    summary = study_summary(handle, target, storage)
    text = best_recipe_text(study, handle, registry)
    if text is not None:
        atomic_write_bytes(out_dir / BEST_RECIPE_FILE, text.encode("utf-8"))
        summary["best_recipe"] = str(out_dir / BEST_RECIPE_FILE)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def importances(handle: optuna.Study) -> tuple[dict[str, float] | None, str | None]:
    """Optuna's parameter importances, or None and the reason they cannot be computed yet."""
    complete = handle.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"parameter importances need at least 2 complete trials ({len(complete)} so far)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(handle)), None
    except (RuntimeError, ValueError) as err:  # e.g. every complete trial has the same value
        return None, f"parameter importances cannot be computed yet ({' '.join(str(err).split())})"


def show_data(handle: optuna.Study, top: int) -> dict[str, Any]:
    """What `pccore tune show` reports: the summary, the `top` best trials and the importances."""
    summary = study_summary(handle)
    reverse = summary["direction"] == "maximize"
    ranked = [row for row in summary["trials"] if row["state"] == "COMPLETE" and row["value"] is not None]
    ranked.sort(key=lambda row: row["value"], reverse=reverse)
    values, reason = importances(handle)
    data = {**summary, "top_trials": ranked[:top], "importances": values}
    if reason is not None:
        data["importances_note"] = reason
    data["study_settings"] = handle.user_attrs.get(STUDY_ATTR)
    return data


def show_text(data: dict[str, Any]) -> str:
    """`pccore tune show` as text: counts, the best trial, a table of the top trials, the importances."""
    lines = [
        f"study {data['study']} ({data['direction']}): {data['n_complete']} complete, {data['n_pruned']} pruned, "
        f"{data['n_failed']} failed, {data['n_running']} running"
    ]
    if data["best_trial"] is None:
        lines.append("no complete trial yet")
    else:
        lines.append(f"best: trial {data['best_trial']}, value {data['best_value']:.4f}")
    top = data["top_trials"]
    if top:
        keys = sorted({key for row in top for key in row["params"]})
        header = ["rank", "trial", "value", *keys]
        rows = [[str(rank), str(row["number"]), f"{row['value']:.4f}",
                 *(_cell(row["params"].get(key)) for key in keys)] for rank, row in enumerate(top, start=1)]
        widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
        lines.append("")
        lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    failed = [row for row in data["trials"] if row["state"] == "FAIL"]
    if failed:
        lines.append("")
        lines.append("failed trials:")
        lines += [f"  trial {row['number']}: {row.get('reason', '')}" for row in failed[:SHOWN_FAILURES]]
        if len(failed) > SHOWN_FAILURES:
            lines.append(f"  ... and {len(failed) - SHOWN_FAILURES} more (pccore tune show --json lists them all)")
    lines.append("")
    if data["importances"] is None:
        lines.append(data["importances_note"])
    else:
        lines.append("parameter importances (Optuna's default evaluator):")
        width = max(len(k) for k in data["importances"]) if data["importances"] else 0
        lines += [f"  {key.ljust(width)}  {value:.3f}" for key, value in data["importances"].items()]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_figures(handle: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's matplotlib figures of the study as PNG files in `folder`; a figure that needs more trials
    than the study has is left out with a note (the paths written are returned)."""
    from pccore.inspect.figures import check_png_path, save_png

    for name in FIGURES:
        check_png_path(folder / name)  # matplotlib installed, the folder writable: before any drawing
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    complete = handle.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for name, function in FIGURES.items():
        if function == "plot_param_importances" and importances(handle)[0] is None:
            continue
        if not complete:
            continue
        # Optuna switches matplotlib's style for its figures: keep that inside this block
        with warnings.catch_warnings(), plt.rc_context():
            warnings.simplefilter("ignore")
            axes = getattr(optuna_plots, function)(handle)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            # Optuna lays its figures out for the screen: its legends, long parameter names and rotated
            # labels run off the canvas; the tight layout fits the panels around them
            figure.set_layout_engine("tight")
            try:
                written.append(save_png(figure, folder / name))
            finally:
                plt.close(figure)
    return written
