"""`pccore run`: run directories, summaries, evaluation, early stopping, smoke runs, devices, errors."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from pccore.cli import main
from pccore.core.errors import DivergenceError, UsageError
from pccore.run import seeds, smoke, training
from pccore.run.checkpoint import load_checkpoint
from pccore.run.evaluation import aggregate, evaluate
from pccore.run.progress import Progress

SEED_KEYS = {
    "seed", "best_top1", "best_top5", "best_epoch", "final_top1", "final_top5", "epochs", "wall_s", "device",
    "pccore_version", "torch_version", "plugins", "history",
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def write_recipe(folder: Path, **changes: Any) -> Path:
    """A tiny digits recipe (8x8 grey digits, an MLP with 32 hidden units, 3 inference steps) written to
    `folder/tiny.toml`. Keyword arguments set `section_key` (or a short name below) or, given a section
    name, replace that whole section."""
    short = {
        "seeds": "run_seeds", "epochs": "train_epochs", "max_batches": "train_max_batches",
        "patience": "train_patience", "every": "log_every", "normalization": "normalization_name",
        "device": "run_device", "tensorboard": "log_tensorboard",
    }
    sections: dict[str, dict[str, Any]] = {
        "run": {"name": "tiny", "seeds": [0], "device": "cpu", "out_dir": str(folder / "runs")},
        "data": {"name": "digits", "size": 8, "channels": 1, "batch_size": 32, "eval_batch_size": 512},
        "model": {"name": "mlp", "hidden": [32]},
        "normalization": {"name": "none"},
        "precision": {"name": "spiking"},
        "nudging": {"name": "clamp"},
        "update": {"name": "forward"},
        "inference": {"steps": 3, "lr": 0.1, "momentum": 0.1},
        "optimizer": {"lr": 3e-3, "weight_decay": 1e-4, "warmup": 0.1, "schedule_epochs": 3},
        "train": {"epochs": 2, "patience": 5, "max_batches": 3},
        "log": {"every": 2},
    }
    for key, value in changes.items():
        if key in sections and isinstance(value, dict):  # a whole section replaced
            sections[key] = value
            continue
        section, _, field = short.get(key, key).partition("_")
        sections[section][field] = value
    text = "\n".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
        for name, table in sections.items()
    )
    path = folder / "tiny.toml"
    path.write_text(text)
    return path


def _run(argv: list[str]) -> int:
    return main(["run", *argv])


# --- a complete run ------------------------------------------------------------------------------


def test_run_writes_a_complete_run_directory(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, normalization="frozen")
    out = tmp_path / "out"
    assert _run([str(recipe), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["recipe.toml", "run.json", "seed_0", "summary.json"]
    seed_files = sorted(p.name for p in (out / "seed_0").iterdir())
    events = [name for name in seed_files if name.startswith("events.out.tfevents.")]
    assert len(events) == 1
    assert sorted(set(seed_files) - set(events)) == ["best.pt", "checkpoint.pt", "summary.json"]

    from pccore.recipe import load_recipe

    assert load_recipe(out / "recipe.toml") == load_recipe(recipe)
    summary = json.loads((out / "summary.json").read_text())
    seed = json.loads((out / "seed_0" / "summary.json").read_text())
    assert summary["seeds"] == [seed]
    assert set(seed) == SEED_KEYS
    assert seed["seed"] == 0
    assert seed["epochs"] == 2
    assert seed["device"] == "cpu"
    assert seed["pccore_version"] == "0.2.0"
    assert seed["torch_version"] == torch.__version__
    assert "pccore 0.2.0" in seed["plugins"]
    assert [h["epoch"] for h in seed["history"]] == [1, 2]
    assert set(seed["history"][0]) == {"epoch", "loss", "top1", "top5", "seconds"}
    tops = [h["top1"] for h in seed["history"]]
    assert seed["best_top1"] == max(tops)
    assert seed["best_top5"] == max(h["top5"] for h in seed["history"])
    assert seed["final_top1"] == tops[-1]
    assert all(0.0 <= h["top1"] <= h["top5"] <= 1.0 for h in seed["history"])
    # 360 digits in the test split (20% of 1797, stratified): accuracies are multiples of 1/360
    assert all(math.isclose(h["top1"] * 360, round(h["top1"] * 360)) for h in seed["history"])
    assert summary["top1_mean"] == seed["best_top1"]
    assert summary["top1_std"] == 0.0
    assert summary["top5_mean"] == seed["best_top5"]
    assert summary["std"] == "population (ddof 0)"


def test_best_checkpoint_accuracy_matches_a_plain_forward_pass(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, epochs=2)
    out = tmp_path / "out"
    assert _run([str(recipe), "--out", str(out)]) == 0
    seed = json.loads((out / "seed_0" / "summary.json").read_text())
    best = load_checkpoint(out / "seed_0" / "best.pt")
    assert best["state"]["best_top1"] == seed["best_top1"]

    # Rebuild the MLP by hand from the weights and evaluate on the digits test split, normalised by hand.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float64).reshape(len(bunch.images), -1) / 16.0
    labels = torch.as_tensor(bunch.target)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=0.2, stratify=bunch.target, random_state=0
    )
    mean, std = images[train_idx].mean(), images[train_idx].std(correction=0)
    x = (images[test_idx] - mean) / std
    y = labels[test_idx]
    w = {k: v.to(torch.float64) for k, v in best["model"].items()}
    linear = sorted({k.rsplit(".", 1)[0] for k in w if k.endswith("weight")})
    assert len(linear) == 2
    hidden = torch.tanh(x @ w[f"{linear[0]}.weight"].T + w[f"{linear[0]}.bias"])
    logits = hidden @ w[f"{linear[1]}.weight"].T + w[f"{linear[1]}.bias"]
    order = logits.argsort(dim=1, descending=True)
    top1 = (order[:, 0] == y).double().mean().item()
    top5 = (order[:, :5] == y[:, None]).any(dim=1).double().mean().item()
    best_epoch = seed["history"][seed["best_epoch"] - 1]
    assert top1 == pytest.approx(seed["best_top1"], abs=1e-12)
    assert top5 == pytest.approx(best_epoch["top5"], abs=1e-12)


def test_run_directories_are_versioned(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, epochs=1, max_batches=1, tensorboard=False)
    assert _run([str(recipe)]) == 0
    assert _run([str(recipe)]) == 0
    runs = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    assert f"run directory: {runs / 'version_1'}" in capsys.readouterr().out
    assert not list((runs / "version_0" / "seed_0").glob("events.*"))  # log.tensorboard = false


def test_out_that_holds_a_run_is_refused(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, epochs=1, max_batches=1, tensorboard=False)
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err


def test_no_checkpoints_when_turned_off(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, epochs=1, max_batches=1, log_checkpoints=False, tensorboard=False)
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o" / "seed_0").iterdir()) == ["summary.json"]


def test_two_seeds_population_std(tmp_path: Path, monkeypatch) -> None:
    scores = {0: [(0.5, 0.75)], 1: [(0.7, 0.85)]}
    current: list[int] = []
    real_seed = training.train_seed

    def remember(ctx, seed, resume):
        current[:] = [seed]
        return real_seed(ctx, seed, resume)

    monkeypatch.setattr(training, "train_seed", remember)
    monkeypatch.setattr(seeds, "evaluate", lambda engine, batches, k, world=None: scores[current[0]][0])
    recipe = write_recipe(tmp_path, seeds=[0, 1], epochs=1, max_batches=1, tensorboard=False)
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]
    assert summary["top1_mean"] == pytest.approx(0.6)
    assert summary["top1_std"] == pytest.approx(0.1)  # ddof 0; the sample std would be 0.1414
    assert summary["top5_mean"] == pytest.approx(0.8)
    assert summary["top5_std"] == pytest.approx(0.05)


# --- pieces --------------------------------------------------------------------------------------


class _FixedLogits:
    """An engine whose predictions are given logits, one batch at a time."""

    def __init__(self, logits: list[torch.Tensor]) -> None:
        self.logits = list(logits)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.pop(0)


def test_evaluate_counts_top1_and_top5_hits() -> None:
    # 6 classes; logits rank the classes, labels placed at rank 1, 2, 5 and 6 (1-based).
    ranking = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    logits = ranking.repeat(4, 1)
    labels = torch.tensor([0, 1, 4, 5])
    engine = _FixedLogits([logits[:3], logits[3:]])
    top1, top5 = evaluate(engine, iter([(None, labels[:3]), (None, labels[3:])]), 5)
    assert top1 == 0.25  # only the first
    assert top5 == 0.75  # all but rank 6


def test_evaluate_with_fewer_classes_than_five() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    top1, top3 = evaluate(_FixedLogits([logits]), iter([(None, torch.tensor([1, 2, 0]))]), 3)
    assert (top1, top3) == (pytest.approx(1 / 3), 1.0)


def test_evaluate_without_batches_is_an_error() -> None:
    with pytest.raises(UsageError, match="the test set yields no batch"):
        evaluate(_FixedLogits([]), iter([]), 5)


def test_a_seed_listed_twice_is_refused(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, seeds=[1, 2, 1])
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 2
    assert "run.seeds: expected a non-empty list of distinct seeds >= 0 (each seed gets its own folder), " \
        "got [1, 2, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_aggregate_uses_population_std() -> None:
    seeds = [{"best_top1": v, "best_top5": 1.0} for v in (0.2, 0.4, 0.9)]
    summary = aggregate(seeds)
    assert summary["top1_mean"] == pytest.approx(0.5)
    # deviations -0.3, -0.1, 0.4: (0.09 + 0.01 + 0.16) / 3 = 0.26 / 3
    assert summary["top1_std"] == pytest.approx(math.sqrt(0.26 / 3))
    assert summary["top5_std"] == 0.0
    assert summary["seeds"] == seeds


def test_smoke_thins_the_architecture() -> None:
    from pccore_plugins.architectures import MLPParams, VGGParams

    assert smoke._thin_params(VGGParams(width=1.0)).width == 0.0625
    assert smoke._thin_params(VGGParams(width=0.03)).width == 0.03
    assert smoke._thin_params(MLPParams(hidden=[128, 16])).hidden == [32, 16]


# --- the learning-rate schedule as the loop drives it ---------------------------------------------


def _warmup_cosine(step: int, lr: float, total: int, warmup: int) -> float:
    """METHOD.md step 5, written out: lr rising linearly to 1.1 lr over `warmup` steps, a half cosine down
    to 0.1 lr at step `total`, then 0.1 lr."""
    if step < warmup:
        return lr * (1.0 + 0.1 * step / warmup)
    if step >= total:
        return 0.1 * lr
    return 0.1 * lr + 0.5 * lr * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def record_learning_rates(monkeypatch) -> list[float]:
    """The list that every AdamW step of the runs that follow appends its learning rate to."""
    used: list[float] = []
    real = seeds.make_optimizer

    def recording(params, section, **options):
        optimizer = real(params, section, **options)
        step = optimizer.step

        def recorded_step(*args, **kwargs):
            used.append(optimizer.param_groups[0]["lr"])
            return step(*args, **kwargs)

        optimizer.step = recorded_step
        return optimizer

    monkeypatch.setattr(seeds, "make_optimizer", recording)
    return used


def test_every_optimizer_step_uses_the_scheduled_rate(tmp_path: Path, monkeypatch, capsys) -> None:
    """A real run of 4 epochs x 5 batches with a 3-epoch schedule (15 steps, 20% = 3 of warmup): the rate
    each AdamW step actually used, against the formula; the first step uses the warmup's first rate (lr)."""
    used = record_learning_rates(monkeypatch)
    lr = 1e-2
    recipe = write_recipe(tmp_path, epochs=4, max_batches=5, every=5, tensorboard=False, log_checkpoints=False,
                          optimizer={"lr": lr, "weight_decay": 1e-4, "warmup": 0.2, "schedule_epochs": 3})
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 0
    assert len(used) == 20
    assert used == pytest.approx([_warmup_cosine(s, lr, 15, 3) for s in range(20)], rel=1e-12, abs=0)
    assert used[:4] == pytest.approx([1e-2, 1.0333333333333333e-2, 1.0666666666666667e-2, 1.1e-2], rel=1e-12)
    assert used[9] == pytest.approx(0.1 * lr + 0.5 * lr, rel=1e-12)  # halfway through the 12 cosine steps
    assert used[15:] == [pytest.approx(1e-3, rel=1e-12)] * 5  # the minimum after the schedule's 15 steps
    lines = capsys.readouterr().out.splitlines()
    note = (
        "note: train.epochs = 4 is more than optimizer.schedule_epochs = 3: the learning rate stays at its "
        "minimum (0.1 * optimizer.lr = 0.001) after epoch 3; set optimizer.schedule_epochs = 4 to spread the "
        "schedule over every epoch."
    )
    assert lines[:2] == [f"run directory: {tmp_path / 'o'}", note]
    assert lines.count(note) == 1


def test_no_schedule_note_when_the_schedule_covers_every_epoch(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, epochs=3, max_batches=1, tensorboard=False, log_checkpoints=False)
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 0
    assert "schedule_epochs" not in capsys.readouterr().out


def test_smoke_thins_an_integer_width_and_depth() -> None:
    import attrs

    @attrs.define(frozen=True)
    class Units:
        width: int = 512
        depth: int = 128
        flag: bool = True

    assert smoke._thin_params(Units()) == Units(width=32, depth=3)
    assert smoke._thin_params(Units(width=16, depth=2)) == Units(width=16, depth=2)


# --- early stopping ------------------------------------------------------------------------------


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path: Path, monkeypatch) -> None:
    script = iter([(0.5, 0.9), (0.6, 0.8), (0.6, 0.95), (0.55, 0.9), (0.9, 1.0)])
    monkeypatch.setattr(seeds, "evaluate", lambda engine, batches, k, world=None: next(script))
    recipe = write_recipe(tmp_path, epochs=10, patience=2, max_batches=1, tensorboard=False)
    out = tmp_path / "o"
    assert _run([str(recipe), "--out", str(out)]) == 0
    seed = json.loads((out / "seed_0" / "summary.json").read_text())
    # epoch 2 is the best; epochs 3 (a tie is no improvement) and 4 do not improve: stop after epoch 4
    assert seed["epochs"] == 4
    assert [h["top1"] for h in seed["history"]] == [0.5, 0.6, 0.6, 0.55]
    assert seed["best_top1"] == 0.6
    assert seed["best_epoch"] == 2
    assert seed["best_top5"] == 0.95
    assert (seed["final_top1"], seed["final_top5"]) == (0.55, 0.9)
    assert load_checkpoint(out / "seed_0" / "best.pt")["state"]["epochs_done"] == 2
    assert load_checkpoint(out / "seed_0" / "checkpoint.pt")["state"]["since_best"] == 2


# --- progress output -----------------------------------------------------------------------------


def test_plain_log_lines_when_not_a_terminal(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, epochs=2, max_batches=3, every=2, tensorboard=False)
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert sum(" batch 2/3 loss " in line for line in lines) == 2  # one log point per epoch
    assert sum(line.startswith("seed 0 epoch 1/2 loss ") for line in lines) == 1
    assert sum(line.startswith("seed 0 epoch 2/2 loss ") for line in lines) == 1
    assert "samples/s" in out
    assert "(mean ± population std over 1 seed)" in lines[-1]
    assert lines[-1].startswith("top-1 ")


def _screen(text: str) -> list[str]:
    """What a terminal shows after `text`: each line's last carriage-return segment, escape codes removed."""
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return [line.split("\r")[-1].rstrip() for line in plain.split("\n")]


def test_terminal_progress_draws_a_bar_and_replaces_it_with_the_epoch_line() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=True)
    progress.log_point(0, 1, 3, 2, 4, 0.25, 1e-3, 100.0)
    drawn = stream.getvalue()
    assert "\r" in drawn and "seed 0 epoch 1/3" in drawn and " 2/4 " in drawn and "loss 0.25" in drawn
    progress.tick(0, 1, 3, 3, 4, 100.0)
    progress.note("a note")  # above the bar, which stays
    state = training.SeedState(epochs_done=1, best_top1=0.5, best_epoch=1)
    progress.epoch_end(0, 1, 3, 0.25, 0.5, 0.75, state, 1.5)
    screen = [line for line in _screen(stream.getvalue()) if line]
    # the bar is gone: what remains is the note and the epoch line, each once
    assert screen == ["a note", "seed 0 epoch 1/3 loss 0.25 top1 0.5000 top5 0.7500 best 0.5000 (epoch 1) 1.5s"]


def test_plain_progress_writes_no_control_characters() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=False)
    progress.tick(0, 1, 3, 1, 4, 100.0)
    progress.log_point(0, 1, 3, 2, 4, 0.25, 1e-3, 100.0)
    progress.note("a note")
    progress.epoch_end(0, 1, 3, 0.25, 0.5, 0.75, training.SeedState(epochs_done=1, best_top1=0.5, best_epoch=1), 1.5)
    assert stream.getvalue() == (
        "seed 0 epoch 1/3 batch 2/4 loss 0.25 lr 0.001 100 samples/s\n"
        "a note\n"
        "seed 0 epoch 1/3 loss 0.25 top1 0.5000 top5 0.7500 best 0.5000 (epoch 1) 1.5s\n"
    )


def test_results_are_read_only_at_log_points(tmp_path: Path, monkeypatch) -> None:
    reads: list[int] = []
    real = seeds.SeedLoop._read

    def counting(self, window, epoch, last_batch, checkpoint_path):
        reads.append(len(window))
        return real(self, window, epoch, last_batch, checkpoint_path)

    monkeypatch.setattr(seeds.SeedLoop, "_read", counting)
    recipe = write_recipe(tmp_path, epochs=1, max_batches=5, every=2, tensorboard=False)
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 0
    assert reads == [2, 2, 1]  # batches 2 and 4, then the rest at the end of the epoch


# --- divergence ----------------------------------------------------------------------------------


def _poison(monkeypatch, epoch: int, batch: int, layer: int, per_epoch: int) -> None:
    """Make the engine report a NaN energy of `layer` at one batch of one epoch (all 1-based)."""
    real_assemble = seeds.assemble

    def assemble(*args, **kwargs):
        asm = real_assemble(*args, **kwargs)
        step = asm.engine.train_step
        count = {"batch": 0}

        def train_step(x, y, *args, **kwargs):
            out = step(x, y, *args, **kwargs)
            count["batch"] += 1
            if count["batch"] == (epoch - 1) * per_epoch + batch:
                energy = out.energy.clone()
                energy[layer - 1] = float("nan")
                return out._replace(energy=energy)
            return out

        asm.engine.train_step = train_step
        return asm

    monkeypatch.setattr(seeds, "assemble", assemble)


def test_divergence_stops_with_epoch_batch_and_layer(tmp_path: Path, monkeypatch, capsys) -> None:
    _poison(monkeypatch, epoch=2, batch=1, layer=2, per_epoch=3)
    recipe = write_recipe(tmp_path, epochs=3, max_batches=3, every=2, tensorboard=False)
    out = tmp_path / "o"
    assert _run([str(recipe), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "pccore: error: training diverged in epoch 2, batch 1 (seed 0): the energy of layer 2 is nan "
    )
    assert "first non-finite layer of 2" in err
    assert f"the checkpoint of the last good epoch is kept in {out / 'seed_0' / 'checkpoint.pt'}" in err
    assert "Traceback" not in err
    kept = load_checkpoint(out / "seed_0" / "checkpoint.pt")
    assert kept["state"]["epochs_done"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values())
    assert not (out / "seed_0" / "summary.json").exists()
    assert not (out / "summary.json").exists()


def test_divergence_in_the_first_epoch_has_no_checkpoint(tmp_path: Path, monkeypatch) -> None:
    _poison(monkeypatch, epoch=1, batch=3, layer=1, per_epoch=3)
    recipe = write_recipe(tmp_path, epochs=1, max_batches=3, every=2, tensorboard=False)
    from pccore.recipe import load_recipe

    expected = r"epoch 1, batch 3 .* layer 1 .* there is no checkpoint to fall back on"
    with pytest.raises(DivergenceError, match=expected):
        training.train(load_recipe(recipe), tmp_path / "o", stream=io.StringIO())


def test_real_divergence_from_a_huge_inference_rate(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, epochs=1, max_batches=2, every=1, inference_lr=1e30, tensorboard=False)
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "training diverged in epoch 1, batch 1 (seed 0)" in err


# --- data and devices ----------------------------------------------------------------------------


def test_missing_dataset_stops_before_training(tmp_path: Path, capsys) -> None:
    data = {"name": "cifar10", "root": str(tmp_path / "nothing"), "download": False, "batch_size": 8}
    recipe = write_recipe(tmp_path, data=data)
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pccore: error: CIFAR-10 is not available")
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_smoke_run_uses_random_data_and_a_thin_model(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, seeds=[3, 4], epochs=20, max_batches=0, data_batch_size=64,
                          model_hidden=[100, 20])
    assert _run([str(recipe), "--smoke"]) == 0
    run_dir = tmp_path / "runs" / "smoke" / "tiny" / "version_0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["seed"] for s in summary["seeds"]] == [3]
    assert summary["seeds"][0]["epochs"] == 1
    assert json.loads((run_dir / "run.json").read_text())["smoke"] is True
    from pccore.recipe import load_recipe

    saved = load_recipe(run_dir / "recipe.toml")
    assert saved.data.batch_size == 8
    assert saved.train.max_batches == 2
    assert saved.model.params.hidden == [32, 20]  # 100 is capped at 32, 20 is under the cap
    assert saved.data.eval_batch_size == 8
    assert saved.train.epochs == 1
    assert saved.run.seeds == [3]
    best = load_checkpoint(run_dir / "seed_3" / "best.pt")["model"]
    assert [tuple(v.shape) for k, v in best.items() if k.endswith("weight")] == [(32, 64), (20, 32), (10, 20)]


def test_cuda_without_cuda_is_a_usage_error(tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = write_recipe(tmp_path)
    assert _run([str(recipe), "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bf16_on_the_cpu_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, run_precision="bf16")
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 2
    assert 'run.precision = "bf16" needs a CUDA device' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_device_override_is_recorded(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, device="auto", epochs=1, max_batches=1, tensorboard=False)
    assert _run([str(recipe), "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    assert 'device = "cpu"' in (tmp_path / "o" / "recipe.toml").read_text()


def test_run_without_a_recipe_is_a_usage_error(capsys) -> None:
    assert _run([]) == 2
    assert "pccore run needs a RECIPE" in capsys.readouterr().err
