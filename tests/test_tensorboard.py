"""TensorBoard output of a run, read back from the event files, and the precision-table image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from pccore.cli import main
from pccore.core.components import PrecisionTable
from pccore.run import seeds
from pccore.run.data import BatchFeeder
from pccore.run.tensorboard import energy_tag, precision_image, precision_markdown
from tests.test_training import write_recipe


def _accumulator(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _table(rows: list[list[float]], learning: list[float]) -> PrecisionTable:
    f64 = torch.float64
    return PrecisionTable(torch.tensor(rows, dtype=f64), torch.tensor(learning, dtype=f64))


def test_energy_tags_have_two_digits() -> None:
    assert [energy_tag(layer) for layer in (1, 9, 10, 15)] == [
        "energy/layer_01", "energy/layer_09", "energy/layer_10", "energy/layer_15",
    ]


def test_precision_image_scales_from_min_to_max() -> None:
    table = _table([[0.001, 1.0], [1.0, 0.001], [0.5005, 0.001]], [1.0, 1.0])
    image = precision_image(table, cell=1)
    assert image.shape == (1, 3, 2)  # [1, T, L]: rows t, columns l
    expected = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.5, 0.0]]])
    assert torch.allclose(image, expected, atol=1e-7)


def test_precision_image_enlarges_each_entry() -> None:
    image = precision_image(_table([[0.0, 2.0]], [1.0, 1.0]), cell=3)
    assert image.shape == (1, 3, 6)
    assert torch.equal(image[0, :, :3], torch.zeros(3, 3))
    assert torch.equal(image[0, :, 3:], torch.ones(3, 3))


def test_constant_table_is_white() -> None:
    assert torch.equal(precision_image(_table([[1.0, 1.0]], [1.0, 1.0]), cell=1), torch.ones(1, 1, 2))


def test_table_without_inference_steps() -> None:
    table = PrecisionTable(torch.zeros(0, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert precision_image(table, cell=2).shape == (1, 0, 6)
    assert precision_markdown(table).splitlines()[2:] == ["| learning | 1 | 1 | 1 |"]


def test_backprop_run_logs_no_precision_image(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, epochs=1, max_batches=1, update_name="backprop", inference_steps=0)
    assert main(["run", str(recipe), "--out", str(tmp_path / "o")]) == 0
    acc = _accumulator(tmp_path / "o" / "seed_0")
    assert acc.Tags()["images"] == []
    assert "precision/values/text_summary" in acc.Tags()["tensors"]
    assert len(acc.Scalars("test/top1")) == 1


def test_precision_markdown_lists_every_value() -> None:
    text = precision_markdown(_table([[0.001, 1.0], [1.0, 0.001]], [1.0, 0.5]))
    assert text.splitlines() == [
        "| t | l=1 | l=2 |",
        "|---|---|---|",
        "| 0 | 0.001 | 1 |",
        "| 1 | 1 | 0.001 |",
        "| learning | 1 | 0.5 |",
    ]


def _record_steps(monkeypatch) -> list[tuple[float, list[float]]]:
    """(loss, per-layer energies) of every training step the engine returns, in order."""
    steps: list[tuple[float, list[float]]] = []
    real_assemble = seeds.assemble

    def assemble(*args, **kwargs):
        asm = real_assemble(*args, **kwargs)
        train_step = asm.engine.train_step

        def recording(x, y, *args, **kwargs):
            out = train_step(x, y, *args, **kwargs)
            steps.append((float(out.loss), out.energy.tolist()))
            return out

        asm.engine.train_step = recording
        return asm

    monkeypatch.setattr(seeds, "assemble", assemble)
    return steps


def test_run_writes_scalars_image_text_and_hparams(tmp_path: Path, monkeypatch) -> None:
    steps = _record_steps(monkeypatch)
    recipe = write_recipe(tmp_path, epochs=2, max_batches=3, every=1)
    out = tmp_path / "o"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    events = list((out / "seed_0").glob("events.out.tfevents.*"))
    assert len(events) == 1  # the HParams live in the run's own file, not in a sub-run
    assert [p for p in (out / "seed_0").iterdir() if p.is_dir()] == []
    acc = _accumulator(out / "seed_0")
    scalars = acc.Tags()["scalars"]

    # 2 epochs of 3 batches, a log point every batch: steps 1..6; epoch metrics at steps 3 and 6
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("lr")] == [1, 2, 3, 4, 5, 6]
    summary = json.loads((out / "seed_0" / "summary.json").read_text())
    for tag, key in (("test/top1", "top1"), ("test/top5", "top5"), ("train/epoch_loss", "loss")):
        points = acc.Scalars(tag)
        assert [e.step for e in points] == [3, 6]
        assert [e.value for e in points] == pytest.approx([h[key] for h in summary["history"]], rel=1e-6)
    # the MLP has two blocks: two energy tags, one point per epoch
    assert sorted(t for t in scalars if t.startswith("energy/")) == ["energy/layer_01", "energy/layer_02"]
    # each log point's loss is its batch's loss; each epoch's energy the mean of its 3 batches' energies
    assert len(steps) == 6
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([s[0] for s in steps], rel=1e-6)
    for layer in (1, 2):
        points = acc.Scalars(f"energy/layer_0{layer}")
        assert [e.step for e in points] == [3, 6]
        means = [sum(s[1][layer - 1] for s in steps[3 * e : 3 * e + 3]) / 3 for e in (0, 1)]
        assert [e.value for e in points] == pytest.approx(means, rel=1e-6)
        assert all(m > 0 for m in means)
    # the logged rate is the warmup-cosine rate of the next step: 3 epochs x 3 batches, 1 warmup step
    lr = 3e-3
    assert acc.Scalars("lr")[0].value == pytest.approx(1.1 * lr, rel=1e-6)

    image = acc.Images("precision/table")
    assert len(image) == 1
    assert (image[0].width, image[0].height) == (2 * 16, 3 * 16)  # L = 2 columns, T = 3 rows
    recipe_text = acc.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '    name = "tiny"' in recipe_text
    assert "precision/values/text_summary" in acc.Tags()["tensors"]

    content = acc.PluginTagToContent("hparams")
    assert sorted(content) == [
        "_hparams_/experiment", "_hparams_/session_end_info", "_hparams_/session_start_info",
    ]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = start.session_start_info.hparams
    assert values["inference/steps"].number_value == 3
    assert values["model/name"].string_value == "mlp"
    assert values["model/hidden"].string_value == "[32]"
    assert values["run/seed"].number_value == 0
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.experiment.metric_infos] == ["hparams/best_top1"]
    assert acc.Scalars("hparams/best_top1")[0].value == pytest.approx(summary["best_top1"], rel=1e-6)


def test_tensorboard_off_writes_no_events(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, epochs=1, max_batches=1, tensorboard=False)
    assert main(["run", str(recipe), "--out", str(tmp_path / "o")]) == 0
    assert not list((tmp_path / "o").rglob("events.out.tfevents.*"))


class _StopInSecondEpoch(BatchFeeder):
    def epoch(self, seed, epoch):
        for i, batch in enumerate(super().epoch(seed, epoch)):
            if self.train and epoch == 1 and i == 2:
                raise KeyboardInterrupt
            yield batch


def test_resumed_run_hides_the_events_of_the_interrupted_epoch(tmp_path: Path, monkeypatch) -> None:
    recipe = write_recipe(tmp_path, epochs=2, max_batches=3, every=1)
    out = tmp_path / "o"
    monkeypatch.setattr(seeds, "BatchFeeder", _StopInSecondEpoch)
    assert main(["run", str(recipe), "--out", str(out)]) == 130
    # the interrupted epoch logged steps 4 and 5 before stopping
    assert [e.step for e in _accumulator(out / "seed_0").Scalars("train/loss")] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(seeds, "BatchFeeder", BatchFeeder)
    assert main(["run", "--resume", str(out)]) == 0
    acc = _accumulator(out / "seed_0")
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("test/top1")] == [3, 6]
    assert len(acc.Images("precision/table")) == 1
