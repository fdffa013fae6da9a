"""The validation split: a stratified, deterministic part of the training set held out for model selection.

`data.validation_fraction` of every class's training images (rounded half up, per class) is carved out of
the training set the dataset plugin returns, so every dataset with labels gets it without any code of its
own; the test set is untouched. Which images go is decided by one permutation drawn from the validation
seed alone, so the same seed gives the same split on every run and machine. The seed is
`data.validation_seed` when set, else the dataset's own `split_seed` parameter when it has one (the seed of
its train/test split), else 0.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from pccore.core.components import ImageData
from pccore.core.errors import UsageError

SPLIT_SEED_PARAMETER = "split_seed"
"""A dataset parameter of this name also seeds the validation split (unless data.validation_seed is set)."""


def validation_seed(data_section: Any) -> int:
    """The seed of the validation split: `data.validation_seed`, else the dataset's `split_seed`
    parameter, else 0."""
    if data_section.validation_seed is not None:
        return int(data_section.validation_seed)
    own = getattr(data_section.params, SPLIT_SEED_PARAMETER, None)
    if isinstance(own, int) and not isinstance(own, bool):
        return own
    return 0


def _per_class(labels: torch.Tensor) -> dict[int, int]:
    """How many samples each label present has."""
    values, counts = torch.unique(labels, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def held_out_count(count: int, fraction: float) -> int:
    """How many of a class's `count` samples go to validation: `fraction * count` rounded half up."""
    return math.floor(fraction * count + 0.5)


def _check_fraction(counts: dict[int, int], fraction: float) -> None:
    """Every class must keep a training sample and give a validation sample: UsageError otherwise."""
    for label, count in sorted(counts.items()):
        held = held_out_count(count, fraction)
        if 0 < held < count:
            continue
        side = "no validation image" if held == 0 else "no training image"
        smallest = min(counts.values())
        low = 0.5 / smallest
        high = 1 - 0.5 / smallest
        allowed = (f"a fraction from {low:.4g} to below {high:.4g}" if low < high else
                   "no fraction: it has too few images to split")
        raise UsageError(
            f"data.validation_fraction = {fraction} leaves class {label} ({count} training images) with {side}; "
            f"the stratified validation split needs at least one image of every class on both sides, which "
            f"with the smallest class of {smallest} images allows {allowed}"
        )


def split_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) indices into `labels`, both sorted: per class, `fraction` of its samples
    (rounded half up) go to validation, chosen by one permutation seeded by `seed` alone."""
    labels = labels.reshape(-1).to("cpu", torch.int64)
    counts = _per_class(labels)
    _check_fraction(counts, fraction)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    ranked = labels[order]
    held = torch.zeros(len(labels), dtype=torch.bool)
    for label, count in counts.items():
        members = order[ranked == label]  # this class's samples in permutation order
        held[members[: held_out_count(count, fraction)]] = True
    return (~held).nonzero().flatten(), held.nonzero().flatten()


def carve_validation(data: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData | None]:
    """The data to train on and the validation data, or (data, None) when `fraction` is 0.

    The validation data is an ImageData whose test split holds the held-out images (a feeder built with
    `train=False` serves it in order, unaugmented); both keep the dataset's normalisation and class count.
    """
    if fraction <= 0:
        return data, None
    train_index, held_index = split_indices(data.train_labels, fraction, seed)
    images, labels = data.train_images, data.train_labels
    training = attrs.evolve(data, train_images=images[train_index], train_labels=labels[train_index])
    validation = attrs.evolve(training, test_images=images[held_index], test_labels=labels[held_index])
    return training, validation
