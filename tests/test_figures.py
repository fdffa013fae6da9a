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
