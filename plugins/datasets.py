"""Built-in datasets: synthetic, scikit-learn digits, CIFAR-10/100 and Tiny ImageNet.

Every dataset loads whole into memory as tensors (`pccore.core.components.ImageData`); the core's batch
feeder normalises and augments on the device. Heavy imports (torchvision, scikit-learn, PIL) happen in
`load()`, so listing plugins stays fast.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch

from pccore.plugin import Augmentation, Component, DatasetUnavailable, DataSpec, ImageData, UsageError, hookimpl
from pccore_plugins.dataset_cache import (
    DOWNLOAD_OFF,
    JPEG_SUFFIXES,
    atomic_write,
    data_root,
    decode_parallel,
    fetch_archive,
)

log = logging.getLogger(__name__)

_positive = attrs.validators.gt(0)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
TINY_MEAN = (0.485, 0.456, 0.406)
TINY_STD = (0.229, 0.224, 0.225)

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_FOLDER = "tiny-imagenet-200"
TINY_CACHE = "pccore_cache_v1.npz"
TINY_SIZE = 64


# --- synthetic -----------------------------------------------------------------------------------


@attrs.define(frozen=True)
class SyntheticParams:
    channels: int = attrs.field(default=3, validator=_positive)
    size: int = attrs.field(default=32, validator=_positive)
    classes: int = attrs.field(default=10, validator=_positive)
    train_size: int = attrs.field(default=512, validator=_positive)
    test_size: int = attrs.field(default=256, validator=_positive)
    seed: int = 0


class Synthetic:
    """Random float images with random labels, deterministic from `seed`, for tests and offline runs.

    Each image is `0.5 * prototype[label] + sqrt(0.75) * noise` with standard-normal prototypes and
    noise, so the pixels have mean 0 and variance 1 (hence mean 0 / std 1) and the labels are learnable.
    """

    def __init__(self, params: SyntheticParams):
        self.params = params

    def spec(self) -> DataSpec:
        p = self.params
        return DataSpec((p.channels, p.size, p.size), p.classes)

    def load(self) -> ImageData:
        p = self.params
        shape = (p.channels, p.size, p.size)
        g = torch.Generator().manual_seed(p.seed)
        prototypes = torch.randn((p.classes, *shape), generator=g)

        def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(0, p.classes, (n,), generator=g)
            noise = torch.randn((n, *shape), generator=g)
            return 0.5 * prototypes[labels] + 0.75**0.5 * noise, labels

        train_x, train_y = split(p.train_size)
        test_x, test_y = split(p.test_size)
        return ImageData(train_x, train_y, test_x, test_y, p.classes,
                         (0.0,) * p.channels, (1.0,) * p.channels)


# --- scikit-learn digits -------------------------------------------------------------------------


@attrs.define(frozen=True)
class DigitsParams:
    size: int = attrs.field(default=32, validator=_positive)
    channels: int = attrs.field(default=3, validator=_positive)
    test_fraction: float = attrs.field(default=0.2, validator=[attrs.validators.gt(0.0),
                                                               attrs.validators.lt(1.0)])
    split_seed: int = 0


class Digits:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, offline), resized bilinearly to
    `size`, grey replicated over `channels`, with a fixed stratified train/test split.

    Pixels are scaled from 0..16 to [0, 1]; mean and std come from the training images. No augmentation:
    a flipped digit is a different glyph.
    """

    def __init__(self, params: DigitsParams):
        self.params = params

    def spec(self) -> DataSpec:
        p = self.params
        return DataSpec((p.channels, p.size, p.size), 10)

    def load(self) -> ImageData:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        p = self.params
        bunch = load_digits()
        _check_split(len(bunch.target), p.test_fraction, 10)
        images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if p.size != images.shape[-1]:
            images = torch.nn.functional.interpolate(images, size=(p.size, p.size), mode="bilinear",
                                                     align_corners=False)
        images = images.expand(-1, p.channels, -1, -1).contiguous()
        labels = torch.as_tensor(bunch.target, dtype=torch.int64)
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=p.test_fraction,
                                               stratify=bunch.target, random_state=p.split_seed)
        train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
        train_x = images[train_idx]
        per_channel = train_x.transpose(0, 1).reshape(p.channels, -1).double()
        mean = tuple(per_channel.mean(dim=1).tolist())
        std = tuple(per_channel.std(dim=1, correction=0).tolist())
        return ImageData(train_x, labels[train_idx], images[test_idx], labels[test_idx], 10, mean, std)


def _check_split(samples: int, test_fraction: float, classes: int) -> None:
    """A stratified split needs an image of every class on both sides (scikit-learn rounds the test part
    up): UsageError naming the sizes when `test_fraction` leaves fewer."""
    test = math.ceil(samples * test_fraction)
    train = samples - test
    if min(test, train) < classes:
        raise UsageError(
            f"data.test_fraction = {test_fraction} splits the {samples} images into {train} for training and "
            f"{test} for testing; a stratified split needs at least one image of each of the {classes} "
            f"classes on both sides (a fraction between {classes / samples:.4f} and {1 - classes / samples:.4f})"
        )


# --- CIFAR ---------------------------------------------------------------------------------------


@attrs.define(frozen=True)
class CifarParams:
    root: str = "data"
    download: bool = True
    augment: bool = True


class _Cifar:
    """CIFAR through torchvision's reader, returned as uint8 [N, 3, 32, 32] tensors."""

    title: str
    reader_name: str
    """The torchvision.datasets class that reads this dataset's files."""
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(self, params: CifarParams):
        self.params = params

    def spec(self) -> DataSpec:
        return DataSpec((3, 32, 32), self.classes)

    def load(self) -> ImageData:
        import torchvision.datasets

        reader = getattr(torchvision.datasets, self.reader_name)
        root = data_root(self.params.root)
        try:
            train = reader(str(root), train=True, download=self.params.download)
            test = reader(str(root), train=False, download=False)
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, pickle errors...
            raise self._unavailable(reader, root, err) from err
        augmentation = Augmentation(4, True) if self.params.augment else Augmentation()
        return ImageData(_nhwc_to_nchw(train.data), torch.as_tensor(train.targets, dtype=torch.int64),
                         _nhwc_to_nchw(test.data), torch.as_tensor(test.targets, dtype=torch.int64),
                         self.classes, self.mean, self.std, augmentation)

    def _unavailable(self, reader: type, root: Path, err: Exception) -> DatasetUnavailable:
        folder = root.absolute() / reader.base_folder
        attempt = ("the download failed" if self.params.download
                   else DOWNLOAD_OFF)
        return DatasetUnavailable(
            f"{self.title} is not available: looked for the folder {folder} (the extracted "
            f"{reader.filename}, under data.root = {str(self.params.root)!r}) and found it missing or "
            f"incomplete, and {attempt} ({type(err).__name__}: {err}). To obtain it, set "
            f"`data.download = true` on a machine with network access, or download {reader.url} "
            f"yourself and extract it under {root.absolute()}, so that {folder} holds its files."
        )


class Cifar10(_Cifar):
    """CIFAR-10: 50,000 + 10,000 images, 10 classes; crop 32 pad 4 and flip when `augment`."""

    title = "CIFAR-10"
    reader_name = "CIFAR10"
    classes = 10
    mean = CIFAR10_MEAN
    std = CIFAR10_STD


class Cifar100(_Cifar):
    """CIFAR-100: 50,000 + 10,000 images, 100 fine classes; crop 32 pad 4 and flip when `augment`."""

    title = "CIFAR-100"
    reader_name = "CIFAR100"
    classes = 100
    mean = CIFAR100_MEAN
    std = CIFAR100_STD


def _nhwc_to_nchw(array: np.ndarray) -> torch.Tensor:
    """An [N, H, W, C] uint8 array as a contiguous [N, C, H, W] tensor."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


# --- Tiny ImageNet -------------------------------------------------------------------------------


@attrs.define(frozen=True)
class TinyImageNetParams:
    root: str = "data"
    download: bool = True
    augment: bool = True
    cache: bool = True


class TinyImageNet:
    """Tiny ImageNet (200 classes, 64x64): 100,000 training images, the 10,000 validation images as the
    test set. Class order is the line order of wnids.txt.

    The JPEGs are decoded once, in parallel, and the arrays cached in
    `<root>/tiny-imagenet-200/pccore_cache_v1.npz`, so later runs load in seconds.
    """

    def __init__(self, params: TinyImageNetParams):
        self.params = params
        self.root = Path(params.root).expanduser()
        self.folder = self.root / TINY_FOLDER
        self.cache_path = self.folder / TINY_CACHE

    def spec(self) -> DataSpec:
        return DataSpec((3, TINY_SIZE, TINY_SIZE), 200)

    def load(self) -> ImageData:
        data_root(self.params.root)
        arrays = self._read_cache() if self.params.cache else None
        if arrays is None:
            self._ensure_tree()
            arrays = self._decode_tree()
            if self.params.cache:
                self._write_cache(arrays)
        wnids = arrays["wnids"]
        augmentation = Augmentation(8, True) if self.params.augment else Augmentation()
        return ImageData(torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"]),
                         torch.from_numpy(arrays["test_images"]), torch.from_numpy(arrays["test_labels"]),
                         len(wnids), TINY_MEAN, TINY_STD, augmentation)

    # The official tree, its download, and the errors that say how to get it.

    def _ensure_tree(self) -> None:
        fetch_archive(lambda: (self.folder / "wnids.txt").is_file(), self.params.download, TINY_URL, TINY_MD5,
                      self.root, f"{TINY_FOLDER}/wnids.txt", self._unavailable)

    def _unavailable(self, reason: str) -> DatasetUnavailable:
        folder = self.folder.absolute()
        return DatasetUnavailable(
            f"Tiny ImageNet is not available: looked for the folder {folder} (with wnids.txt, train/ and "
            f"val/, under data.root = {str(self.params.root)!r}) and found no {folder / 'wnids.txt'}, "
            f"and {reason}. To obtain it, set `data.download = true` on a machine with network access, "
            f"or download {TINY_URL} (md5 {TINY_MD5}) yourself and extract it under "
            f"{self.root.absolute()}, so that {folder / 'wnids.txt'} exists."
        )

    def _broken(self, what: str) -> DatasetUnavailable:
        return DatasetUnavailable(
            f"Tiny ImageNet in {self.folder.absolute()} is incomplete or corrupted: {what}. Delete the "
            f"folder and set `data.download = true` (with network access), or extract {TINY_URL} "
            f"(md5 {TINY_MD5}) again under {self.root.absolute()}."
        )

    # Decoding.

    def _decode_tree(self) -> dict[str, np.ndarray]:
        wnids = [line.strip() for line in (self.folder / "wnids.txt").read_text().splitlines()
                 if line.strip()]
        index = {wnid: i for i, wnid in enumerate(wnids)}
        train_paths: list[Path] = []
        train_labels: list[int] = []
        for wnid in wnids:
            images = self.folder / "train" / wnid / "images"
            files = _jpegs(images)
            if not files:
                raise self._broken(f"no training images in {images}")
            train_paths += files
            train_labels += [index[wnid]] * len(files)
        test_paths, test_labels = self._validation(index)
        log.info("decoding %d Tiny ImageNet JPEGs (once; cached in %s)",
                 len(train_paths) + len(test_paths), self.cache_path)
        return {
            "wnids": np.array(wnids),
            "train_images": self._decode(train_paths),
            "train_labels": np.array(train_labels, dtype=np.int64),
            "test_images": self._decode(test_paths),
            "test_labels": np.array(test_labels, dtype=np.int64),
        }

    def _validation(self, index: dict[str, int]) -> tuple[list[Path], list[int]]:
        annotations = self.folder / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise self._broken(f"{annotations} is missing")
        paths, labels = [], []
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise self._broken(f"line {number} of {annotations} does not name a file and a class "
                                   f"listed in wnids.txt: {line!r}")
            paths.append(self.folder / "val" / "images" / fields[0])
            labels.append(index[fields[1]])
        if not paths:
            raise self._broken(f"{annotations} lists no images")
        return paths, labels

    def _decode(self, paths: Sequence[Path]) -> np.ndarray:
        """Decode JPEGs into uint8 [N, 3, 64, 64] with a thread pool (PIL releases the GIL)."""
        out = np.empty((len(paths), TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
        chunk = 512
        decode_parallel(len(paths), lambda start, stop: self._decode_range(paths, out, start, stop), chunk)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def _decode_range(self, paths: Sequence[Path], out: np.ndarray, start: int, stop: int) -> None:
        from PIL import Image

        for i in range(start, stop):
            try:
                with Image.open(paths[i]) as image:
                    rgb = image.convert("RGB")
            except (OSError, ValueError) as err:
                raise self._broken(f"cannot read {paths[i]} ({type(err).__name__}: {err})") from err
            if rgb.size != (TINY_SIZE, TINY_SIZE):
                rgb = rgb.resize((TINY_SIZE, TINY_SIZE), Image.Resampling.BILINEAR)
            out[i] = np.asarray(rgb)

    # The cache.

    def _read_cache(self) -> dict[str, np.ndarray] | None:
        """The cached arrays, or None when there is no usable cache (missing, stale or damaged)."""
        if not self.cache_path.is_file():
            return None
        try:
            with np.load(self.cache_path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in
                          ("wnids", "train_images", "train_labels", "test_images", "test_labels")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            log.warning("ignoring the unreadable Tiny ImageNet cache %s: %s", self.cache_path, err)
            return None
        wnids_file = self.folder / "wnids.txt"
        if wnids_file.is_file() and wnids_file.read_text().split() != arrays["wnids"].tolist():
            log.warning("ignoring the stale Tiny ImageNet cache %s: wnids.txt changed", self.cache_path)
            return None
        shape = (3, TINY_SIZE, TINY_SIZE)
        if (arrays["train_images"].shape[1:] != shape or arrays["test_images"].shape[1:] != shape
                or len(arrays["train_images"]) != len(arrays["train_labels"])
                or len(arrays["test_images"]) != len(arrays["test_labels"])):
            log.warning("ignoring the malformed Tiny ImageNet cache %s", self.cache_path)
            return None
        return arrays

    def _write_cache(self, arrays: dict[str, np.ndarray]) -> None:
        """Write the cache atomically (a temporary file renamed into place); failure only costs speed."""
        atomic_write(self.cache_path, lambda f: np.savez(f, **arrays))


def _jpegs(folder: Path) -> list[Path]:
    """The JPEG files in `folder`, sorted by name (empty when the folder does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in JPEG_SUFFIXES)


@hookimpl
def pccore_register_dataset():
    return [
        Component("synthetic", Synthetic, SyntheticParams,
                  "random images with learnable random labels, deterministic from a seed (offline)"),
        Component("digits", Digits, DigitsParams,
                  "scikit-learn's 8x8 handwritten digits, resized, stratified split (offline)"),
        Component("cifar10", Cifar10, CifarParams, "CIFAR-10 via torchvision, 32x32, 10 classes", label="CIFAR-10"),
        Component("cifar100", Cifar100, CifarParams, "CIFAR-100 via torchvision, 32x32, 100 classes",
                  label="CIFAR-100"),
        Component("tinyimagenet", TinyImageNet, TinyImageNetParams,
                  "Tiny ImageNet, 64x64, 200 classes, validation set as test set, decoded once and cached",
                  label="Tiny ImageNet"),
    ]
