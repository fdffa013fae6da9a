"""Tests of the batch feeder (normalisation, augmentation, epoch order) and of the smoke data."""

from __future__ import annotations

import attrs
import pytest
import torch

from pccore.core.components import Augmentation, DataSpec, ImageData
from pccore.core.errors import PluginError, UsageError
from pccore.run import data as feed
from pccore.run.data import BatchFeeder, smoke_data

CPU = torch.device("cpu")


def _dataset(n=10, channels=2, h=5, w=4, augmentation=None, mean=None, std=None):
    """uint8 images whose pixels all differ from each other and from 0; labels = sample index."""
    images = (torch.arange(n * channels * h * w) % 255 + 1).to(torch.uint8).view(n, channels, h, w)
    labels = torch.arange(n)
    return ImageData(images, labels, images.clone(), labels.clone(), n,
                     mean or (0.0,) * channels, std or (1.0,) * channels, augmentation or Augmentation())


def _collect(feeder, seed=0, epoch=0):
    batches = list(feeder.epoch(seed, epoch))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), batches


# --- normalisation -------------------------------------------------------------------------------


def test_uint8_normalisation_by_hand():
    data = _dataset(n=4, channels=3, h=2, w=2, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
    x, y, _ = _collect(BatchFeeder(data, train=False, batch_size=3, device=CPU))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.tolist() == [0, 1, 2, 3]
    raw = data.test_images.double()
    for c, (m, s) in enumerate(zip(data.mean, data.std, strict=True)):
        expected = (raw[:, c] / 255.0 - m) / s
        torch.testing.assert_close(x[:, c].double(), expected, atol=1e-6, rtol=0)
    assert x[0, 0, 0, 0].item() == pytest.approx((1 / 255 - 0.4914) / 0.2023, abs=1e-6)


def test_float_images_are_not_rescaled_and_float64_works():
    images = torch.tensor([[[[0.5, -1.0], [2.0, 4.0]]]], dtype=torch.float32)
    data = ImageData(images, torch.tensor([0]), images, torch.tensor([0]), 1, (1.0,), (2.0,))
    x, _, _ = _collect(BatchFeeder(data, train=False, batch_size=1, device=CPU, dtype=torch.float64))
    assert x.dtype == torch.float64
    assert x.tolist() == [[[[-0.25, -1.0], [0.5, 1.5]]]]


def test_float64_uint8_path_to_rounding():
    data = _dataset(n=3, channels=1, h=1, w=3, mean=(0.25,), std=(0.5,))
    x, _, _ = _collect(BatchFeeder(data, train=False, batch_size=8, device=CPU, dtype=torch.float64))
    expected = [[[[((v / 255) - 0.25) / 0.5 for v in (1 + 3 * i, 2 + 3 * i, 3 + 3 * i)]]] for i in range(3)]
    torch.testing.assert_close(x, torch.tensor(expected, dtype=torch.float64), atol=1e-14, rtol=0)


def test_channels_last():
    data = _dataset(n=3, channels=3, h=4, w=4, augmentation=Augmentation(1, True))
    plain, _, _ = _collect(BatchFeeder(data, train=True, batch_size=2, device=CPU), seed=3)
    last, _, batches = _collect(BatchFeeder(data, train=True, batch_size=2, device=CPU, channels_last=True),
                                seed=3)
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
    assert torch.equal(plain, last)


# --- augmentation --------------------------------------------------------------------------------


def _crop_flip(x, padding, crop_y, crop_x, flip):
    """The feeder's window arithmetic and gather, applied to a whole batch."""
    rows, cols = feed._windows(x.shape[2], x.shape[3], crop_y, crop_x, flip)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    return feed._gather(padded, torch.arange(len(x)), torch.arange(x.shape[1]), rows, cols)


def test_crop_flip_hand_values():
    x = torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.uint8).repeat(4, 1, 1, 1)
    crop_y, crop_x = torch.tensor([0, 2, 2, 1]), torch.tensor([0, 1, 1, 1])
    flip = torch.tensor([False, False, True, True])
    out = _crop_flip(x, 1, crop_y, crop_x, flip)
    assert out[:, 0].tolist() == [
        [[0, 0], [0, 1]],  # window at the padded image's top-left corner
        [[3, 4], [0, 0]],  # one row down past the bottom edge
        [[4, 3], [0, 0]],  # the same window, flipped
        [[2, 1], [4, 3]],  # the centred window is the image itself, flipped
    ]
    assert _crop_flip(x, 0, None, None, flip)[:, 0, 0].tolist() == [[1, 2], [1, 2], [2, 1], [2, 1]]


def _reference(image: torch.Tensor, padding: int, y: int, x: int, flip: bool) -> torch.Tensor:
    """One sample: zero canvas, image pasted in the middle, window cut out, flipped with torch.flip."""
    c, h, w = image.shape
    canvas = torch.zeros((c, h + 2 * padding, w + 2 * padding), dtype=image.dtype)
    canvas[:, padding:padding + h, padding:padding + w] = image
    window = canvas[:, y:y + h, x:x + w]
    return torch.flip(window, dims=[2]) if flip else window


@pytest.mark.parametrize("padding, flip", [(2, True), (2, False), (0, True)])
def test_train_batches_match_per_sample_reference(padding, flip):
    data = _dataset(n=16, channels=2, h=5, w=4, augmentation=Augmentation(padding, flip))
    feeder = BatchFeeder(data, train=True, batch_size=5, device=CPU, dtype=torch.float64)
    plan = feeder.plan(seed=7, epoch=2)
    x, y, _ = _collect(feeder, seed=7, epoch=2)
    assert torch.equal(y, plan.order)
    if padding:
        assert plan.crop_y.min() >= 0 and plan.crop_y.max() <= 2 * padding
        assert len(set(plan.crop_y.tolist())) > 1 and len(set(plan.crop_x.tolist())) > 1
    else:
        assert plan.crop_y is None and plan.crop_x is None
    if flip:
        assert plan.flip.any() and not plan.flip.all()
    else:
        assert plan.flip is None
    for k, i in enumerate(plan.order.tolist()):
        expected = _reference(data.train_images[i], padding,
                              int(plan.crop_y[k]) if padding else padding,
                              int(plan.crop_x[k]) if padding else padding,
                              bool(plan.flip[k]) if flip else False)
        assert torch.equal((x[k] * 255).round().to(torch.uint8), expected), f"sample {k}"


def test_padding_is_zero_before_normalisation():
    images = torch.full((64, 1, 2, 2), 255, dtype=torch.uint8)
    data = ImageData(images, torch.zeros(64, dtype=torch.int64), images, torch.zeros(64, dtype=torch.int64),
                     1, (0.5,), (0.25,), Augmentation(1, False))
    x, _, _ = _collect(BatchFeeder(data, train=True, batch_size=64, device=CPU))
    # (0 - 0.5) / 0.25 at the padding, (1 - 0.5) / 0.25 inside the image
    assert x.unique().tolist() == pytest.approx([-2.0, 2.0], abs=1e-6)


def test_test_split_is_in_order_and_not_augmented():
    data = _dataset(n=7, augmentation=Augmentation(2, True))
    feeder = BatchFeeder(data, train=False, batch_size=3, device=CPU)
    x, y, batches = _collect(feeder, seed=5, epoch=9)
    assert y.tolist() == list(range(7)) and [len(b[1]) for b in batches] == [3, 3, 1]
    assert torch.equal((x * 255).round().to(torch.uint8), data.test_images)
    plan = feeder.plan(5, 9)
    assert torch.equal(plan.order, torch.arange(7))
    assert plan.crop_y is None and plan.crop_x is None and plan.flip is None


# --- epochs --------------------------------------------------------------------------------------


def test_epochs_are_reproducible_and_differ():
    data = _dataset(n=40, augmentation=Augmentation(1, True))
    feeder = BatchFeeder(data, train=True, batch_size=8, device=CPU)
    x1, y1, _ = _collect(feeder, seed=0, epoch=3)
    x2, y2, _ = _collect(BatchFeeder(data, train=True, batch_size=8, device=CPU), seed=0, epoch=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    _, y_next, _ = _collect(feeder, seed=0, epoch=4)
    _, y_seed, _ = _collect(feeder, seed=1, epoch=3)
    assert not torch.equal(y1, y_next) and not torch.equal(y1, y_seed)


def test_every_sample_once_per_epoch_with_partial_last_batch():
    data = _dataset(n=23)
    feeder = BatchFeeder(data, train=True, batch_size=5, device=CPU)
    assert len(feeder) == 5
    x, y, batches = _collect(feeder, seed=11, epoch=0)
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(y.tolist()) == list(range(23)) and y.tolist() != list(range(23))
    assert torch.equal((x * 255).round().to(torch.uint8), data.train_images[y])


def test_max_batches():
    data = _dataset(n=23)
    feeder = BatchFeeder(data, train=True, batch_size=5, device=CPU, max_batches=2)
    assert len(feeder) == 2
    _, y, batches = _collect(feeder)
    assert [len(b[1]) for b in batches] == [5, 5] and len(set(y.tolist())) == 10
    assert len(BatchFeeder(data, train=False, batch_size=5, device=CPU, max_batches=9)) == 5


def test_epoch_generator_depends_on_seed_and_epoch():
    draw = [torch.randint(0, 2**31, (4,), generator=feed.epoch_generator(s, e)).tolist()
            for s, e in ((0, 0), (0, 0), (0, 1), (1, 0), (-1, 0))]
    assert draw[0] == draw[1]
    assert len({tuple(d) for d in draw}) == 4


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch size must be at least 1, got 0"),
    ({"batch_size": 2, "max_batches": -1}, "max_batches must be 0"),
    ({"batch_size": 2, "dtype": torch.int32}, "must be a floating-point type, got torch.int32"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(UsageError, match=message):
        BatchFeeder(_dataset(), train=True, device=CPU, **kwargs)


@pytest.mark.parametrize("changes, message", [
    ({"train_images": torch.zeros(10, 5, 4, dtype=torch.uint8)}, r"must be \[N, C, H, W\]"),
    ({"train_images": torch.zeros(10, 2, 5, 4, dtype=torch.int32)}, "uint8 or floating point"),
    ({"train_images": torch.zeros(0, 2, 5, 4), "train_labels": torch.zeros(0, dtype=torch.int64)},
     "train split is empty"),
    ({"train_labels": torch.arange(9)}, r"one per image \(10\), got shape \(9,\)"),
    ({"train_labels": torch.zeros(10)}, "must be integers"),
    ({"mean": (0.0,)}, r"one value per channel \(2\), got 1 and 2"),
    ({"std": (1.0, 0.0)}, "std values must be positive"),
    ({"num_classes": 5}, r"labels must lie in 0..4, got 0..9"),
    ({"augmentation": Augmentation(-1, False)}, "crop padding must be 0 or positive"),
])
def test_malformed_plugin_data(changes, message):
    with pytest.raises(PluginError, match=message) as info:
        BatchFeeder(attrs.evolve(_dataset(), **changes), train=True, batch_size=2, device=CPU)
    assert str(info.value).startswith("the dataset plugin returned malformed data: ")


# --- smoke data ----------------------------------------------------------------------------------


def test_smoke_data():
    spec = DataSpec((3, 16, 16), 7)
    data = smoke_data(spec, batches=3, batch_size=4, seed=0)
    assert data.train_images.shape == (12, 3, 16, 16) and data.test_images.shape == (12, 3, 16, 16)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.num_classes == 7 and len(data.mean) == 3 and len(data.std) == 3
    assert int(data.train_labels.max()) < 7 and int(data.test_labels.min()) >= 0
    assert data.augmentation == Augmentation(2, True)
    again = smoke_data(spec, batches=3, batch_size=4, seed=0)
    assert torch.equal(again.train_images, data.train_images)
    assert not torch.equal(smoke_data(spec, 3, 4, seed=1).train_images, data.train_images)
    feeder = BatchFeeder(data, train=True, batch_size=4, device=CPU)
    shapes = [tuple(x.shape) for x, _ in feeder.epoch(0, 0)]
    assert shapes == [(4, 3, 16, 16)] * 3


# --- CUDA (run where a GPU is present) -----------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("on_device", [True, False])
@pytest.mark.parametrize("train, channels_last", [(True, False), (True, True), (False, True)])
def test_cuda_matches_cpu_without_host_sync(monkeypatch, on_device, train, channels_last):
    data = _dataset(n=50, channels=3, h=8, w=8, augmentation=Augmentation(2, True),
                    mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    if not on_device:
        monkeypatch.setattr(feed, "DEVICE_FRACTION", 0.0)
    gpu = BatchFeeder(data, train=train, batch_size=16, device=torch.device("cuda"),
                      channels_last=channels_last)
    assert gpu.on_device is on_device
    assert gpu.images.device.type == ("cuda" if on_device else "cpu")
    x_cpu, y_cpu, _ = _collect(BatchFeeder(data, train=train, batch_size=16, device=CPU), seed=4, epoch=1)
    batches = gpu.epoch(4, 1)
    first = next(batches)  # the epoch's one-time uploads happen here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = list(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(x.is_contiguous(memory_format=gpu.layout) for x, _ in [first, *rest])
    x = torch.cat([b[0] for b in [first, *rest]])
    y = torch.cat([b[1] for b in [first, *rest]])
    assert x.device.type == "cuda" and y.device.type == "cuda"
    torch.testing.assert_close(x.cpu(), x_cpu, atol=1e-6, rtol=0)
    assert torch.equal(y.cpu(), y_cpu)
