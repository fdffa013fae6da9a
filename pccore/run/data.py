"""The batch feeder: serves a whole in-memory dataset as normalised, augmented batches on the device.

The dataset lives in memory as tensors, so there is no per-epoch decoding and no worker process. On a
GPU the raw (usually uint8) images are kept in device memory when they fit comfortably, otherwise in
host memory and copied through pinned buffers without blocking. Shuffling, random crops and flips are
drawn once per epoch from a CPU generator seeded with (seed, epoch), so an epoch is reproducible
exactly (resume relies on it), and applied batched on the device. Nothing per batch waits for the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from pccore.core.components import Augmentation, DataSpec, ImageData
from pccore.core.errors import PluginError, UsageError
from pccore.parallel.distributed import shard_bounds

DEVICE_FRACTION = 0.25
"""Raw images go to GPU memory when they take less than this fraction of the free memory."""

_STREAM_TAG = 0x5EED_DA7A
"""Mixed into the epoch seed so the feeder's draws differ from other (seed, epoch) users."""


@attrs.define(frozen=True)
class EpochPlan:
    """The random draws of one epoch. `order[k]` is the k-th sample served; `crop_y[k]`, `crop_x[k]` are
    its window's top-left corner in the zero-padded image (0..2*padding) and `flip[k]` its horizontal
    flip. The augmentation fields are None when that augmentation is off (and always at test time)."""

    order: torch.Tensor
    crop_y: torch.Tensor | None = None
    crop_x: torch.Tensor | None = None
    flip: torch.Tensor | None = None


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch) through numpy's SeedSequence (well mixed, any ints)."""
    mask = (1 << 64) - 1
    words = np.random.SeedSequence([seed & mask, epoch & mask, _STREAM_TAG]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


class BatchFeeder:
    """Serves one split of `data` as (images, labels) batches on `device`.

    Images come out as `dtype`, scaled to [0, 1] when stored as uint8, normalised with the dataset's
    per-channel mean and std; labels as int64. Training epochs are shuffled and augmented, test epochs
    are in order and untouched. The last partial batch is kept; `max_batches > 0` cuts epochs short.

    `shard = (rank, world_size)` serves rank `rank`'s part of every batch (data-parallel training): the
    batches, their order and their augmentation stay those of one process, and the parts of ranks
    0..world_size-1, in that order, make up each batch (`shard_bounds`). `batch_size` stays the global batch.
    """

    def __init__(self, data: ImageData, *, train: bool, batch_size: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 max_batches: int = 0, shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise UsageError(f"the batch size must be at least 1, got {batch_size}")
        if max_batches < 0:
            raise UsageError(f"max_batches must be 0 (no limit) or positive, got {max_batches}")
        if not dtype.is_floating_point:
            raise UsageError(f"the batch dtype must be a floating-point type, got {dtype}")
        if not 0 <= shard[0] < shard[1]:
            raise UsageError(f"shard = (rank, world_size) needs 0 <= rank < world_size, got {shard}")
        images, labels = (data.train_images, data.train_labels) if train else \
            (data.test_images, data.test_labels)
        _check_split(data, images, labels, "train" if train else "test")
        self.train = train
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = channels_last
        self.max_batches = max_batches
        self.shard = shard
        self.size = int(images.shape[0])
        self.augmentation = data.augmentation if train else Augmentation()
        channels, height, width = images.shape[1:]
        self.image_shape = (channels, height, width)
        # x * scale + shift == (x / 255 - mean) / std (x / 255 only for uint8), fused into one kernel.
        std = torch.tensor(data.std, dtype=torch.float64).view(1, channels, 1, 1)
        mean = torch.tensor(data.mean, dtype=torch.float64).view(1, channels, 1, 1)
        unit = 255.0 if images.dtype == torch.uint8 else 1.0
        self.scale = (1.0 / (unit * std)).to(device=self.device, dtype=dtype)
        self.shift = (-mean / std).to(device=self.device, dtype=dtype)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        padding = self.augmentation.crop_padding
        padded = (channels, height + 2 * padding, width + 2 * padding)
        self.on_device = self.device.type == "cpu" or _fits_on_device(
            self.size * (math.prod(padded) + math.prod(self.image_shape)) * images.element_size(),
            self.device)
        if self.on_device:
            # Stored already zero-padded, so a training batch is one gather from the whole dataset.
            self.images = images.contiguous().to(self.device)
            if padding > 0:
                self.images = F.pad(self.images, (padding,) * 4)
        else:
            self.images = images.contiguous()
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self._samples = torch.arange(batch_size, device=self.device)
        self._planes = torch.arange(channels, device=self.device)

    def __len__(self) -> int:
        """Batches per epoch."""
        batches = math.ceil(self.size / self.batch_size)
        return min(batches, self.max_batches) if self.max_batches > 0 else batches

    def global_size(self, index: int) -> int:
        """Samples in batch `index` (0-based) of an epoch, all ranks' parts together."""
        return min(self.batch_size, self.size - index * self.batch_size)

    def plan(self, seed: int, epoch: int) -> EpochPlan:
        """The order and augmentation draws of one epoch: random for training, identity for testing."""
        if not self.train:
            return EpochPlan(torch.arange(self.size))
        g = epoch_generator(seed, epoch)
        order = torch.randperm(self.size, generator=g)
        crop_y = crop_x = flip = None
        padding = self.augmentation.crop_padding
        if padding > 0:
            crop_y = torch.randint(0, 2 * padding + 1, (self.size,), generator=g)
            crop_x = torch.randint(0, 2 * padding + 1, (self.size,), generator=g)
        if self.augmentation.horizontal_flip:
            flip = torch.randint(0, 2, (self.size,), generator=g).bool()
        return EpochPlan(order, crop_y, crop_x, flip)

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images normalised, float dtype, on device; int64 labels on device) for every batch of the
        epoch, following `plan(seed, epoch)`. Per batch on the device: one gather (crop, flip and
        shuffle together) and one fused normalisation that also writes the requested memory layout."""
        plan = self.plan(seed, epoch)
        order = self._upload(plan.order)
        labels = self.labels.index_select(0, order)
        windows = None
        if plan.crop_y is not None or plan.flip is not None:
            _, height, width = self.image_shape
            windows = _windows(height, width, *(None if t is None else self._upload(t)
                                                for t in (plan.crop_y, plan.crop_x, plan.flip)))
        for b in range(len(self)):
            batch = slice(*shard_bounds(b * self.batch_size, min((b + 1) * self.batch_size, self.size), *self.shard))
            if self.on_device and windows is not None:
                raw = _gather(self.images, order[batch], self._planes, *(w[batch] for w in windows))
            elif self.on_device:
                raw = self.images[batch] if not self.train else self.images.index_select(0, order[batch])
            else:
                raw = self._from_host(plan.order[batch])
                if windows is not None:
                    raw = F.pad(raw, (self.augmentation.crop_padding,) * 4)
                    raw = _gather(raw, self._samples[:len(raw)], self._planes, *(w[batch] for w in windows))
            x = torch.empty(raw.shape, dtype=self.dtype, device=self.device, memory_format=self.layout)
            yield torch.addcmul(self.shift, raw, self.scale, out=x), labels[batch]

    def _upload(self, t: torch.Tensor) -> torch.Tensor:
        """A CPU tensor copied to the device without blocking (through pinned memory on CUDA)."""
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _from_host(self, index: torch.Tensor) -> torch.Tensor:
        """The host-resident raw images at `index`, gathered into a pinned buffer and sent to the device."""
        buffer = torch.empty((len(index), *self.images.shape[1:]), dtype=self.images.dtype,
                             pin_memory=True)
        torch.index_select(self.images, 0, index, out=buffer)
        return buffer.to(self.device, non_blocking=True)


def _windows(height: int, width: int, crop_y: torch.Tensor | None, crop_x: torch.Tensor | None,
             flip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample source rows [N, H] and columns [N, W] in the padded images: the crop window's, the
    columns reversed where `flip`. Without a crop the window is the image itself (no padding)."""
    device = (crop_y if crop_y is not None else flip).device
    n = len(crop_y if crop_y is not None else flip)
    rows = torch.arange(height, device=device).expand(n, height)
    cols = torch.arange(width, device=device).expand(n, width)
    if crop_y is not None and crop_x is not None:
        rows = rows + crop_y[:, None]
        cols = cols + crop_x[:, None]
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    return rows, cols


def _gather(images: torch.Tensor, samples: torch.Tensor, planes: torch.Tensor, rows: torch.Tensor,
            cols: torch.Tensor) -> torch.Tensor:
    """`out[k, c, i, j] = images[samples[k], planes[c], rows[k, i], cols[k, j]]`, one indexing kernel."""
    return images[samples[:, None, None, None], planes[None, :, None, None], rows[:, None, :, None],
                  cols[:, None, None, :]]


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` is under DEVICE_FRACTION of the device's free memory."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < DEVICE_FRACTION * free


def _check_split(data: ImageData, images: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    """Reject malformed dataset plugin output with a message naming what is wrong."""
    problem = None
    if images.dim() != 4:
        problem = f"{split} images must be [N, C, H, W], got shape {tuple(images.shape)}"
    elif images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        problem = f"{split} images must be uint8 or floating point, got {images.dtype}"
    elif images.shape[0] == 0:
        problem = f"the {split} split is empty"
    elif labels.shape != (images.shape[0],):
        problem = (f"{split} labels must be one per image ({images.shape[0]}), "
                   f"got shape {tuple(labels.shape)}")
    elif labels.dtype.is_floating_point or labels.dtype == torch.bool:
        problem = f"{split} labels must be integers, got {labels.dtype}"
    elif len(data.mean) != images.shape[1] or len(data.std) != images.shape[1]:
        problem = (f"mean and std need one value per channel ({images.shape[1]}), "
                   f"got {len(data.mean)} and {len(data.std)}")
    elif min(data.std) <= 0:
        problem = f"std values must be positive, got {tuple(data.std)}"
    elif int(labels.min()) < 0 or int(labels.max()) >= data.num_classes:
        problem = (f"{split} labels must lie in 0..{data.num_classes - 1}, "
                   f"got {int(labels.min())}..{int(labels.max())}")
    elif data.augmentation.crop_padding < 0:
        problem = f"crop padding must be 0 or positive, got {data.augmentation.crop_padding}"
    if problem is not None:
        raise PluginError(f"the dataset plugin returned malformed data: {problem}.")


def smoke_data(spec: DataSpec, batches: int, batch_size: int, seed: int) -> ImageData:
    """Random uint8 images and labels shaped like `spec`, `batches * batch_size` per split (for --smoke).

    Crop (padding H // 8) and flip are on, so a smoke run exercises the same feeder path as real data.
    """
    n = batches * batch_size
    g = torch.Generator().manual_seed(seed)
    channels, height = spec.input_shape[0], spec.input_shape[1]

    def images() -> torch.Tensor:
        return torch.randint(0, 256, (n, *spec.input_shape), generator=g, dtype=torch.uint8)

    def labels() -> torch.Tensor:
        return torch.randint(0, spec.num_classes, (n,), generator=g)

    train_x, train_y, test_x, test_y = images(), labels(), images(), labels()
    return ImageData(train_x, train_y, test_x, test_y, spec.num_classes, (0.5,) * channels,
                     (0.289,) * channels, Augmentation(max(1, height // 8), True))
