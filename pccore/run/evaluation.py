"""Evaluation of a trained engine (top-1 and top-k over a test set, summed exactly over data-parallel ranks)
and the aggregate of a run's seeds (mean and population standard deviation)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from pccore.core.errors import UsageError
from pccore.parallel import distributed


def evaluate(
    engine: Any, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], k: int,
    world: distributed.World | None = None,
) -> tuple[float, float]:
    """Top-1 and top-k accuracy (fractions in [0, 1]) of `engine.predict` over the given batches; with
    `world`, over every rank's batches (the correct counts are summed exactly)."""
    correct1: torch.Tensor | None = None
    correctk: torch.Tensor | None = None
    total = 0
    for x, y in batches:
        if y.shape[0] == 0:  # a rank's empty share of a last batch smaller than the number of ranks
            continue
        logits = engine.predict(x)
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y.view(-1, 1))
        c1, ck = hits[:, 0].sum(), hits.any(dim=1).sum()
        correct1 = c1 if correct1 is None else correct1 + c1
        correctk = ck if correctk is None else correctk + ck
        total += int(y.shape[0])
    counts = [int(correct1) if correct1 is not None else 0, int(correctk) if correctk is not None else 0, total]
    if world is not None:
        counts = world.sum_counts(counts, "adding up the test accuracy")
    hits1, hitsk, total = counts
    if total == 0:
        raise UsageError("the test set yields no batch, so the run cannot be evaluated.")
    return hits1 / total, hitsk / total


def aggregate(seed_summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and population standard deviation (ddof 0) of the seeds' best top-1 and top-5, and with a
    validation split of their best validation top-1 and the test top-1 at that epoch."""
    top1 = [float(s["best_top1"]) for s in seed_summaries]
    top5 = [float(s["best_top5"]) for s in seed_summaries]
    out = {
        "top1_mean": _mean(top1),
        "top1_std": _population_std(top1),
        "top5_mean": _mean(top5),
        "top5_std": _population_std(top5),
    }
    if seed_summaries and all("best_val_top1" in s for s in seed_summaries):
        for key in ("best_val_top1", "test_top1_at_best_val"):
            values = [float(s[key]) for s in seed_summaries]
            out.update({f"{key}_mean": _mean(values), f"{key}_std": _population_std(values)})
    return {**out, "std": "population (ddof 0)", "seeds": list(seed_summaries)}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _population_std(values: Sequence[float]) -> float:
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
