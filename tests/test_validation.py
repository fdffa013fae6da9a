"""The validation split (`data.validation_fraction`) and what a run does with it: validation metrics every
epoch, model selection and early stopping on validation top-1, the summaries' validation fields, and the
epoch-end hook a tuner uses to stop a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pccore.cli import main
from pccore.core.components import ImageData
from pccore.core.errors import UsageError
from pccore.recipe import load_recipe
from pccore.run import seeds, training
from pccore.run.checkpoint import load_checkpoint
from pccore.run.splits import carve_validation, split_indices, validation_seed
from tests.test_training import write_recipe

# --- the split -----------------------------------------------------------------------------------


def _labels() -> torch.Tensor:
    """25 samples of class 0, 10 of class 1, 5 of class 2, interleaved."""
    return torch.tensor([0, 1, 0, 2, 0, 1, 0, 0] * 5)


def test_the_split_is_disjoint_complete_and_stratified_with_counts_rounded_half_up() -> None:
    labels = _labels()
    train, held = split_indices(labels, 0.3, seed=7)
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(40))
    assert train.tolist() == sorted(train.tolist()) and held.tolist() == sorted(held.tolist())
    # 0.3 * 25 = 7.5 -> 8 and 0.3 * 5 = 1.5 -> 2 (half up), 0.3 * 10 = 3
    assert torch.bincount(labels[held], minlength=3).tolist() == [8, 3, 2]
    assert torch.bincount(labels[train], minlength=3).tolist() == [17, 7, 3]


def test_the_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    labels = _labels()
    first = split_indices(labels, 0.3, seed=7)
    again = split_indices(labels.clone(), 0.3, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = split_indices(labels, 0.3, seed=8)
    assert not torch.equal(first[1], other[1])


@pytest.mark.parametrize(("fraction", "problem"), [
    (0.05, r"class 2 \(5 training images\) with no validation image"),  # 0.25 rounds to 0
    (0.95, r"class 1 \(10 training images\) with no training image"),  # 9.5 rounds to 10
])
def test_a_fraction_that_empties_a_side_of_a_class_is_refused(fraction: float, problem: str) -> None:
    with pytest.raises(UsageError, match=rf"= {fraction} leaves {problem};.* smallest class "
                                         r"of 5 images allows a fraction from 0\.1 to below 0\.9$"):
        split_indices(_labels(), fraction, seed=0)


def test_carving_keeps_the_test_set_and_serves_validation_as_a_test_split() -> None:
    images = torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1)
    data = ImageData(images, _labels(), torch.zeros(3, 1, 1, 1), torch.tensor([0, 1, 2]), 3, (0.0,), (1.0,))
    training_data, validation = carve_validation(data, 0.3, seed=7)
    train, held = split_indices(_labels(), 0.3, seed=7)
    assert torch.equal(training_data.train_images.flatten(), train.float())
    assert torch.equal(validation.test_images.flatten(), held.float())
    assert torch.equal(validation.test_labels, _labels()[held])
    assert torch.equal(training_data.test_labels, data.test_labels)  # the test set is untouched
    assert carve_validation(data, 0.0, seed=7) == (data, None)


def test_the_validation_seed_follows_the_datasets_split_seed_unless_set(tmp_path: Path) -> None:
    assert validation_seed(load_recipe(write_recipe(tmp_path, data_split_seed=5)).data) == 5
    assert validation_seed(load_recipe(write_recipe(tmp_path, data_split_seed=5, data_validation_seed=2)).data) == 2
    synthetic = {"name": "synthetic", "size": 4, "channels": 1}
    assert validation_seed(load_recipe(write_recipe(tmp_path, data=synthetic)).data) == 0


# --- a run with a validation split ---------------------------------------------------------------


def test_a_run_validates_on_the_stratified_digits_split(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, epochs=2, max_batches=2, data_validation_fraction=0.25)
    out = tmp_path / "o"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    seed = json.loads((out / "seed_0" / "summary.json").read_text())
    # digits' 1797 images, test_fraction 0.2 stratified: the training split's class counts, computed here
    digits = load_digits()
    from sklearn.model_selection import train_test_split

    train_labels = train_test_split(digits.target, test_size=0.2, stratify=digits.target, random_state=0)[0]
    held = sum(math.floor(0.25 * n + 0.5) for n in np.bincount(train_labels))
    assert seed["validation"] == {"fraction": 0.25, "seed": 0, "images": held}
    history = seed["history"]
    assert all(set(h) >= {"val_top1", "val_top5"} for h in history)
    best = max(range(2), key=lambda i: (history[i]["val_top1"], -i))
    assert seed["best_val_top1"] == history[best]["val_top1"]
    assert seed["best_val_epoch"] == best + 1
    assert seed["test_top1_at_best_val"] == history[best]["top1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_val_top1_mean"] == seed["best_val_top1"] and summary["best_val_top1_std"] == 0.0
    assert summary["test_top1_at_best_val_mean"] == seed["test_top1_at_best_val"]
    events = EventAccumulator(str(out / "seed_0"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("val/top1")] == pytest.approx([h["val_top1"] for h in history])
    assert [e.value for e in events.Scalars("val/top5")] == pytest.approx([h["val_top5"] for h in history])


def test_without_a_fraction_a_run_has_no_validation_fields(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert main(["run", str(write_recipe(tmp_path, epochs=1, max_batches=1)), "--out", str(out)]) == 0
    seed = json.loads((out / "seed_0" / "summary.json").read_text())
    assert not {"best_val_top1", "test_top1_at_best_val", "validation"} & set(seed)
    assert "val_top1" not in seed["history"][0]


def test_early_stopping_and_best_pt_follow_validation_top1(tmp_path: Path, monkeypatch) -> None:
    # (test top-1, top-5) then (validation top-1, top-5) each epoch: the test top-1 keeps rising, the
    # validation top-1 peaks at epoch 2, so with patience 2 the run stops after epoch 4
    script = iter([(0.5, 0.9), (0.70, 0.9), (0.6, 0.9), (0.80, 0.9), (0.7, 0.9), (0.75, 0.9), (0.8, 0.9),
                   (0.80, 0.9), (0.9, 0.9), (0.99, 0.9)])
    monkeypatch.setattr(seeds, "evaluate", lambda engine, batches, k, world=None: next(script))
    recipe = write_recipe(tmp_path, epochs=10, patience=2, max_batches=1, tensorboard=False,
                          data_validation_fraction=0.2)
    out = tmp_path / "o"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    seed = json.loads((out / "seed_0" / "summary.json").read_text())
    assert seed["epochs"] == 4
    assert (seed["best_top1"], seed["best_epoch"]) == (0.8, 4)  # the test numbers stay the paper's
    assert (seed["best_val_top1"], seed["best_val_epoch"], seed["test_top1_at_best_val"]) == (0.8, 2, 0.6)
    assert load_checkpoint(out / "seed_0" / "best.pt")["state"]["epochs_done"] == 2


def test_a_smoke_run_with_a_fraction_validates_on_its_random_test_split(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, data_validation_fraction=0.2)
    assert main(["run", str(recipe), "--smoke", "--out", str(tmp_path / "o")]) == 0
    seed = json.loads((tmp_path / "o" / "seed_0" / "summary.json").read_text())
    assert seed["history"][0]["val_top1"] == seed["history"][0]["top1"]


def test_a_bad_fraction_stops_before_a_run_directory_is_made(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, data_validation_fraction=0.001)
    assert main(["run", str(recipe), "--out", str(tmp_path / "o")]) == 2
    assert "data.validation_fraction = 0.001 leaves class 0 (" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- the epoch-end hook and training some seeds only ---------------------------------------------


def test_a_hook_sees_every_epoch_and_its_reason_stops_the_run(tmp_path: Path) -> None:
    reports = []

    def hook(report: training.EpochReport) -> str | None:
        reports.append(report)
        return "pruned at epoch 2" if report.epoch == 2 else None

    recipe = load_recipe(write_recipe(tmp_path, seeds=[0, 1], epochs=4, max_batches=1,
                                      data_validation_fraction=0.2))
    out = tmp_path / "o"
    summary = training.train(recipe, out, epoch_end=hook, stream=open(tmp_path / "log", "w"))
    assert [(r.seed, r.epoch, r.epochs) for r in reports] == [(0, 1, 4), (0, 2, 4)]
    seed = json.loads((out / "seed_0" / "summary.json").read_text())
    assert [h["val_top1"] for h in seed["history"]] == [r.val_top1 for r in reports]
    assert [h["top1"] for h in seed["history"]] == [r.top1 for r in reports]
    assert seed["epochs"] == 2 and seed["stopped"] == "pruned at epoch 2"
    assert not (out / "seed_1").exists()  # the run stopped: the second seed never started
    assert summary["stopped"] == "pruned at epoch 2" and len(summary["seeds"]) == 1
    info = json.loads((out / "run.json").read_text())
    assert (info["status"], info["reason"]) == ("stopped", "pruned at epoch 2")


def test_only_seeds_trains_those_seeds_and_leaves_the_run_files_to_the_caller(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, seeds=[0, 1, 2], epochs=1, max_batches=1, tensorboard=False))
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text('{"status": "running"}')
    result = training.train(recipe, out, resume=True, only_seeds=[1], stream=open(tmp_path / "log", "w"))
    assert [s["seed"] for s in result["seeds"]] == [1]
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "seed_1"]
    assert json.loads((out / "run.json").read_text()) == {"status": "running"}
    with pytest.raises(UsageError, match=r"seeds \[5\] are not among the run's seeds \[0, 1, 2\]"):
        training.train(recipe, out, resume=True, only_seeds=[5])
