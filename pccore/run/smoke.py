"""`--smoke`: a recipe reduced to a few batches of random data shaped like its dataset, with a thin model, so
that any recipe (a paper's GPU run included) can be tried on a laptop in seconds."""

from __future__ import annotations

from typing import Any

import attrs

SMOKE_BATCHES = 2
"""Training batches of a --smoke run (one epoch, first seed only)."""
SMOKE_BATCH_SIZE = 8
"""Largest batch of a --smoke run."""
SMOKE_WIDTH = 0.0625
"""Largest architecture `width` of a --smoke run."""
SMOKE_HIDDEN = 32
"""Largest hidden layer of a --smoke run (architectures with a `hidden` list or an integer `width`)."""
SMOKE_DEPTH = 3
"""Largest integer `depth` (number of hidden layers) of a --smoke run."""


def smoke_recipe(recipe: Any) -> Any:
    """The recipe reduced for --smoke: first seed, one epoch of two batches of at most 8, a thin model."""
    run = attrs.evolve(recipe.run, seeds=list(seeds_of(recipe)[:1]))
    data = attrs.evolve(
        recipe.data,
        batch_size=min(recipe.data.batch_size, SMOKE_BATCH_SIZE),
        eval_batch_size=min(recipe.data.eval_batch_size, SMOKE_BATCH_SIZE),
    )
    train_section = attrs.evolve(recipe.train, epochs=1, max_batches=SMOKE_BATCHES)
    model = attrs.evolve(recipe.model, params=_thin_params(recipe.model.params))
    return attrs.evolve(recipe, run=run, data=data, train=train_section, model=model)


def _thin_params(params: Any) -> Any:
    """Architecture parameters made cheap: a float `width` (a multiplier) capped at SMOKE_WIDTH, an integer
    `width` (units) and each `hidden` size at SMOKE_HIDDEN, an integer `depth` at SMOKE_DEPTH."""
    if params is None or not attrs.has(type(params)):
        return params
    names = {f.name for f in attrs.fields(type(params))}
    changes: dict[str, Any] = {}
    width = getattr(params, "width", None)
    if "width" in names and isinstance(width, float):
        changes["width"] = min(width, SMOKE_WIDTH)
    elif "width" in names and _is_int(width):
        changes["width"] = min(width, SMOKE_HIDDEN)
    hidden = getattr(params, "hidden", None)
    if "hidden" in names and isinstance(hidden, (list, tuple)):
        changes["hidden"] = type(hidden)(min(int(h), SMOKE_HIDDEN) for h in hidden)
    depth = getattr(params, "depth", None)
    if "depth" in names and _is_int(depth):
        changes["depth"] = min(depth, SMOKE_DEPTH)
    return attrs.evolve(params, **changes) if changes else params


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def seeds_of(recipe: Any) -> list[int]:
    """The seeds to train (distinct: the schema checks it)."""
    return [int(s) for s in recipe.run.seeds]
