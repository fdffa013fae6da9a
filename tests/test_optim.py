"""The weight optimizer and the warmup-cosine schedule, checked against hand-computed rates."""

from __future__ import annotations

import types

import pytest
import torch

from pccore.core.errors import UsageError
from pccore.core.optim import WarmupCosine, make_optimizer


def _section(lr: float = 2e-3, weight_decay: float = 0.0) -> types.SimpleNamespace:
    return types.SimpleNamespace(lr=lr, weight_decay=weight_decay, warmup=0.1, schedule_epochs=25)


def _schedule(
    total: int = 100, warmup: float = 0.1, lr: float = 2e-3
) -> tuple[WarmupCosine, torch.optim.AdamW]:
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(3))], _section(lr))
    return WarmupCosine(opt, lr, total, warmup), opt


def test_make_optimizer_is_adamw_with_recipe_values() -> None:
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], _section(3e-4, 1e-2))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 3e-4
    assert opt.param_groups[0]["weight_decay"] == 1e-2


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 2e-3),  # starts at lr
        (5, 2.1e-3),  # halfway through the 10 warmup steps: lr * 1.05
        (10, 2.2e-3),  # end of warmup: 1.1 * lr
        (55, 1.2e-3),  # cosine midpoint: 0.1 lr + (1.1 - 0.1) lr * 0.5
        (100, 2e-4),  # end: 0.1 * lr
        (101, 2e-4),  # after the end it stays at 0.1 * lr
        (1000, 2e-4),
    ],
)
def test_rate_at_known_points(step: int, expected: float) -> None:
    sched, _ = _schedule()
    assert sched.lr_at(step) == pytest.approx(expected, rel=1e-12)


def test_quarter_of_the_cosine() -> None:
    # 20 steps with 4 of warmup: step 8 is a quarter of the way through the decay.
    sched, _ = _schedule(total=20, warmup=0.2, lr=1.0)
    # progress (8 - 4) / 16 = 1/4: 0.1 + 1.0 * 0.5 * (1 + cos(pi/4)) = 0.1 + 0.5 + sqrt(2)/4
    assert sched.lr_at(8) == pytest.approx(0.6 + 2**0.5 / 4, rel=1e-12)


def test_zero_warmup_starts_at_the_peak() -> None:
    sched, _ = _schedule(total=10, warmup=0.0, lr=1.0)
    assert sched.lr_at(0) == pytest.approx(1.1)
    assert sched.lr_at(5) == pytest.approx(0.6)


def test_full_warmup_rises_until_the_end() -> None:
    sched, _ = _schedule(total=10, warmup=1.0, lr=1.0)
    assert sched.lr_at(9) == pytest.approx(1.09)
    assert sched.lr_at(10) == pytest.approx(0.1)


def test_step_sets_the_optimizer_rate() -> None:
    sched, opt = _schedule()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3)
    for _ in range(10):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.2e-3)
    for _ in range(200):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)


def test_optimizer_step_uses_the_scheduled_rate() -> None:
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = make_optimizer([p], _section(1e-2))
    sched = WarmupCosine(opt, 1e-2, 10, 0.2)
    sched.step()  # step 1 of a 2-step warmup: rate 1.05e-2
    p.grad = torch.ones_like(p)
    opt.step()
    # Adam's first step moves each weight by lr * g / (|g| + eps) = lr (up to eps = 1e-8)
    assert torch.allclose(p.detach(), torch.full((4,), -1.05e-2, dtype=torch.float64), rtol=1e-7)


def test_state_dict_round_trip() -> None:
    sched, _ = _schedule()
    for _ in range(37):
        sched.step()
    other, opt = _schedule(total=5, warmup=0.0, lr=1.0)
    other.load_state_dict(sched.state_dict())
    assert other.step_count == 37
    assert other.total_steps == 100
    assert opt.param_groups[0]["lr"] == pytest.approx(sched.lr_at(37))


@pytest.mark.parametrize(
    ("total", "warmup", "match"),
    [(0, 0.1, "at least one step"), (10, 1.5, r"optimizer.warmup must be in \[0, 1\], got 1.5"),
     (10, -0.1, "optimizer.warmup")],
)
def test_schedule_rejects_bad_settings(total: int, warmup: float, match: str) -> None:
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], _section())
    with pytest.raises(UsageError, match=match):
        WarmupCosine(opt, 1e-3, total, warmup)


def test_optimizer_rejects_bad_settings() -> None:
    with pytest.raises(UsageError, match="optimizer.lr must be positive"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], _section(lr=0.0))
    with pytest.raises(UsageError, match="optimizer.weight_decay"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], _section(weight_decay=-1.0))
