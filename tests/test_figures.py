"""Figures: what the heatmaps and bars hold, PNG files, the `--plot` option and its errors, and a clear
message when matplotlib is missing."""

from __future__ import annotations

import errno
import json
import math
import struct
import sys

import numpy as np
import pytest
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

import pccore
from pccore.cli import main
from pccore.core.errors import MissingDependency, UsageError
from pccore.inspect import figures
from pccore.inspect.figures import plot_diagnosis, plot_schedule, save_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

REPORT = {
    "layers": 3,
    "steps": 4,
    "energy": [[0.0, 0.0, 2.5], [0.0, 0.4, 1.5], [0.03, 0.2, 1.0], [0.01, 0.1, 0.9]],
    "cosine_to_bp": [0.25, -0.5, 1.0],
    "loss": 1.0,
    "bp_loss": 1.0,
}

RECIPE = """
[run]
name = "figs"
seeds = [1]
device = "cpu"
[data]
name = "digits"
size = 8
channels = 1
batch_size = 16
[model]
name = "mlp"
hidden = [12, 12]
[precision]
name = "spiking"
[update]
name = "forward"
[inference]
steps = 4
lr = 0.5
"""


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (which must come first)."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "figs.toml"
    path.write_text(RECIPE)
    return str(path)


# --- the figure functions -------------------------------------------------------------------------


def test_diagnosis_heatmap_holds_the_energy_with_zeros_masked():
    figure = plot_diagnosis(REPORT)
    assert isinstance(figure, Figure)
    heat_ax = figure.axes[0]
    (image,) = heat_ax.get_images()
    shown = image.get_array()
    energy = np.array(REPORT["energy"])
    assert shown.shape == (3, 4)  # layers on the y axis, steps on the x axis
    np.testing.assert_array_equal(np.ma.getmaskarray(shown), (energy == 0.0).T)
    np.testing.assert_array_equal(shown.compressed(), energy.T[energy.T > 0])
    assert isinstance(image.norm, LogNorm)
    assert (image.norm.vmin, image.norm.vmax) == (0.01, 2.5)
    assert image.origin == "lower"


def test_diagnosis_bars_are_the_cosines_per_layer():
    figure = plot_diagnosis(REPORT, title="run")
    bar_ax = figure.axes[1]
    bars = bar_ax.patches
    assert [b.get_width() for b in bars] == REPORT["cosine_to_bp"]
    assert [b.get_y() + b.get_height() / 2 for b in bars] == [0, 1, 2]  # beside layer rows 1..3
    assert bar_ax.get_xlim() == (-1.15, 1.15)
    assert figure.get_suptitle() == "run"


def test_diagnosis_masks_non_finite_energy_and_marks_missing_cosines():
    report = {**REPORT, "energy": [[0.0, math.inf, 1.0], [0.0, math.nan, 2.0]], "cosine_to_bp": [math.nan, 0.5, 1.0]}
    figure = plot_diagnosis(report)
    shown = figure.axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(shown), [[True, True], [True, True], [False, False]])
    assert "n/a" in [t.get_text().strip() for t in figure.axes[1].texts]


def test_diagnosis_with_a_single_energy_value_still_has_a_log_scale():
    figure = plot_diagnosis({**REPORT, "energy": [[0.0, 0.0, 2.0]]})
    norm = figure.axes[0].get_images()[0].norm
    assert isinstance(norm, LogNorm) and norm.vmin < 2.0 < norm.vmax


def test_schedule_heatmap_is_the_table_with_the_learning_row_apart():
    schedule = {"layers": 3, "steps": 2, "inference": [[0.001, 0.001, 1.0], [0.001, 1.0, 0.001]],
                "learning": [1.0, 1.0, 1.0]}
    figure = plot_schedule(schedule)
    table_ax, learn_ax = figure.axes[:2]
    (table,) = table_ax.get_images()
    (learning,) = learn_ax.get_images()
    np.testing.assert_array_equal(table.get_array(), np.array(schedule["inference"]).T)
    np.testing.assert_array_equal(learning.get_array(), [[1.0], [1.0], [1.0]])
    assert isinstance(table.norm, LogNorm) and table.norm is learning.norm  # one colour scale for both
    assert (table.norm.vmin, table.norm.vmax) == (0.001, 1.0)
    assert table_ax.get_xlabel() == "inference step t" and table_ax.get_ylabel() == "layer l"
    assert [t.get_text() for t in learn_ax.get_xticklabels()] == ["learn"]
    assert "0.001" in [t.get_text() for t in table_ax.texts]  # small tables carry their values


def test_schedule_on_a_narrow_range_is_linear_and_log_masks_zeros():
    narrow = plot_schedule({"layers": 2, "steps": 2, "inference": [[1.0, 2.0], [0.5, 1.0]],
                            "learning": [1.0, 1.0]})
    norm = narrow.axes[0].get_images()[0].norm
    assert not isinstance(norm, LogNorm) and (norm.vmin, norm.vmax) == (0.5, 2.0)
    wide = plot_schedule({"layers": 2, "steps": 2, "inference": [[0.0, 100.0], [1.0, 0.0]],
                          "learning": [1.0, 1.0]})
    shown = wide.axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(shown), [[True, False], [False, True]])


def test_save_png_writes_a_valid_png_of_the_figure(tmp_path):
    figure = plot_diagnosis(REPORT)
    path = save_png(figure, tmp_path / "d.PNG")
    data = path.read_bytes()
    width, height = _png_size(data)
    w_in, h_in = figure.get_size_inches()
    assert (width, height) == (round(w_in * 120), round(h_in * 120))
    assert len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["d.PNG"]  # no temporary file left behind


# --- no text off the canvas ---------------------------------------------------------------------


def _drawn_text_outside(figure, monkeypatch, dpi: float = 120) -> list[str]:
    """Every text the figure draws (at `dpi`, save_png's) whose window extent leaves the figure's canvas,
    named with its extent. Only texts actually drawn count: matplotlib keeps tick labels outside the
    view limits as invisible-in-practice artists that are never drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    drawn = []
    real_draw = Text.draw

    def recording_draw(self, renderer):
        drawn.append(self)
        return real_draw(self, renderer)

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    monkeypatch.setattr(Text, "draw", recording_draw)
    canvas.draw()
    monkeypatch.setattr(Text, "draw", real_draw)
    renderer = canvas.get_renderer()
    box = figure.bbox
    outside = []
    for text in drawn:
        if not (text.get_visible() and text.get_text().strip()):
            continue
        extent = text.get_window_extent(renderer)
        if extent.x0 < box.x0 - 0.5 or extent.x1 > box.x1 + 0.5 or extent.y0 < box.y0 - 0.5 or extent.y1 > box.y1 + 0.5:
            outside.append(f"{text.get_text()!r} at {extent.bounds} (canvas {box.bounds})")
    assert drawn, "nothing was drawn"
    return outside


def _report(steps: int, layers: int, cosine: float = 1.0) -> dict:
    energy = [[0.0 if l < layers - 1 - t else 10.0 ** -(t % 5) for l in range(layers)] for t in range(steps)]
    return {"layers": layers, "steps": steps, "energy": energy, "cosine_to_bp": [cosine] * layers}


QUICKSTART_TITLE = "quickstart: spiking precision, forward update, frozen normalization"


@pytest.mark.parametrize("steps,layers,cosine", [
    (5, 5, 1.0),      # the quickstart recipe's diagnosis: the figure of the bug report
    (5, 5, -1.0),
    (1, 1, 0.3),
    (0, 3, math.nan),
    (3, 17, 0.999),   # VGG19
    (40, 129, 0.5),   # muPC, 128 hidden layers
])
def test_the_diagnosis_keeps_its_text_on_the_canvas(monkeypatch, steps, layers, cosine):
    figure = plot_diagnosis(_report(steps, layers, cosine), title=QUICKSTART_TITLE)
    assert _drawn_text_outside(figure, monkeypatch) == []
    # the cosine labels also stay inside their panel, rather than over its frame
    bar_ax = figure.axes[1]
    panel = bar_ax.get_window_extent()
    for label in bar_ax.texts:
        extent = label.get_window_extent()
        assert panel.x0 <= extent.x0 and extent.x1 <= panel.x1, label.get_text()


def test_the_quickstart_diagnosis_title_is_wrapped_not_cut(monkeypatch):
    figure = plot_diagnosis(_report(5, 5), title=QUICKSTART_TITLE)
    title = figure.axes[0].get_title()
    assert "\n" in title and " ".join(title.split()) == (
        "energy per layer and step (grey: zero; below the dashed wavefront no error has arrived)")


@pytest.mark.parametrize("steps,layers", [(5, 5), (1, 1), (0, 2), (2, 30), (15, 15), (40, 17), (129, 129)])
def test_the_schedule_keeps_its_text_on_the_canvas(monkeypatch, steps, layers):
    schedule = {"layers": layers, "steps": steps, "learning": [1.0] * layers,
                "inference": [[1.0 if l == layers - 1 - t else 0.001 for l in range(layers)] for t in range(steps)]}
    figure = plot_schedule(schedule, title=f"a_long_recipe_name_of_a_study: precision 'spiking', {layers} layers, "
                                           f"T = {steps}")
    assert _drawn_text_outside(figure, monkeypatch) == []


@pytest.mark.parametrize("datasets", [["CIFAR-10"], ["CIFAR-10", "CIFAR-100", "Tiny ImageNet"]])
def test_the_depth_figure_keeps_its_text_on_the_canvas(monkeypatch, datasets):
    columns = [{"dataset": d, "model": f"VGG{n}", "normalization": ""} for d in datasets for n in (5, 7, 10, 15)]
    rows = ["BP", "PC", "S+F", "D+F, inference.steps=20"]
    cells = [{"row": row, "dataset": c["dataset"], "model": c["model"], "depth": int(c["model"][3:]),
              "best_top1_mean": 0.5 + 0.01 * i, "best_top1_std": 0.01}
             for i, row in enumerate(rows) for c in columns]
    figure = pccore.plot_depth({"rows": rows, "columns": columns, "cells": cells},
                               title="best test top-1 against depth, every method of the paper's tables")
    assert _drawn_text_outside(figure, monkeypatch) == []


def test_the_tune_figures_keep_their_text_on_the_canvas(tmp_path, monkeypatch):
    """Optuna draws the study's figures; pccore lays them out before writing them."""
    import optuna

    from pccore.experiments.tune import results

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: trial.suggest_float("inference.lr", 0.1, 0.9, log=True)
                   + trial.suggest_categorical("inference.momentum", [0.0, 0.1])
                   + trial.suggest_float("optimizer.lr", 3e-4, 3e-3, log=True), n_trials=8)
    outside = {}
    real_save = figures.save_png

    def checking_save(figure, path):
        with pytest.MonkeyPatch.context() as patch:
            outside[path.name] = _drawn_text_outside(figure, patch)
        return real_save(figure, path)

    monkeypatch.setattr(figures, "save_png", checking_save)
    results.write_figures(study, tmp_path)
    assert outside == {"history.png": [], "parallel_coordinate.png": [], "importances.png": []}


# --- output paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,message",
    [
        ("fig.jpg", "the file name must end in .png"),
        ("missing/fig.png", "the folder {tmp}/missing does not exist"),
        ("afile/fig.png", "{tmp}/afile is not a folder"),
        ("adir.png", "is a folder; give a file name ending in .png"),
    ],
)
def test_bad_output_paths_are_refused(tmp_path, name, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(UsageError) as err:
        figures.check_png_path(tmp_path / name)
    assert message.format(tmp=tmp_path) in str(err.value)


def test_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(figures.os, "access", lambda path, mode: False)
    with pytest.raises(UsageError, match="cannot write there"):
        figures.check_png_path(tmp_path / "fig.png")


def test_a_failed_write_keeps_the_previous_figure(tmp_path, monkeypatch):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    import pccore.run.checkpoint

    def full(target, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pccore.run.checkpoint, "atomic_write_bytes", full)
    with pytest.raises(UsageError, match="cannot write the figure: No space left on device"):
        save_png(plot_diagnosis(REPORT), path)
    assert path.read_bytes() == b"old"


# --- matplotlib missing --------------------------------------------------------------------------


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make every `import matplotlib...` fail, as on an installation without the plot extra."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_missing_matplotlib_names_the_extra(no_matplotlib):
    with pytest.raises(MissingDependency) as err:
        plot_schedule({"layers": 1, "steps": 1, "inference": [[1.0]], "learning": [1.0]})
    assert 'pip install "pccore[plot]"' in str(err.value)
    assert MissingDependency.exit_code == 1


def test_missing_matplotlib_stops_the_command_before_any_work(no_matplotlib, recipe, tmp_path, capsys):
    assert main(["diagnose", recipe, "--smoke", "--plot", str(tmp_path / "d.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before the batch ran
    assert captured.err.startswith("pccore: error: drawing figures needs matplotlib")
    assert 'pip install "pccore[plot]"' in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "d.png").exists()


# --- the command line ----------------------------------------------------------------------------


def test_schedule_plot_writes_the_figure_and_keeps_the_json(recipe, tmp_path, capsys):
    target = tmp_path / "schedule.png"
    assert main(["schedule", recipe, "--json", "--plot", str(target)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["layers"] == 3 and report["steps"] == 4
    assert captured.err.strip() == f"figure written to {target}"
    width, height = _png_size(target.read_bytes())
    assert width > 300 and height > 200


def test_diagnose_plot_draws_the_batch_the_json_reports(recipe, tmp_path, capsys, monkeypatch):
    drawn = {}
    real = figures.plot_diagnosis

    def spy(report, title=None):
        drawn["report"], drawn["title"] = report, title
        return real(report, title=title)

    monkeypatch.setattr(figures, "plot_diagnosis", spy)
    target = tmp_path / "diagnosis.png"
    assert main(["diagnose", recipe, "--smoke", "--json", "--plot", str(target)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert drawn["report"] == report
    assert drawn["title"] == "figs: spiking precision, forward update, none normalization (smoke data)"
    assert target.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("command", ["schedule", "diagnose"])
def test_a_bad_plot_path_is_a_usage_error_before_any_work(recipe, tmp_path, capsys, command):
    assert main([command, recipe, "--plot", str(tmp_path / "nowhere" / "f.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "does not exist; create it first" in captured.err and "Traceback" not in captured.err



@pytest.mark.parametrize("command,example", [
    ("diagnose", "pccore diagnose recipes/quickstart.toml --plot diagnosis.png"),
    ("schedule", "pccore schedule recipes/vgg10_cifar10_sf.toml --plot spiking.png"),
])
def test_help_shows_the_plot_option_with_an_example(capsys, command, example):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--plot FILE.png" in text and 'pip install "pccore[plot]"' in " ".join(text.split())
    assert example in text
