"""`run.compile = true` compiles each block with torch.compile; compiled and eager steps must agree, and a
compiled run checkpoints and resumes like an eager one."""

import copy
from pathlib import Path

import torch
from torch._dynamo.eval_frame import OptimizedModule

from pccore.cli import main
from pccore.core.components import DataSpec, NoParams
from pccore.recipe import load_recipe
from pccore.run import seeds
from pccore.run.assemble import assemble
from pccore.run.checkpoint import load_checkpoint
from pccore.run.data import BatchFeeder
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate, StandardUpdate
from tests.engine_helpers import engine, tanh_mlp
from tests.test_resume import _interrupt
from tests.test_training import write_recipe


def test_compiled_and_eager_training_steps_agree():
    torch._dynamo.reset()
    eager_blocks = tanh_mlp([6, 8, 8, 3], dtype=torch.float32)
    compiled_source = copy.deepcopy(eager_blocks)
    compiled_blocks = torch.nn.ModuleList([torch.compile(b) for b in compiled_source])
    pi = Spiking(SpikingParams()).table(3, 5)
    x = torch.randn(16, 6)
    y = torch.randint(0, 3, (16,))
    for update in (ForwardUpdate(NoParams()), StandardUpdate(NoParams())):
        eager = engine(eager_blocks, pi, update, lr=0.5, momentum=0.1, num_classes=3)
        compiled = engine(compiled_blocks, pi, update, lr=0.5, momentum=0.1, num_classes=3)
        a = eager.train_step(x, y)
        b = compiled.train_step(x, y)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.energy, a.energy, rtol=1e-5, atol=1e-6)
        for p, q in zip(eager_blocks.parameters(), compiled_source.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)


def test_a_compiled_run_trains_checkpoints_and_resumes_through_assemble(tmp_path: Path, monkeypatch) -> None:
    """`run.compile = true` through `pccore run`: the engine's blocks are compiled and compiled code runs;
    the checkpoint holds the plain blocks' state (no `_orig_mod.` keys), which loads into a fresh eager
    model; an interrupted compiled run resumes to the uninterrupted one's weights; and the compiled run
    ends where the eager run does."""
    torch._dynamo.reset()
    engines = []
    real_assemble = seeds.assemble

    def recording(*args, **kwargs):
        asm = real_assemble(*args, **kwargs)
        engines.append(asm.engine)
        return asm

    monkeypatch.setattr(seeds, "assemble", recording)
    common = {"epochs": 2, "max_batches": 2, "tensorboard": False, "model_hidden": [16]}
    eager_recipe = write_recipe(tmp_path, **common)
    assert main(["run", str(eager_recipe), "--out", str(tmp_path / "eager")]) == 0
    recipe = write_recipe(tmp_path, run_compile=True, **common)
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    assert main(["run", str(recipe), "--out", str(tmp_path / "whole")]) == 0
    assert all(isinstance(b, OptimizedModule) for b in engines[-1].blocks)
    assert torch._dynamo.utils.counters["frames"]["ok"] > frames  # frames were compiled, not skipped

    whole = load_checkpoint(tmp_path / "whole" / "seed_0" / "checkpoint.pt")["model"]
    eager = load_checkpoint(tmp_path / "eager" / "seed_0" / "checkpoint.pt")["model"]
    assert list(whole) == list(eager) == ["0.1.weight", "0.1.bias", "1.0.weight", "1.0.bias"]
    for key in whole:
        torch.testing.assert_close(whole[key], eager[key], rtol=1e-4, atol=1e-5)
    fresh = assemble(load_recipe(eager_recipe), DataSpec((1, 8, 8), 10), torch.device("cpu"))
    fresh.blocks.load_state_dict(whole)  # strict: every key matches a plain model's

    _interrupt(monkeypatch, seed=0, epoch=1)
    cut = tmp_path / "cut"
    assert main(["run", str(recipe), "--out", str(cut)]) == 130
    monkeypatch.setattr(seeds, "BatchFeeder", BatchFeeder)
    assert main(["run", "--resume", str(cut)]) == 0
    assert all(isinstance(b, OptimizedModule) for b in engines[-1].blocks)
    resumed = load_checkpoint(cut / "seed_0" / "checkpoint.pt")["model"]
    assert list(resumed) == list(whole)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0)
