"""Incremental predictive coding (iPC, BEYOND.md A) against a slow loop written straight from its
definition: autograd on the hand-written energy E_t, torch.optim.SGD for the states, torch.optim.AdamW
stepped by hand with the stoppable rule, in float64; then the schedule's length, the stoppable rule and
resume through real runs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pccore
from pccore.cli import main
from pccore.core.errors import UsageError
from pccore.core.optim import WeightStepper, hold_back_zero_gradients
from pccore.run.checkpoint import load_checkpoint
from tests.test_resume import _weights, resumes_exactly
from tests.test_training import _run, _warmup_cosine, record_learning_rates, write_recipe

WIDTHS = [6, 9, 8, 7, 3]
"""An MLP of L = 4 blocks: 6 -> 9 -> 8 -> 7 -> 3 classes."""


class Block(nn.Module):
    """Linear, then (BatchNorm and) tanh; the last block is linear alone."""

    def __init__(self, fan_in: int, fan_out: int, last: bool, batchnorm: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out)
        self.bn = nn.BatchNorm1d(fan_out) if batchnorm and not last else None
        self.last = last

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.linear(h)
        if self.bn is not None:
            h = self.bn(h)
        return h if self.last else torch.tanh(h)


def _blocks(batchnorm: bool) -> list[Block]:
    torch.manual_seed(0)
    n = len(WIDTHS) - 1
    return [Block(WIDTHS[i], WIDTHS[i + 1], i == n - 1, batchnorm) for i in range(n)]


def _reference_block(block: Block, h: torch.Tensor, update_stats: bool) -> torch.Tensor:
    """The block by hand: BatchNorm on the batch's statistics, updating the running ones only when asked
    (the frozen policy updates them in the learning pass alone)."""
    h = F.linear(h, block.linear.weight, block.linear.bias)
    if block.bn is not None:
        bn = block.bn
        running = (bn.running_mean, bn.running_var) if update_stats else (None, None)
        h = F.batch_norm(h, *running, bn.weight, bn.bias, True, bn.momentum if update_stats else 0.0, bn.eps)
    return h if block.last else torch.tanh(h)


def _energy(l: int, L: int, x: torch.Tensor, mu: torch.Tensor, ce: bool) -> torch.Tensor:
    if l == L and ce:
        return -(x * F.log_softmax(mu, dim=-1)).sum()
    return 0.5 * (x - mu).square().sum()


def _reference_batch(blocks, optimizer, x, y, pi, pi_learn, *, lr, momentum, variant, ce) -> None:
    """One iPC batch from BEYOND.md A, in place on `blocks` and `optimizer`."""
    L, B, T = len(blocks), x.shape[0], pi.shape[0]
    params = [p for b in blocks for p in b.parameters()]
    with torch.no_grad():
        mu = [x]
        for b in blocks:
            mu.append(_reference_block(b, mu[-1], update_stats=False))
    target = F.one_hot(y, WIDTHS[-1]).to(x.dtype)  # clamp: x^L is the target
    states = [m.clone().requires_grad_(True) for m in mu[1:L]]
    sgd = torch.optim.SGD(states, lr=lr, momentum=momentum, nesterov=momentum > 0)
    for t in range(T if variant == "plain" else T - 1):
        xs = [x, *states, target]
        energy = sum(
            pi[t, l - 1] * _energy(l, L, xs[l], _reference_block(blocks[l - 1], xs[l - 1], False), ce)
            for l in range(max(1, L - t), L + 1)
        )
        grads = torch.autograd.grad(energy, states + params, allow_unused=True)
        for s, g in zip(states, grads[: len(states)], strict=True):
            s.grad = torch.zeros_like(s) if g is None else g
        for p, g in zip(params, grads[len(states) :], strict=True):
            p.grad = None if g is None or not bool(g.ne(0).any()) else g / B  # the stoppable rule
        sgd.step()
        optimizer.step()
    if variant == "batchnorm":
        xs = [x, *(s.detach() for s in states), target]
        loss = sum(
            pi_learn[l - 1] * _energy(l, L, xs[l], _reference_block(blocks[l - 1], xs[l - 1], True), ce)
            for l in range(1, L + 1)
        ) / B
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g
        optimizer.step()


CASES = {
    "plain-spiking": dict(variant="plain", precision={"name": "spiking", "peak": 2.0, "base": 0.05}, steps=5,
                          batchnorm=False, ce=False),
    "plain-pure-spike": dict(variant="plain", precision={"name": "spiking", "peak": 1.0, "base": 0.0}, steps=6,
                             batchnorm=False, ce=False),
    "plain-constant-ce": dict(variant="plain", precision={"name": "constant"}, steps=4, batchnorm=False, ce=True),
    "batchnorm-spiking": dict(variant="batchnorm", precision={"name": "spiking", "peak": 2.0, "base": 0.05},
                              steps=5, batchnorm=True, ce=False),
    "batchnorm-constant": dict(variant="batchnorm", precision={"name": "constant"}, steps=4, batchnorm=True,
                               ce=False),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_an_incremental_batch_equals_the_slow_loop(case: str, momentum: float) -> None:
    c = CASES[case]
    ours = [b.double() for b in _blocks(c["batchnorm"])]
    theirs = copy.deepcopy(ours)
    engine = pccore.make_engine(
        ours, num_classes=WIDTHS[-1], precision=c["precision"], update="standard",
        normalization="frozen" if c["batchnorm"] else "none",
        inference={"name": "incremental", "variant": c["variant"]}, steps=c["steps"], lr=0.3,
        momentum=momentum, output_energy="ce" if c["ce"] else "se",
    )
    adamw = dict(lr=0.02, weight_decay=0.01)
    mine = torch.optim.AdamW([p for b in ours for p in b.parameters()], **adamw)
    ref = torch.optim.AdamW([p for b in theirs for p in b.parameters()], **adamw)
    step = WeightStepper(mine)
    pi, pi_learn = engine.table.inference.double(), engine.table.learning.double()
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # AdamW's moments and the stoppable rule carry over between batches
        x = torch.randn(16, WIDTHS[0], generator=generator, dtype=torch.float64)
        y = torch.randint(0, WIDTHS[-1], (16,), generator=generator)
        engine.train_step(x, y, weight_step=step)
        _reference_batch(theirs, ref, x, y, pi, pi_learn, lr=0.3, momentum=momentum, variant=c["variant"],
                         ce=c["ce"])
    start = nn.ModuleList(_blocks(c["batchnorm"])).double().state_dict()
    theirs_state = nn.ModuleList(theirs).state_dict()
    for name, a in nn.ModuleList(ours).state_dict().items():
        if name.endswith("num_batches_tracked"):  # F.batch_norm by hand does not count batches
            continue
        b = theirs_state[name]
        assert a.dtype == b.dtype and torch.allclose(a, b, rtol=0, atol=1e-10), name
        assert not torch.equal(a, start[name]) or not name.endswith("linear.weight"), f"{name} never moved"
    steps_taken = sorted(int(s["step"]) for s in mine.state.values())
    assert steps_taken == sorted(int(s["step"]) for s in ref.state.values())
    if case == "plain-pure-spike":  # one active block per step: each tensor steps once per batch, not T times
        assert set(steps_taken) == {3}


def test_the_pure_spike_holds_each_block_back_outside_its_step() -> None:
    """With the pure spike (base 0) block l has a gradient only at step L - l: AdamW steps each tensor once
    per batch, and a tensor held back keeps its moments and step count."""
    blocks = [b.double() for b in _blocks(False)]
    engine = pccore.make_engine(blocks, num_classes=3, precision={"name": "spiking", "base": 0.0}, steps=4,
                                inference="incremental", lr=0.3)
    optimizer = torch.optim.AdamW([p for b in blocks for p in b.parameters()], lr=0.01)
    seen: list[list[bool]] = []

    class Recording(WeightStepper):
        def __call__(self, *, stoppable: bool = False) -> None:
            assert stoppable
            seen.append([p.grad is not None for p in blocks_params])
            super().__call__(stoppable=stoppable)

    blocks_params = [p for b in blocks for p in b.parameters()]
    engine.train_step(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,)),
                      weight_step=Recording(optimizer))
    # step t updates block L - t only (two tensors each: weight and bias), from the last block down
    assert seen == [[i // 2 == 3 - t for i in range(8)] for t in range(4)]
    assert [int(s["step"]) for s in optimizer.state.values()] == [1] * 8


def test_exactly_zero_gradients_are_held_back_and_others_are_not() -> None:
    a, b, c = (nn.Parameter(torch.ones(3)) for _ in range(3))
    a.grad, b.grad, c.grad = torch.zeros(3), torch.tensor([0.0, 1e-30, 0.0]), None
    hold_back_zero_gradients([a, b, c])
    assert a.grad is None and torch.equal(b.grad, torch.tensor([0.0, 1e-30, 0.0])) and c.grad is None


def test_incremental_pc_needs_a_weight_step_and_an_update_that_runs_inference() -> None:
    engine = pccore.make_engine(_blocks(False), num_classes=3, steps=3, inference="incremental")
    with pytest.raises(UsageError, match="weight_step"):
        engine.train_step(torch.randn(4, 6), torch.randint(0, 3, (4,)))
    with pytest.raises(UsageError, match="runs no inference"):
        pccore.make_engine(_blocks(False), num_classes=3, steps=3, inference="incremental", update="backprop")


# --- through real runs ---------------------------------------------------------------------------------


def _incremental(tmp_path: Path, **changes) -> Path:
    inference = {"name": "incremental", "steps": 3, "lr": 0.1, "momentum": 0.1, **changes.pop("inference", {})}
    return write_recipe(tmp_path, inference=inference, update={"name": "standard"}, **changes)


def test_the_schedule_counts_every_inference_step(tmp_path: Path, monkeypatch) -> None:
    """4 epochs x 5 batches x T = 3 steps = 60 AdamW steps; the 3-epoch schedule spans 45 of them (20% = 9
    of warmup) and then stays at its minimum: every rate an AdamW step used, against the formula."""
    used = record_learning_rates(monkeypatch)
    lr = 1e-2
    recipe = _incremental(tmp_path, epochs=4, max_batches=5, every=5, tensorboard=False, log_checkpoints=False,
                          optimizer={"lr": lr, "weight_decay": 1e-4, "warmup": 0.2, "schedule_epochs": 3})
    assert _run([str(recipe), "--out", str(tmp_path / "o")]) == 0
    assert len(used) == 60
    assert used == pytest.approx([_warmup_cosine(s, lr, 45, 9) for s in range(60)], rel=1e-12, abs=0)


def test_an_incremental_run_resumes_exactly(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = _incremental(tmp_path, epochs=3, max_batches=3, normalization="frozen",
                          inference={"variant": "batchnorm"})
    cut = resumes_exactly(recipe, tmp_path, monkeypatch)
    assert any("running_mean" in k for k in _weights(cut, 0))
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())["seeds"]
    saved = load_checkpoint(cut / "seed_0" / "checkpoint.pt")
    assert saved["scheduler"]["step_count"] == 3 * 3 * 3  # epochs x batches x T weight steps
    assert math.isfinite(whole[0]["best_top1"])


def test_cuda_graphs_refuse_incremental_pc_before_any_folder(tmp_path: Path, capsys) -> None:
    from pccore.core.registry import get_registry
    from pccore.recipe import load_recipe
    from pccore.run.graphs import check_cuda_graphs

    recipe = load_recipe(_incremental(tmp_path), ["run.cuda_graphs=true"])
    with pytest.raises(UsageError, match=r'inference "incremental" takes 3 per batch.*run.cuda_graphs = false'):
        check_cuda_graphs(recipe, torch.device("cuda"), 1, get_registry())  # the device is only named here
    check_cuda_graphs(load_recipe(write_recipe(tmp_path), ["run.cuda_graphs=true"]), torch.device("cuda"), 1,
                      get_registry())  # state-based inference is captured
    out = tmp_path / "o"
    status = main(["run", str(_incremental(tmp_path)), "--out", str(out), "--set", "run.cuda_graphs=true",
                   "--device", "cpu"])
    assert status == 2 and "needs a CUDA device" in capsys.readouterr().err  # on this CPU: the device first
    assert not out.exists()


def _pure_spike_engine(blocks):
    return pccore.make_engine(blocks, num_classes=3, precision={"name": "spiking", "base": 0.0}, steps=4,
                              inference="incremental", lr=0.3)


def test_a_zero_gradient_in_an_active_block_takes_no_step() -> None:
    """A tensor of an active block whose gradient is exactly zero (here a parameter the block never uses)
    keeps no optimizer state at all: it never stepped."""
    blocks = [b.double() for b in _blocks(False)]
    blocks[1].spare = nn.Parameter(torch.ones(2, dtype=torch.float64))
    engine = _pure_spike_engine(blocks)
    optimizer = torch.optim.AdamW([p for b in blocks for p in b.parameters()], lr=0.01, weight_decay=0.1)
    for _ in range(2):
        engine.train_step(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,)),
                          weight_step=WeightStepper(optimizer))
    assert blocks[1].spare not in optimizer.state  # no moments, no step count
    assert torch.equal(blocks[1].spare, torch.ones(2, dtype=torch.float64))  # not even weight decay
    assert [int(optimizer.state[p]["step"]) for p in blocks[1].linear.parameters()] == [2, 2]


def test_zero_gradients_the_replica_sum_fills_in_are_held_back_too() -> None:
    """Data-parallel training sums every tensor's gradient over the ranks, zeros for the tensors without
    one: the stoppable rule still holds the inactive blocks back (each tensor steps once per batch)."""
    blocks = [b.double() for b in _blocks(False)]
    engine = _pure_spike_engine(blocks)
    params = [p for b in blocks for p in b.parameters()]
    optimizer = torch.optim.AdamW(params, lr=0.01)

    def sum_over_one_rank() -> None:  # what ReplicaSync.sum_gradients does to a tensor without a gradient
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    engine.train_step(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,)),
                      weight_step=WeightStepper(optimizer, sum_gradients=sum_over_one_rank))
    assert [int(s["step"]) for s in optimizer.state.values()] == [1] * 8
