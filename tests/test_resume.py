"""Checkpoints and `pccore run --resume`: atomic files, generator states, and a resumed run that ends
bit-for-bit where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pccore.cli import main
from pccore.run import seeds
from pccore.run.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pccore.run.data import BatchFeeder
from pccore.run.files import OutputError, atomic_write_bytes
from tests.test_training import write_recipe

# --- checkpoint files ----------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "history": [{"epoch": 1, "top1": 0.5}], "epochs_done": 1}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["format"] == 1
    assert loaded["history"] == [{"epoch": 1, "top1": 0.5}]
    assert loaded["epochs_done"] == 1
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "summary.json"
    atomic_write_bytes(target, b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputError) as caught:
        atomic_write_bytes(target, b"new")
    assert str(caught.value) == (
        f"cannot write {target}: No space left on device: the disk is full (its earlier version is unchanged)"
    )
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_rng_states_are_restored() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = capture_rng_state()
    first = (random.random(), float(np.random.rand()), np.random.randn(), torch.rand(2).tolist())
    restore_rng_state(saved)
    second = (random.random(), float(np.random.rand()), np.random.randn(), torch.rand(2).tolist())
    assert first == second


def test_rng_states_survive_a_checkpoint_file(tmp_path: Path) -> None:
    torch.manual_seed(5)
    np.random.seed(6)
    random.seed(7)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng_state()})
    expected = (torch.rand(3).tolist(), np.random.randn(), random.random())
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (torch.rand(3).tolist(), np.random.randn(), random.random()) == expected


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at .*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint .*delete it to restart"):
        load_checkpoint(tmp_path / "c.pt")


def test_checkpoint_of_another_format_is_a_clear_error(tmp_path: Path) -> None:
    torch.save({"format": 99}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="has format 99, this pccore writes format 1"):
        load_checkpoint(tmp_path / "c.pt")


# --- resuming a run ------------------------------------------------------------------------------


class _Interrupt(BatchFeeder):
    """A training feeder that raises KeyboardInterrupt after one batch of epoch index `epoch` of `seed`."""

    seed = 0
    at = 1

    def epoch(self, seed, epoch):
        for i, batch in enumerate(super().epoch(seed, epoch)):
            if self.train and seed == _Interrupt.seed and epoch == _Interrupt.at and i == 1:
                raise KeyboardInterrupt
            yield batch


def _interrupt(monkeypatch, seed: int, epoch: int) -> None:
    monkeypatch.setattr(seeds, "BatchFeeder", _Interrupt)
    monkeypatch.setattr(_Interrupt, "seed", seed)
    monkeypatch.setattr(_Interrupt, "at", epoch)


def _weights(run_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / f"seed_{seed}" / "checkpoint.pt")["model"]


def _without_time(summary: dict) -> dict:
    """A seed summary without the fields that measure time."""
    rest = {k: v for k, v in summary.items() if k != "wall_s"}
    rest["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in summary["history"]]
    return rest


def resumes_exactly(recipe: Path, folder: Path, monkeypatch) -> Path:
    """Train `recipe` whole into folder/whole; again into folder/cut, interrupted in seed 0's second epoch,
    then resumed; assert the two end with the same weights and summaries. The resumed run's folder."""
    assert main(["run", str(recipe), "--out", str(folder / "whole")]) == 0
    _interrupt(monkeypatch, seed=0, epoch=1)
    cut = folder / "cut"
    assert main(["run", str(recipe), "--out", str(cut)]) == 130
    monkeypatch.setattr(seeds, "BatchFeeder", BatchFeeder)
    assert main(["run", "--resume", str(cut)]) == 0
    a, b = _weights(folder / "whole", 0), _weights(cut, 0)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    whole = json.loads((folder / "whole" / "summary.json").read_text())["seeds"]
    resumed = json.loads((cut / "summary.json").read_text())["seeds"]
    assert [_without_time(s) for s in resumed] == [_without_time(s) for s in whole]
    return cut


def test_resumed_run_matches_an_uninterrupted_one(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = write_recipe(tmp_path, seeds=[0, 1], epochs=3, max_batches=3, normalization="frozen")
    assert main(["run", str(recipe), "--out", str(tmp_path / "whole")]) == 0

    _interrupt(monkeypatch, seed=0, epoch=1)
    # seed 0 is interrupted in its second epoch: the command exits 130 and says how to continue
    cut = tmp_path / "cut"
    assert main(["run", str(recipe), "--out", str(cut)]) == 130
    assert f"pccore run --resume {cut}" in capsys.readouterr().err
    assert not (cut / "summary.json").exists()
    assert not (cut / "seed_0" / "summary.json").exists()
    assert not (cut / "seed_1").exists()
    assert load_checkpoint(cut / "seed_0" / "checkpoint.pt")["state"]["epochs_done"] == 1
    assert json.loads((cut / "run.json").read_text())["status"] == "interrupted"

    monkeypatch.setattr(seeds, "BatchFeeder", BatchFeeder)
    assert main(["run", "--resume", str(cut)]) == 0
    assert "seed 0: resuming after epoch 1" in capsys.readouterr().out
    assert json.loads((cut / "run.json").read_text())["status"] == "finished"
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed = json.loads((cut / "summary.json").read_text())
    for seed in (0, 1):
        a, b = _weights(tmp_path / "whole", seed), _weights(cut, seed)
        assert a.keys() == b.keys()
        assert any("running_mean" in k for k in a)  # BatchNorm statistics are part of the state
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert [_without_time(s) for s in resumed["seeds"]] == [_without_time(s) for s in whole["seeds"]]
    assert (resumed["top1_mean"], resumed["top5_mean"]) == (whole["top1_mean"], whole["top5_mean"])
    assert [h["epoch"] for h in resumed["seeds"][0]["history"]] == [1, 2, 3]


def test_resume_restores_the_random_generators(tmp_path: Path, monkeypatch) -> None:
    """Training that draws from the global generators (torch, numpy, Python: a plugin with dropout or
    random augmentation would) draws, after a resume, exactly the numbers an uninterrupted run draws at
    that point; without the restore they would repeat the first epoch's."""
    draws: list[tuple[float, float, float]] = []
    real_assemble = seeds.assemble

    def assemble(*args, **kwargs):
        asm = real_assemble(*args, **kwargs)
        step = asm.engine.train_step

        def drawing_step(x, y, *args, **kwargs):
            draws.append((torch.rand(()).item(), float(np.random.rand()), random.random()))
            return step(x, y, *args, **kwargs)

        asm.engine.train_step = drawing_step
        return asm

    monkeypatch.setattr(seeds, "assemble", assemble)
    recipe = write_recipe(tmp_path, epochs=3, max_batches=2, tensorboard=False)
    assert main(["run", str(recipe), "--out", str(tmp_path / "whole")]) == 0
    whole = list(draws)
    assert len(whole) == 6
    for generator in range(3):  # every generator moves from batch to batch
        assert len({d[generator] for d in whole}) == 6

    draws.clear()
    _interrupt(monkeypatch, seed=0, epoch=1)
    cut = tmp_path / "cut"
    assert main(["run", str(recipe), "--out", str(cut)]) == 130
    assert draws == whole[:3]  # two batches of epoch 1, one of epoch 2, then the interruption
    draws.clear()
    monkeypatch.setattr(seeds, "BatchFeeder", BatchFeeder)
    assert main(["run", "--resume", str(cut)]) == 0
    assert draws == whole[2:]  # epochs 2 and 3 again, from the generator states saved after epoch 1


def test_resume_skips_finished_seeds(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = write_recipe(tmp_path, seeds=[0, 1], epochs=2, max_batches=2, tensorboard=False)
    out = tmp_path / "run"
    _interrupt(monkeypatch, seed=1, epoch=0)  # seed 1 stops in its first epoch, before any checkpoint
    assert main(["run", str(recipe), "--out", str(out)]) == 130
    finished = {p.name: p.read_bytes() for p in (out / "seed_0").iterdir()}
    assert "summary.json" in finished
    assert not (out / "seed_1" / "checkpoint.pt").exists()

    monkeypatch.setattr(seeds, "BatchFeeder", BatchFeeder)
    trained: list[int] = []
    real_run = seeds.SeedLoop.run

    def counting_run(self, checkpoint_path, best_path):
        trained.append(self.seed)
        return real_run(self, checkpoint_path, best_path)

    monkeypatch.setattr(seeds.SeedLoop, "run", counting_run)
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    assert trained == [1]
    assert "seed 0: finished earlier, skipped" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (out / "seed_0").iterdir()} == finished
    summary = json.loads((out / "summary.json").read_text())
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]
    assert summary["seeds"][0] == json.loads(finished["summary.json"])
    assert summary["seeds"][1]["epochs"] == 2


def test_resume_of_a_folder_without_a_run_fails_clearly(tmp_path: Path, capsys) -> None:
    assert main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pccore: error: cannot resume")
    assert "has no recipe.toml" in err
    assert "Traceback" not in err


def test_resume_with_an_unreadable_run_json_fails_clearly(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, epochs=1, max_batches=1, tensorboard=False)
    out = tmp_path / "o"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    (out / "run.json").write_text("{not json")
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 2
    assert f"cannot resume {out}: {out / 'run.json'} is unreadable" in capsys.readouterr().err


def test_resume_rejects_a_recipe_or_overrides(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path)
    assert main(["run", str(recipe), "--resume", str(tmp_path)]) == 2
    assert "takes no RECIPE, --set, --out or --smoke" in capsys.readouterr().err
