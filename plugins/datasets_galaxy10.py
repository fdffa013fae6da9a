"""Galaxy10 DECaLS: 17,736 galaxy images (256x256 RGB) in 10 morphology classes, one public HDF5 file.

Reading the HDF5 file needs h5py, the optional extra `pccore[galaxy]`; the decoded uint8 cache next to the
file does not, so a machine that has the cache trains without h5py.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import attrs
import numpy as np
import torch

from pccore.plugin import Augmentation, DatasetUnavailable, DataSpec, ImageData, MissingDependency
from pccore_plugins.dataset_cache import (
    DOWNLOAD_OFF,
    Uint8Cache,
    data_root,
    decode_parallel,
    load_cached,
    require_memory,
)

log = logging.getLogger(__name__)

GALAXY10_URL = "https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5"
GALAXY10_SHA256 = "19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571"
"""As astroNN (the dataset's own loader) checks it."""
GALAXY10_FILE = "Galaxy10_DECals.h5"
GALAXY10_TEST_FRACTION = 0.1
GALAXY10_EXTRA = 'pip install "pccore[galaxy]"'
CHUNK = 64
"""Images read from the HDF5 file at a time."""


@attrs.define(frozen=True)
class Galaxy10Params:
    root: str = "data"
    download: bool = True
    size: int = attrs.field(default=256, validator=attrs.validators.gt(0))
    augment: bool = True
    cache: bool = True
    split_seed: int = 42


class Galaxy10:
    """Galaxy10 DECaLS from `<root>/Galaxy10_DECals.h5` (downloaded from Zenodo, SHA-256 checked): the
    reference's split, scikit-learn's `train_test_split(test_size=0.1, random_state=split_seed)` (not
    stratified; 15,962 training and 1,774 test images), at `size` (256, the native size; another size is a
    bilinear resize). Normalised with the training images' per-channel mean and std; `augment` flips
    horizontally (a mirrored galaxy keeps its class). Decoded once into
    `<root>/Galaxy10_DECals.pccore_cache_s<size>_seed<split_seed>_v1.npz`."""

    title = "Galaxy10 DECaLS"

    def __init__(self, params: Galaxy10Params):
        self.params = params
        self.root = Path(params.root).expanduser()
        self.file = self.root / GALAXY10_FILE
        name = f"Galaxy10_DECals.pccore_cache_s{params.size}_seed{params.split_seed}_v1.npz"
        self.cache_path = self.root / name

    def spec(self) -> DataSpec:
        return DataSpec((3, self.params.size, self.params.size), 10)

    def load(self) -> ImageData:
        data_root(self.params.root)
        p = self.params
        cache = Uint8Cache(self.cache_path, self.title, extra=("mean", "std")) if p.cache else None
        settings = f"galaxy10 size={p.size} test=0.1 seed={p.split_seed} v1"
        arrays = load_cached(cache, settings, self._source, self._decode, self.title, self._advice())
        augmentation = Augmentation(0, True) if p.augment else Augmentation()
        return ImageData(*(torch.from_numpy(arrays[name]) for name in
                           ("train_images", "train_labels", "test_images", "test_labels")),
                         10, tuple(arrays["mean"].tolist()), tuple(arrays["std"].tolist()), augmentation)

    def _source(self) -> str | None:
        return f"{GALAXY10_FILE}:{self.file.stat().st_size}" if self.file.is_file() else None

    def _advice(self) -> str:
        return "choose a smaller size (data.size = 128 takes a quarter), or use a machine with more memory."

    # The file, its download and the errors that say how to get it.

    def _ensure_file(self) -> None:
        if self.file.is_file():
            return
        if not self.params.download:
            raise self._unavailable(DOWNLOAD_OFF)
        from torchvision.datasets import utils as tv_utils

        partial = self.root / (GALAXY10_FILE + ".part")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tv_utils.download_url(GALAXY10_URL, str(self.root), filename=partial.name)
        except Exception as err:  # URLError, OSError, RuntimeError...
            partial.unlink(missing_ok=True)
            raise self._unavailable(f"the download failed ({type(err).__name__}: {err})") from err
        digest = _sha256(partial)
        if digest != GALAXY10_SHA256:
            partial.unlink()
            raise self._unavailable(f"the downloaded file's SHA-256 was {digest}, not {GALAXY10_SHA256}, so it "
                                    "was deleted")
        partial.replace(self.file)

    def _unavailable(self, reason: str) -> DatasetUnavailable:
        return DatasetUnavailable(
            f"Galaxy10 DECaLS is not available: looked for {self.file.absolute()} (under data.root = "
            f"{str(self.params.root)!r}) and found no such file, and {reason}. To obtain it, set "
            f"`data.download = true` on a machine with network access, or download {GALAXY10_URL} (2.7 GB, "
            f"SHA-256 {GALAXY10_SHA256}) yourself and put it at {self.file.absolute()}."
        )

    def _broken(self, what: str) -> DatasetUnavailable:
        return DatasetUnavailable(
            f"Galaxy10 DECaLS in {self.file.absolute()} is incomplete or corrupted: {what}. Delete the file "
            f"and set `data.download = true` (with network access), or download {GALAXY10_URL} (SHA-256 "
            f"{GALAXY10_SHA256}) again."
        )

    # Decoding.

    def _decode(self) -> dict[str, np.ndarray]:
        self._ensure_file()
        h5py = _h5py(self.file)
        try:
            with h5py.File(self.file, "r") as f:
                images, labels = self._datasets(f)
                labels = np.asarray(labels[:], dtype=np.int64)
                return self._split(images, labels)
        except OSError as err:  # not HDF5, truncated, unreadable chunks
            raise self._broken(f"h5py cannot read it ({type(err).__name__}: {err})") from err

    def _datasets(self, f):
        missing = [key for key in ("images", "ans") if key not in f]
        if missing:
            raise self._broken(f"it has no dataset {' or '.join(missing)} (it holds {', '.join(sorted(f))})")
        images, labels = f["images"], f["ans"]
        if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
            raise self._broken(f"'images' is {images.dtype} of shape {images.shape}, not N x S x S x 3 uint8")
        if labels.shape != (images.shape[0],):
            raise self._broken(f"'ans' has shape {labels.shape} for {images.shape[0]} images")
        return images, labels

    def _split(self, images, labels: np.ndarray) -> dict[str, np.ndarray]:
        from sklearn.model_selection import train_test_split

        if len(labels) and not 0 <= labels.min() <= labels.max() <= 9:
            raise self._broken(f"'ans' holds labels {labels.min()}..{labels.max()}, not 0..9")
        count, size = len(labels), self.params.size
        if count < 2:
            raise self._broken(f"it holds {count} image(s), too few for a train/test split")
        require_memory(self.title, f"its {count:,} images at {size}x{size}", count * (3 * size * size + 8),
                       self._advice())
        train_idx, test_idx = train_test_split(np.arange(count), test_size=GALAXY10_TEST_FRACTION,
                                               random_state=self.params.split_seed)
        train = np.empty((len(train_idx), 3, size, size), dtype=np.uint8)
        test = np.empty((len(test_idx), 3, size, size), dtype=np.uint8)
        # Where each image of the file goes: its split and its position there.
        is_test = np.zeros(count, dtype=bool)
        is_test[test_idx] = True
        position = np.empty(count, dtype=np.int64)
        position[train_idx] = np.arange(len(train_idx))
        position[test_idx] = np.arange(len(test_idx))
        log.info("decoding %d Galaxy10 DECaLS images (once; cached in %s)", count, self.cache_path)

        def decode_range(start: int, stop: int) -> None:
            chunk = _resized(images[start:stop], size).transpose(0, 3, 1, 2)
            where = slice(start, stop)
            test[position[where][is_test[where]]] = chunk[is_test[where]]
            train[position[where][~is_test[where]]] = chunk[~is_test[where]]

        decode_parallel(count, decode_range, chunk=CHUNK)
        mean, std = _channel_statistics(train)
        return {"train_images": train, "train_labels": labels[train_idx], "test_images": test,
                "test_labels": labels[test_idx], "mean": mean, "std": std}


def _h5py(path: Path):
    """The h5py module, or MissingDependency naming the extra that installs it."""
    try:
        import h5py
    except ImportError as err:
        raise MissingDependency(
            f"reading Galaxy10 DECaLS ({path}, an HDF5 file) needs h5py, which is not installed here ({err}); "
            f"install it with {GALAXY10_EXTRA} (or pip install h5py) and run the command again"
        ) from None
    return h5py


def _resized(chunk: np.ndarray, size: int) -> np.ndarray:
    """[n, S, S, 3] uint8 images at `size` x `size` (bilinear, as PIL resizes), unchanged when S == size."""
    if chunk.shape[1] == size:
        return chunk
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
                     for image in chunk])


def _channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 [N, C, H, W] images on the [0, 1] scale, exact (from
    histograms of the 256 values, a few images at a time, so no float copy of the whole set is made)."""
    channels = images.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), CHUNK):
        part = images[start:start + CHUNK]
        for c in range(channels):
            counts[c] += np.bincount(part[:, c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum(axis=1)
    mean = counts @ values / n
    var = counts @ values**2 / n - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
