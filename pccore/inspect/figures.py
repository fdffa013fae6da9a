"""Figures of the paper's kind, drawn with matplotlib (the optional extra `pip install "pccore[plot]"`).

Each figure function takes the data `pccore diagnose --json` / `pccore schedule --json` print (the dicts
`pccore.diagnose_recipe` and `pccore.precision_schedule` return) and returns a `matplotlib.figure.Figure`
built without pyplot, so it neither needs a display nor changes a notebook's backend. `save_png` writes
one to a PNG file; `check_png_path` validates the output path before any work is done.

Both heatmaps put the inference step t on the x axis and the layer l on the y axis (layer 1 at the
bottom), so the wavefront (at step t only layers l >= L - t carry error) is the staircase running down
from the top left.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pccore.core.errors import MissingDependency, UsageError

PLOT_EXTRA = 'pip install "pccore[plot]"'

LOG_SPAN = 100.0
"""A precision table whose largest positive value is at least this many times its smallest is drawn on a
log colour scale (the spiking table spans peak / base = 1000); a narrower one on a linear scale."""

MAX_CELLS = 40
"""The heatmaps grow with the steps and layers up to this many of each, then keep their size (a deeper
model's cells get thinner; its ticks are spaced out by `_ticks`)."""

MASKED_COLOR = "#d9d9d9"
"""Cells without a value on the log scale: zero energy below the wavefront, or a zero precision."""


def _matplotlib() -> Any:
    """The matplotlib modules a figure needs, or MissingDependency naming the extra that installs them."""
    try:
        import matplotlib.colors
        import matplotlib.figure
    except ImportError as err:
        raise MissingDependency(
            f"drawing figures needs matplotlib, which is not installed here ({err}); install it with "
            f"{PLOT_EXTRA} (or pip install matplotlib) and run the command again"
        ) from None
    return matplotlib


def check_png_path(path: str | os.PathLike[str]) -> Path:
    """The output path of a figure, checked before any work: it ends in .png, its folder exists and is
    writable, it is not a folder itself, and matplotlib is installed. UsageError (or MissingDependency)
    says what is wrong."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise UsageError(f"--plot {path}: the figure is written as PNG, so the file name must end in .png")
    if target.is_dir():
        raise UsageError(f"--plot {path}: is a folder; give a file name ending in .png")
    folder = target.parent
    if not folder.exists():
        raise UsageError(f"--plot {path}: the folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise UsageError(f"--plot {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"--plot {path}: cannot write there (permission denied)")
    _matplotlib()
    return target


def save_png(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Render `figure` as PNG and write it to `path` atomically (a temporary file renamed over the target,
    so a failure never leaves a torn image); UsageError when the file cannot be written."""
    from pccore.run.checkpoint import atomic_write_bytes

    target = check_png_path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    try:
        atomic_write_bytes(target, buffer.getvalue())
    except OSError as err:
        raise UsageError(f"--plot {path}: cannot write the figure: {err.strerror or err}") from None
    return target


# --- data ----------------------------------------------------------------------------------------


def masked_energy(energy: Sequence[Sequence[float]]) -> np.ma.MaskedArray:
    """The energy table `[t][l]` with every cell that a log scale cannot show masked: zeros (layers the
    error has not reached yet), negative and non-finite values."""
    table = np.asarray(energy, dtype=float).reshape(len(energy), -1)
    return np.ma.masked_where(~np.isfinite(table) | (table <= 0), table)


def _log_norm(matplotlib: Any, values: np.ma.MaskedArray) -> Any:
    """A log colour scale over the unmasked values (widened by a decade each way when they are all equal)."""
    shown = values.compressed()
    if shown.size == 0:
        return matplotlib.colors.LogNorm(vmin=0.1, vmax=1.0)
    low, high = float(shown.min()), float(shown.max())
    if low == high:
        low, high = low / 10, high * 10
    return matplotlib.colors.LogNorm(vmin=low, vmax=high)


def _wavefront(ax: Any, layers: int, steps: int, color: str, hatch: bool) -> None:
    """The staircase below which no error has arrived (cells (t, l) with l < L - t), as a dashed line,
    with the cells below it hatched when `hatch` (their values exist but the engine ignores them)."""
    xs, ys = [], []
    for t in range(steps):
        edge = max(1, layers - t) - 1.5  # layer l's row is centred at l - 1: the first active row's lower edge
        xs += [t - 0.5, t + 0.5]
        ys += [edge, edge]
    if hatch:
        ax.fill_between(xs, -0.5, ys, facecolor="none", edgecolor=color, hatch="///", linewidth=0.0, alpha=0.6)
    ax.plot(xs, ys, color=color, linewidth=1.2, linestyle="--")


def _layer_axis(ax: Any, layers: int) -> None:
    ticks = _ticks(layers)
    ax.set_yticks([l - 1 for l in ticks], [str(l) for l in ticks])
    ax.set_ylabel("layer l")


def _step_axis(ax: Any, steps: int) -> None:
    ticks = _ticks(steps, start=0)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("inference step t")


def _cosine_label(cosine: float) -> tuple[float, str, str, str]:
    """Where a cosine bar's value is written, as (x, text, ha, color): beyond the bar's end when there is
    room for it inside the panel's [-1.15, 1.15], else inside the bar's end in white; "n/a" at zero."""
    if math.isnan(cosine):
        return 0.0, " n/a", "left", "black"
    text = f"{cosine:.2f}"
    inside = abs(cosine) > 0.55  # the label is about 0.45 wide on this axis: beyond the bar it would overflow
    if cosine >= 0:
        return (cosine, f"{text} ", "right", "white") if inside else (cosine, f" {text}", "left", "black")
    return (cosine, f" {text}", "left", "white") if inside else (cosine, f"{text} ", "right", "black")


def _fit_text(figure: Any) -> Any:
    """Wrap every panel title wider than its panel, and a figure title wider than the figure, onto more
    lines, so that no text runs off the canvas (constrained layout moves panels, but cannot shorten a
    title wider than the figure itself). Lays the figure out to measure, at most a few times."""
    for _ in range(4):
        figure.draw_without_rendering()
        changed = False
        titles = [(ax.title, ax.get_window_extent().width) for ax in figure.axes]
        titles += [(text, figure.bbox.width) for text in figure.texts]  # the figure's title
        for text, room in titles:
            width = text.get_window_extent().width
            if not text.get_text() or width <= room:
                continue
            words = " ".join(text.get_text().split())
            longest = max(len(line) for line in text.get_text().splitlines())
            chars = max(8, int(longest * room / width) - 1)
            if chars >= longest:
                chars = longest - 1
            text.set_text(textwrap.fill(words, chars, break_long_words=False))
            changed = True
        if not changed:
            break
    return figure


def _ticks(count: int, start: int = 1) -> list[int]:
    """Every index up to 16 of them, else about ten evenly spaced ones."""
    stride = 1 if count <= 16 else math.ceil(count / 10)
    return list(range(start, start + count, stride))


# --- figures -------------------------------------------------------------------------------------


def plot_diagnosis(report: Mapping[str, Any], title: str | None = None) -> Any:
    """The paper's kind of figure for one batch: a heatmap of every layer's energy at every inference step
    (log colour scale; zeros, below the wavefront or underflowed above it, are masked and drawn grey)
    beside a bar per layer of the cosine between its weight update and the backprop gradient ("n/a"
    where the update is all zeros).

    `report` is what `pccore.diagnose_recipe` (or `pccore diagnose --json`) returns: `energy[t][l]` and
    `cosine_to_bp[l]`. Returns a matplotlib Figure.
    """
    matplotlib = _matplotlib()
    energy = masked_energy(report["energy"]) if report["energy"] else np.ma.masked_all((0, 0))
    cosines = [float(c) for c in report["cosine_to_bp"]]
    layers, steps = len(cosines), energy.shape[0]
    figure = matplotlib.figure.Figure(figsize=(4.0 + 0.35 * min(steps, MAX_CELLS) + 3.0,
                                               1.2 + 0.45 * min(max(layers, 4), MAX_CELLS)),
                                      layout="constrained")
    heat_ax, bar_ax = figure.subplots(1, 2, sharey=True, width_ratios=[max(min(steps, MAX_CELLS), 3), 3])
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=MASKED_COLOR)
    if steps and layers:
        image = heat_ax.imshow(energy.T, origin="lower", aspect="auto", cmap=cmap,
                               norm=_log_norm(matplotlib, energy), interpolation="nearest")
        height = figure.get_size_inches()[1]  # the bar's share of the panel: about 0.6 inches, gap and all
        figure.colorbar(image, ax=heat_ax, location="bottom", shrink=0.8, aspect=40,
                        fraction=min(0.15, 0.6 / height), pad=min(0.15, 0.6 / height),
                        label="energy (batch mean, log scale)")
        _wavefront(heat_ax, layers, steps, color="black", hatch=False)
        _step_axis(heat_ax, steps)
    else:
        heat_ax.text(0.5, 0.5, "no inference steps", ha="center", va="center", transform=heat_ax.transAxes)
    heat_ax.set_title("energy per layer and step (grey: zero; below the dashed wavefront no error has arrived)",
                      fontsize="medium")  # wrapped to the panel's width by _fit_text
    _layer_axis(heat_ax, layers)

    positions = list(range(layers))
    colors = ["tab:blue" if c >= 0 else "tab:red" for c in cosines]
    bar_ax.barh(positions, cosines, color=colors, height=0.7)
    for y, c in zip(positions, cosines, strict=True):
        if layers > MAX_CELLS:  # rows too thin to carry their values
            break
        x, label, ha, color = _cosine_label(c)
        bar_ax.text(x, y, label, ha=ha, va="center", color=color, fontsize="small")
    bar_ax.axvline(0.0, color="black", linewidth=0.8)
    bar_ax.set_xlim(-1.15, 1.15)
    bar_ax.set_xlabel("cosine to backprop")
    bar_ax.set_title("weight update vs backprop", fontsize="medium")
    bar_ax.tick_params(labelleft=False)
    if title:
        figure.suptitle(title)
    return _fit_text(figure)


def plot_schedule(schedule: Mapping[str, Any], title: str | None = None) -> Any:
    """The precision table `pi[t][l]` as a heatmap, with the learning-phase row drawn apart on the right on
    the same colour scale. The scale is logarithmic when the positive values span a factor of LOG_SPAN
    or more (zeros then show grey), linear otherwise; the dashed staircase marks the wavefront (the
    engine ignores the weights below it).

    `schedule` is what `pccore.precision_schedule` (or `pccore schedule --json`) returns:
    `inference[t][l]` and `learning[l]`. Returns a matplotlib Figure.
    """
    matplotlib = _matplotlib()
    learning = np.asarray(schedule["learning"], dtype=float)
    layers = learning.shape[0]
    inference = np.asarray(schedule["inference"], dtype=float).reshape(-1, layers)
    steps = inference.shape[0]
    values = np.concatenate([inference.ravel(), learning])
    positive = values[np.isfinite(values) & (values > 0)]
    log = positive.size > 0 and positive.max() >= LOG_SPAN * positive.min()
    if log:
        inference_shown = np.ma.masked_where(~np.isfinite(inference) | (inference <= 0), inference)
        learning_shown = np.ma.masked_where(~np.isfinite(learning) | (learning <= 0), learning)
        norm = _log_norm(matplotlib, np.ma.concatenate([inference_shown.ravel(), learning_shown]))
        scale = "log scale"
    else:
        inference_shown = np.ma.masked_invalid(inference)
        learning_shown = np.ma.masked_invalid(learning)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = matplotlib.colors.Normalize(vmin=low, vmax=high if high > low else low + 1.0)
        scale = "linear scale"
    cmap = matplotlib.colormaps["magma"].with_extremes(bad=MASKED_COLOR)
    figure = matplotlib.figure.Figure(figsize=(3.5 + 0.4 * min(max(steps, 1), MAX_CELLS) + 1.2,
                                               1.2 + 0.45 * min(max(layers, 4), MAX_CELLS)),
                                      layout="constrained")
    table_ax, learn_ax = figure.subplots(1, 2, sharey=True, width_ratios=[max(steps, 1), 1])
    image = None
    if steps:
        image = table_ax.imshow(inference_shown.T, origin="lower", aspect="auto", cmap=cmap, norm=norm,
                                interpolation="nearest")
        _wavefront(table_ax, layers, steps, color="#00c8ff", hatch=True)
        _step_axis(table_ax, steps)
    else:
        table_ax.text(0.5, 0.5, "no inference steps", ha="center", va="center", transform=table_ax.transAxes)
    table_ax.set_title("inference: pi[t][l] (hatched: below the wavefront, unused)", fontsize="medium")
    _layer_axis(table_ax, layers)
    learn_image = learn_ax.imshow(learning_shown.reshape(layers, 1), origin="lower", aspect="auto", cmap=cmap,
                                  norm=norm, interpolation="nearest")
    learn_ax.set_xticks([0], ["learn"])
    learn_ax.set_title("learning", fontsize="medium")
    learn_ax.tick_params(labelleft=False)
    if steps * layers <= 120:
        _annotate(table_ax, inference, norm)
    if layers <= 40:
        _annotate(learn_ax, learning.reshape(1, layers), norm)
    figure.colorbar(image if image is not None else learn_image, ax=[table_ax, learn_ax],
                    label=f"precision ({scale})", pad=0.02)
    if title:
        figure.suptitle(title)
    return _fit_text(figure)


def _annotate(ax: Any, table: np.ndarray, norm: Any) -> None:
    """Each cell's value, in black or white for contrast with its colour; `table` is [t][l]."""
    for t in range(table.shape[0]):
        for l in range(table.shape[1]):
            value = float(table[t, l])
            level = norm(value) if math.isfinite(value) else np.ma.masked
            dark = not np.ma.is_masked(level) and float(level) < 0.6  # magma is dark at the low end
            ax.text(t, l, f"{value:.3g}", ha="center", va="center", fontsize="x-small",
                    color="white" if dark else "black")


def plot_depth(report: Mapping[str, Any], title: str | None = None) -> Any:
    """Test top-1 (%) against depth L, one line per row of a `pccore report` and architecture family (VGG5
    to VGG15 are one line; "PC (MLP)" and "PC (ResMLP)" two), mean ± population std over seeds as error bars,
    one panel per dataset and normalisation (the paper's plain and BF columns). The top-1 is the test top-1
    at the best validation epoch when every cell has a validation split, else the best test top-1. Cells
    whose depth is unknown are left out."""
    matplotlib = _matplotlib()
    cells = [c for c in report["cells"] if c.get("depth") and "best_top1_mean" in c]
    if not cells:
        raise UsageError("--plot: no cell has a model whose depth is known, so there is nothing to draw")
    validated = all("test_top1_at_best_val_mean" in c for c in cells)
    field = "test_top1_at_best_val" if validated else "best_top1"
    ylabel = "test top-1 at best val. (%)" if validated else "best test top-1 (%)"
    normalization = {(col["dataset"], col["model"]): col.get("normalization", "") for col in report["columns"]}
    panels = sorted({(c["dataset"], normalization.get((c["dataset"], c["model"]), "")) for c in cells})
    figure = matplotlib.figure.Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (dataset, norm) in zip(axes, panels, strict=True):
        mine = [c for c in cells if c["dataset"] == dataset
                and normalization.get((c["dataset"], c["model"]), "") == norm]
        for row in report["rows"]:
            families = sorted({c.get("family", "") for c in mine if c["row"] == row})
            for family in families:
                points = sorted((c["depth"], 100 * c[f"{field}_mean"], 100 * c[f"{field}_std"]) for c in mine
                                if c["row"] == row and c.get("family", "") == family)
                depth, mean, std = zip(*points, strict=True)
                label = row if len(families) == 1 else f"{row} ({family})"
                ax.errorbar(depth, mean, yerr=std, marker="o", capsize=3, label=label)
        ax.set_title(f"{dataset}{' ' + norm if norm else ''}")
        ax.set_xlabel("depth L (blocks)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({c["depth"] for c in mine}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return _fit_text(figure)

