"""`pccore sweep`: every recipe for every seed in its own process, failures isolated and reported, finished
seeds skipped, interrupted ones resumed, a hard timeout per run, and the seeds and folders it accepts."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from pccore.cli import main
from pccore.core.errors import UsageError
from pccore.experiments.sweep import parse_seeds
from pccore.recipe import load_recipe
from tests.test_training import write_recipe

pytestmark = pytest.mark.timeout(180)
"""A study or sweep that never ends fails the test instead of hanging the suite."""

def _recipe(folder: Path, name: str, **changes) -> Path:
    """The tiny digits recipe as `folder/<name>.toml` (run name = name)."""
    settings = {"epochs": 2, "max_batches": 2, "tensorboard": False, **changes}
    path = write_recipe(folder, run_name=name, **settings)
    return path.rename(folder / f"{name}.toml")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.timeout(300)
def test_a_sweep_isolates_failures_then_skips_finished_seeds_and_resumes_the_others(tmp_path: Path, capsys) -> None:
    good = _recipe(tmp_path, "good", seeds=[0, 1])
    bad = _recipe(tmp_path, "bad", run_precision="bf16")  # a CUDA option: it fails on the CPU
    out = tmp_path / "sweep"
    assert main(["sweep", str(good), str(bad), "--workers", "2", "--out", str(out)]) == 1  # each recipe's seeds
    printed = capsys.readouterr().out
    assert "done good seed 0: best top-1 " in printed and "done good seed 1: best top-1 " in printed
    assert 'FAILED bad seed 0 (exit 2): run.precision = "bf16" needs a CUDA device' in printed

    # the good recipe is an ordinary run directory with both seeds and their aggregate
    seeds = [_json(out / "good" / f"seed_{s}" / "summary.json") for s in (0, 1)]
    summary = _json(out / "good" / "summary.json")
    top1 = [s["best_top1"] for s in seeds]
    assert summary["top1_mean"] == pytest.approx(sum(top1) / 2)
    assert summary["top1_std"] == pytest.approx(math.sqrt(sum((t - sum(top1) / 2) ** 2 for t in top1) / 2))
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]
    assert _json(out / "good" / "run.json")["status"] == "finished"
    assert load_recipe(out / "good" / "recipe.toml").run.seeds == [0, 1]
    info = _json(out / "bad" / "run.json")
    assert info["status"] == "failed" and info["error"].startswith("seed 0: failed (exit 2): run.precision")
    assert not (out / "bad" / "summary.json").exists()

    # seed 1 as if interrupted after its last checkpoint; seed 2 is new; seed 0 is finished
    (out / "good" / "seed_1" / "summary.json").unlink()
    seed0 = (out / "good" / "seed_0").stat().st_mtime_ns, _json(out / "good" / "seed_0" / "summary.json")
    assert main(["sweep", str(good), "--seeds", "0,1,2", "--workers", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sweep: 1 recipe, 3 runs: 1 finished earlier (skipped), 2 to run, 2 at a time" in printed
    assert "done good seed 0" not in printed
    assert ((out / "good" / "seed_0").stat().st_mtime_ns, _json(out / "good" / "seed_0" / "summary.json")) == seed0
    assert "seed 1: resuming after epoch 2" in (out / "good" / "seed_1" / "train.log").read_text()
    assert _json(out / "good" / "seed_1" / "summary.json")["history"] == seeds[1]["history"]
    assert load_recipe(out / "good" / "recipe.toml").run.seeds == [0, 1, 2]
    assert [s["seed"] for s in _json(out / "good" / "summary.json")["seeds"]] == [0, 1, 2]


@pytest.mark.timeout(120)
def test_a_run_past_the_timeout_is_stopped_and_reported(tmp_path: Path, capsys) -> None:
    recipe = _recipe(tmp_path, "slow", epochs=500, max_batches=0)
    out = tmp_path / "sweep"
    assert main(["sweep", str(recipe), "--out", str(out), "--timeout", "0.5", "--json"]) == 1
    captured = capsys.readouterr()
    assert "timed out slow seed 0 after 0.5 s: its last checkpoint is kept" in captured.err
    result = json.loads(captured.out)
    assert result["table"].splitlines()[1].split()[:2] == ["slow", "0/1"]
    del result["table"]
    assert result == {"ok": False, "runs": [
        {"name": "slow", "recipe": str(recipe), "run_dir": str(out / "slow"), "seeds": {"0": "timed out after 0.5 s"}}
    ]}
    assert _json(out / "slow" / "run.json")["error"].startswith("seed 0: timed out after 0.5 s")


def test_a_folder_holding_another_recipe_is_refused_before_anything_runs(tmp_path: Path, capsys) -> None:
    recipe = _recipe(tmp_path, "one")
    out = tmp_path / "sweep"
    shutil.copytree(tmp_path, tmp_path / "copy")
    assert main(["run", str(recipe), "--set", "inference.steps=2", "--out", str(out / "one")]) == 0
    capsys.readouterr()
    assert main(["sweep", str(recipe), "--out", str(out)]) == 2
    assert f"{out / 'one'} holds a run of a different recipe than {recipe} (they differ in inference.steps)" in (
        capsys.readouterr().err)
    twin = _recipe(tmp_path / "copy", "one")
    assert main(["sweep", str(recipe), str(twin), "--out", str(tmp_path / "other")]) == 2
    assert "both have the run name 'one'" in capsys.readouterr().err


def test_a_sweep_needs_an_out_folder(tmp_path: Path, capsys) -> None:
    assert main(["sweep", str(_recipe(tmp_path, "one"))]) == 2
    assert "pccore sweep needs --out DIR" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "seeds"), [("0-4", [0, 1, 2, 3, 4]), ("0,1,2", [0, 1, 2]), ("3", [3]),
                                              ("0-2, 7", [0, 1, 2, 7]), ("5,1", [5, 1])])
def test_seeds_are_ranges_and_lists(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(("text", "message"), [
    ("4-2", r"the range 4-2 runs backwards; write 2-4"),
    ("a", r"'a' is not a seed"),
    ("-1", r"'-1' is not a seed"),
    ("0-2,1", r"seed 1 is given twice"),
    ("", r"'' is not a seed"),
])
def test_bad_seeds_are_refused(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_seeds(text)


@pytest.mark.timeout(300)
def test_a_sweep_of_incremental_pc_beside_sf_reports_both_methods(tmp_path: Path, capsys) -> None:
    """iPC runs through `pccore sweep` (a process per seed) and `pccore report` labels its row S+iPC."""
    sf = _recipe(tmp_path, "sf")
    ipc = _recipe(tmp_path, "ipc", update={"name": "standard"},
                  inference={"name": "incremental", "steps": 3, "lr": 0.1, "momentum": 0.1})
    out = tmp_path / "sweep"
    assert main(["sweep", str(sf), str(ipc), "--workers", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert _json(out / "ipc" / "seed_0" / "summary.json")["epochs"] == 2
    assert main(["report", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["rows"]) == ["S+F", "S+iPC"]
