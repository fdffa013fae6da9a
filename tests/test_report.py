"""`pccore report`: fabricated run directories with known accuracies become the paper's table shape, with
exact cells (mean ± population std in %, number of seeds), blank missing cells, method names from the
components' labels, depth from the architecture, and pooled runs checked."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

import pccore
from pccore.cli import main
from pccore.experiments.report import build_report
from pccore.recipe import load_recipe, recipe_to_toml

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def fabricate(folder: Path, recipe: str, top1: dict[int, float], overrides: tuple[str, ...] = (),
              validation: dict[int, tuple[float, float]] | None = None, name: str | None = None) -> Path:
    """A run directory `folder/<name>` of a shipped recipe whose seeds finished with the given best top-1
    (and, given `validation`, best validation top-1 and test top-1 at that epoch)."""
    loaded = load_recipe(RECIPES / f"{recipe}.toml", overrides)
    loaded = attrs.evolve(loaded, run=attrs.evolve(loaded.run, seeds=list(top1)))
    run_dir = folder / (name or recipe)
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.toml").write_text(recipe_to_toml(loaded))
    for seed, value in top1.items():
        summary = {"seed": seed, "best_top1": value, "best_top5": 1.0, "epochs": 3}
        if validation is not None:
            summary["best_val_top1"], summary["test_top1_at_best_val"] = validation[seed]
        (run_dir / f"seed_{seed}").mkdir()
        (run_dir / f"seed_{seed}" / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """A sweep folder: BP and PC on VGG5, S+F with BatchNorm Freezing on VGG5 and VGG10 (CIFAR-10), PC on
    VGG5 / CIFAR-100, and a run whose seeds have not finished."""
    folder = tmp_path / "sweep"
    fabricate(folder, "vgg5_cifar10_bp", {0: 0.80, 1: 0.90})
    fabricate(folder, "vgg5_cifar10_pc", {0: 0.70})
    fabricate(folder, "vgg5_cifar10_sf_bf", {0: 0.5, 1: 0.6, 2: 0.7})
    fabricate(folder, "vgg10_cifar10_sf_bf", {3: 0.75, 4: 0.85}, validation={3: (0.80, 0.70), 4: (0.90, 0.80)})
    fabricate(folder, "vgg5_cifar100_pc", {0: 0.40})
    (folder / "vgg7_cifar10_df").mkdir()
    (folder / "vgg7_cifar10_df" / "recipe.toml").write_text(
        recipe_to_toml(load_recipe(RECIPES / "vgg7_cifar10_df.toml")))
    return folder


EXPECTED_MD = """\
### best test top-1 (%), mean ± population std over seeds (number of seeds)

| method | CIFAR-10 VGG5 | CIFAR-10 VGG5BF | CIFAR-10 VGG10BF | CIFAR-100 VGG5 |
|---|---|---|---|---|
| BP | 85.00 ± 5.00 (2) |  |  |  |
| PC | 70.00 ± 0.00 (1) |  |  | 40.00 ± 0.00 (1) |
| S+F |  | 60.00 ± 8.16 (3) | 80.00 ± 5.00 (2) |  |

### test top-1 at the best validation epoch (%), mean ± population std over seeds (number of seeds)

| method | CIFAR-10 VGG5 | CIFAR-10 VGG5BF | CIFAR-10 VGG10BF | CIFAR-100 VGG5 |
|---|---|---|---|---|
| BP |  |  |  |  |
| PC |  |  |  |  |
| S+F |  |  | 75.00 ± 5.00 (2) |  |

### best validation top-1 (%), mean ± population std over seeds (number of seeds)

| method | CIFAR-10 VGG5 | CIFAR-10 VGG5BF | CIFAR-10 VGG10BF | CIFAR-100 VGG5 |
|---|---|---|---|---|
| BP |  |  |  |  |
| PC |  |  |  |  |
| S+F |  |  | 85.00 ± 5.00 (2) |  |
"""


def test_the_markdown_tables_have_exact_cells_and_blanks(grid: Path, capsys) -> None:
    assert main(["report", str(grid)]) == 0
    captured = capsys.readouterr()
    assert captured.out == EXPECTED_MD
    assert f"pccore: note: {grid / 'vgg7_cifar10_df'} has no finished seed yet: left out" in captured.err


def test_the_cells_as_data(grid: Path) -> None:
    report = build_report([grid])
    assert report["rows"] == ["BP", "PC", "S+F"]
    cells = {(c["row"], c["dataset"], c["model"]): c for c in report["cells"]}
    sf = cells[("S+F", "CIFAR-10", "VGG5BF")]
    assert (sf["n"], sf["depth"]) == (3, 5)
    assert sf["best_top1_mean"] == pytest.approx(0.6)
    assert sf["best_top1_std"] == pytest.approx((0.02 / 3) ** 0.5)  # deviations -0.1, 0, 0.1; ddof 0
    deep = cells[("S+F", "CIFAR-10", "VGG10BF")]
    assert deep["depth"] == 10  # L of VGG10, counted from the built architecture
    assert (deep["test_top1_at_best_val_mean"], deep["best_val_top1_mean"]) == pytest.approx((0.75, 0.85))
    assert "best_val_top1_mean" not in sf


def test_csv_and_latex(grid: Path, capsys) -> None:
    assert main(["report", str(grid), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "table,method,CIFAR-10 VGG5,CIFAR-10 VGG5BF,CIFAR-10 VGG10BF,CIFAR-100 VGG5"
    assert lines[1] == "best test top-1 (%),BP,85.00 ± 5.00 (2),,,"
    assert lines[3] == "best test top-1 (%),S+F,,60.00 ± 8.16 (3),80.00 ± 5.00 (2),"
    assert lines[6] == "test top-1 at the best validation epoch (%),S+F,,,75.00 ± 5.00 (2),"
    assert main(["report", str(grid), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert r"\begin{tabular}{lcccc}" in latex
    assert r"BP & $85.00 \pm 5.00$ (2) &  &  &  \\" in latex
    assert r"S+F &  & $60.00 \pm 8.16$ (3) & $80.00 \pm 5.00$ (2) &  \\" in latex


@pytest.mark.parametrize(("recipe", "overrides", "method", "model"), [
    ("vgg5_cifar10_bp", (), "BP", "VGG5"),
    ("vgg5_cifar10_bp", ("precision.name=spiking",), "BP", "VGG5"),  # no inference: the precision is moot
    ("vgg5_cifar10_bp_bf", (), "BP", "VGG5BF"),
    ("vgg5_cifar10_pc", (), "PC", "VGG5"),
    ("vgg5_cifar10_pc", ("precision.name=spiking",), "S", "VGG5"),
    ("vgg5_cifar10_pc", ("precision.name=decaying",), "D", "VGG5"),
    ("vgg5_cifar10_pc", ("update.name=forward",), "F", "VGG5"),
    ("vgg5_cifar10_df_bf", (), "D+F", "VGG5BF"),
    ("vgg5_cifar10_sf", ("nudging.name=center",), "S+F+center", "VGG5"),
    ("vgg5_cifar10_ipc_bf", (), "S+iPC", "VGG5BF"),
    ("vgg5_cifar10_pc", ("inference.name=incremental",), "iPC", "VGG5"),
    ("vgg5_cifar10_epc", (), "ePC", "VGG5"),
    ("vgg5_cifar10_ipc", (), "S+iPC", "VGG5"),
])
def test_method_and_model_names_come_from_the_component_labels(tmp_path: Path, recipe: str, overrides: tuple,
                                                                method: str, model: str) -> None:
    fabricate(tmp_path, recipe, {0: 0.5}, overrides)
    (cell,) = build_report([tmp_path])["cells"]
    assert (cell["row"], cell["model"]) == (method, model)


def test_runs_of_one_recipe_pool_their_seeds_and_other_recipes_need_by(tmp_path: Path, capsys) -> None:
    first = fabricate(tmp_path, "vgg5_cifar10_sf", {0: 0.5, 1: 0.7}, name="a")
    second = fabricate(tmp_path, "vgg5_cifar10_sf", {2: 0.6}, name="b")
    (cell,) = build_report([first, second])["cells"]
    assert cell["n"] == 3 and cell["best_top1_mean"] == pytest.approx(0.6)

    fabricate(tmp_path / "again", "vgg5_cifar10_sf", {1: 0.9})
    assert main(["report", str(first), str(tmp_path / "again")]) == 2
    assert "seed 1 of the cell (S+F, CIFAR-10 VGG5) is in both" in capsys.readouterr().err

    fabricate(tmp_path / "t7", "vgg5_cifar10_sf", {5: 0.8}, ("inference.steps=7",))
    assert main(["report", str(first), str(tmp_path / "t7")]) == 2
    assert "(they differ in inference.steps); tell them apart with --by, e.g. --by method,inference.steps" in (
        capsys.readouterr().err)
    assert main(["report", str(first), str(tmp_path / "t7"), "--by", "method,inference.steps"]) == 0
    rows = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("| S+F")]
    assert rows == ["| S+F, steps=5", "| S+F, steps=7"]


def test_plot_draws_top1_against_depth(grid: Path, tmp_path: Path) -> None:
    target = tmp_path / "depth.png"
    assert main(["report", str(grid), "--plot", str(target)]) == 0
    assert target.read_bytes().startswith(b"\x89PNG")
    figure = pccore.plot_depth(pccore.report_runs([grid]))
    panels = {ax.get_title(): ax for ax in figure.axes}
    assert sorted(panels) == ["CIFAR-10", "CIFAR-10 BF", "CIFAR-100"]
    (bars,) = [c for c in panels["CIFAR-10 BF"].containers if c.get_label() == "S+F"]
    line = bars.lines[0]
    assert list(line.get_xdata()) == [5, 10]  # L of VGG5 and VGG10
    assert list(line.get_ydata()) == pytest.approx([60.0, 80.0])


def test_a_model_at_several_depths_gets_a_column_per_depth_and_a_line_per_family(tmp_path: Path) -> None:
    """MLPs of 2 and 3 layers and muPC's ResMLP of 2 blocks, all validated: columns "MLP L=2", "MLP L=3"
    and "ResMLP"; the plot's PC row is drawn once per family, at the test top-1 of the best validation epoch."""
    folder = tmp_path / "depths"
    fabricate(folder, "epc_digits_mlp20", {0: 0.9}, ("model.hidden=[16]", "inference.name=states"),
              {0: (0.5, 0.40)}, name="mlp2")
    fabricate(folder, "epc_digits_mlp20", {0: 0.9, 1: 0.8}, ("model.hidden=[16, 16]", "inference.name=states"),
              {0: (0.5, 0.60), 1: (0.5, 0.70)}, name="mlp3")
    fabricate(folder, "mupc_digits_d32", {0: 0.9}, ("model.width=16", "model.depth=1"),
              {0: (0.5, 0.30)}, name="resmlp2")
    report = build_report([folder])
    assert [c["model"] for c in report["columns"]] == ["MLP L=2", "ResMLP", "MLP L=3"]
    figure = pccore.plot_depth(report)
    (ax,) = figure.axes
    assert ax.get_ylabel() == "test top-1 at best val. (%)"
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert sorted(lines) == ["PC (MLP)", "PC (ResMLP)"]
    assert list(lines["PC (MLP)"].get_xdata()) == [2, 3]
    assert list(lines["PC (MLP)"].get_ydata()) == pytest.approx([40.0, 65.0])
    assert list(lines["PC (ResMLP)"].get_xdata()) == [2]


@pytest.mark.parametrize(("argv", "message"), [
    (["nowhere"], "nowhere: not a folder"),
    (["empty"], "empty: no run directory (a folder with recipe.toml) in it"),
    (["grid", "--by", "inference.stpes"], "--by inference.stpes: no run's recipe has the key inference.stpes"),
    (["grid", "--by", "steps"], "--by steps: 'steps' is not method, recipe or a recipe key SECTION.KEY"),
])
def test_bad_input_is_refused(grid: Path, tmp_path: Path, argv: list[str], message: str, capsys) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"nowhere": str(tmp_path / "nowhere"), "empty": str(tmp_path / "empty"), "grid": str(grid)}
    assert main(["report", *(paths.get(a, a) for a in argv)]) == 2
    assert message in capsys.readouterr().err
