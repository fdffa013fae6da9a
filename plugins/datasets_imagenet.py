"""ImageNet-derived datasets of the reference code: ImageNet32's pickled batches, and ImageNette and
ImageNet-10 as ImageFolder trees of JPEGs.

Each is decoded once into a uint8 cache next to its files (`pccore_plugins.dataset_cache`) and normalised
with the ImageNet mean and std. The reference code draws a random resized crop of every training JPEG each
epoch; pccore's feeder serves a dataset decoded once, so both splits are decoded with the reference's test
transform (center crop 224, then resize) and training is augmented on the device with a random crop after
zero padding of size / 8 and horizontal flips.
"""

from __future__ import annotations

import abc
import logging
import pickle
from pathlib import Path

import attrs
import numpy as np
import torch

from pccore.plugin import Augmentation, DatasetUnavailable, DataSpec, ImageData
from pccore_plugins.dataset_cache import (
    JPEG_SUFFIXES,
    Uint8Cache,
    data_root,
    decode_parallel,
    fetch_archive,
    load_cached,
    require_memory,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CENTER_CROP = 224
"""The reference's test transform: the central 224x224 pixels, then a resize to the dataset's size."""


def _augmentation(augment: bool, size: int) -> Augmentation:
    return Augmentation(size // 8, True) if augment else Augmentation()


# --- ImageNet32 ----------------------------------------------------------------------------------

IMAGENET32_FOLDER = "imagenet32"
IMAGENET32_TRAIN = tuple(f"train_data_batch_{i}" for i in range(1, 11))
IMAGENET32_TEST = "val_data"
IMAGENET32_PAGE = "https://image-net.org/download-images.php"
ROW = 3 * 32 * 32


@attrs.define(frozen=True)
class ImageNet32Params:
    root: str = "data"
    augment: bool = True
    cache: bool = True


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and plain values only: a batch file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    """NumPy's array reconstruction, and `_codecs.encode`, with which protocol 2 stores bytes."""

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"the file refers to {module}.{name}, which an ImageNet32 batch never does")
        return super().find_class(module, name)


class ImageNet32:
    """ImageNet32 (downsampled ImageNet, Chrabaszcz et al. 2017): 1,281,167 training images in
    `train_data_batch_1..10` and the 50,000 validation images of `val_data` as the test set, 32x32, 1000
    classes. The user places the files (they need an ImageNet account); they are read once into the cache
    `<root>/imagenet32/pccore_cache_v1.npz`."""

    title = "ImageNet32"

    def __init__(self, params: ImageNet32Params):
        self.params = params
        self.folder = Path(params.root).expanduser() / IMAGENET32_FOLDER

    def spec(self) -> DataSpec:
        return DataSpec((3, 32, 32), 1000)

    def load(self) -> ImageData:
        data_root(self.params.root)
        cache = Uint8Cache(self.folder / "pccore_cache_v1.npz", self.title) if self.params.cache else None
        arrays = load_cached(cache, "imagenet32 v1", self._source, self._decode, self.title, self._advice())
        return ImageData(*(torch.from_numpy(arrays[name]) for name in
                           ("train_images", "train_labels", "test_images", "test_labels")),
                         1000, IMAGENET_MEAN, IMAGENET_STD, _augmentation(self.params.augment, 32))

    def _files(self) -> list[Path]:
        return [self.folder / name for name in (*IMAGENET32_TRAIN, IMAGENET32_TEST)]

    def _source(self) -> str | None:
        """Names and sizes of the batch files, or None when any is missing."""
        files = self._files()
        if not all(f.is_file() for f in files):
            return None
        return ";".join(f"{f.name}:{f.stat().st_size}" for f in files)

    def _advice(self) -> str:
        return "free some memory or use a machine with more (ImageNet32 takes 4.09 GB decoded)."

    def _decode(self) -> dict[str, np.ndarray]:
        missing = [f.name for f in self._files() if not f.is_file()]
        if missing:
            raise self._unavailable(missing)
        train_files, test_file = self._files()[:-1], self._files()[-1]
        sizes = sum(f.stat().st_size for f in self._files())
        require_memory(self.title, "its images (about the size of its batch files)", sizes, self._advice())
        log.info("reading the %d ImageNet32 batch files (once; cached in %s)", len(self._files()), self.folder)
        train_images, train_labels = self._read(train_files)
        test_images, test_labels = self._read([test_file])
        return {"train_images": train_images, "train_labels": train_labels,
                "test_images": test_images, "test_labels": test_labels}

    def _read(self, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """The images [N, 3, 32, 32] and labels 0..999 of the batch files, in file order, with no second copy:
        the rows go straight into one buffer sized from the files (an upper bound), shrunk at the end."""
        capacity = sum(f.stat().st_size for f in files) // ROW
        images = np.empty((capacity, ROW), dtype=np.uint8)
        labels: list[np.ndarray] = []
        filled = 0
        for path in files:
            data, batch_labels = self._batch(path)
            images[filled:filled + len(data)] = data
            labels.append(batch_labels)
            filled += len(data)
        images.resize((filled, ROW), refcheck=False)
        return images.reshape(filled, 3, 32, 32), np.concatenate(labels)

    def _batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(path, "rb") as f:
                record = _ArrayUnpickler(f, encoding="latin1").load()
        except Exception as err:  # UnpicklingError, EOFError, ValueError... from a truncated or foreign file
            raise self._broken(f"cannot unpickle {path} ({type(err).__name__}: {err})") from err
        if not isinstance(record, dict) or "data" not in record or "labels" not in record:
            raise self._broken(f"{path} is not a dict with 'data' and 'labels'")
        data, labels = record["data"], np.asarray(record["labels"])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
            shape = getattr(data, "shape", None)
            raise self._broken(f"'data' in {path} is not an N x {ROW} uint8 array (got {type(data).__name__} "
                               f"of shape {shape})")
        if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
            raise self._broken(f"{path} has {len(data)} images but 'labels' of shape {labels.shape}")
        if len(labels) and not 1 <= labels.min() <= labels.max() <= 1000:
            raise self._broken(f"'labels' in {path} lie in {labels.min()}..{labels.max()}, not 1..1000")
        return data, labels.astype(np.int64) - 1

    def _unavailable(self, missing: list[str]) -> DatasetUnavailable:
        return DatasetUnavailable(
            f"ImageNet32 is not available: looked in {self.folder.absolute()} (under data.root = "
            f"{str(self.params.root)!r}) and found no {', '.join(missing)}. ImageNet32 cannot be downloaded "
            f"without an ImageNet account: sign in at {IMAGENET32_PAGE}, download Imagenet32_train.zip and "
            f"Imagenet32_val.zip (the pickled 32x32 batches, not the PNG version) and extract them so that "
            f"{self.folder.absolute()} holds train_data_batch_1 ... train_data_batch_10 and val_data."
        )

    def _broken(self, what: str) -> DatasetUnavailable:
        return DatasetUnavailable(
            f"ImageNet32 in {self.folder.absolute()} is incomplete or corrupted: {what}. Extract "
            f"Imagenet32_train.zip and Imagenet32_val.zip (from {IMAGENET32_PAGE}) there again."
        )


# --- ImageFolder trees: ImageNette and ImageNet-10 -----------------------------------------------

IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"
IMAGENETTE_MD5 = "fe2fc210e6bb7c5664d602c3cd71e612"
IMAGENETTE_FOLDER = "imagenette2"
IMAGENETTE_SIZE = 32
IMAGENET_FOLDER = "imagenet"


class _ImageFolder(abc.ABC):
    """A `train/` and `val/` tree of JPEGs, one folder per class (torchvision's ImageFolder layout), the
    classes in folder-name order; `val/` is the test set. Every JPEG is decoded once (RGB, center crop 224,
    bilinear resize to `size`) into `<folder>/<cache_name>`."""

    title: str
    folder: Path
    size: int
    cache_name: str

    def __init__(self, params):
        self.params = params

    def load(self) -> ImageData:
        data_root(self.params.root)
        cache = Uint8Cache(self.folder / self.cache_name, self.title) if self.params.cache else None
        settings = f"{self.title} crop={CENTER_CROP} size={self.size} v1"
        arrays = load_cached(cache, settings, self._source, self._decode, self.title, self._advice())
        return ImageData(*(torch.from_numpy(arrays[name]) for name in
                           ("train_images", "train_labels", "test_images", "test_labels")),
                         self.spec().num_classes, IMAGENET_MEAN, IMAGENET_STD,
                         _augmentation(self.params.augment, self.size))

    @abc.abstractmethod
    def spec(self) -> DataSpec:
        """Input shape and class count."""

    @abc.abstractmethod
    def _classes(self) -> list[str]:
        """The class folders this dataset uses, in label order (train/ exists when this is called)."""

    @abc.abstractmethod
    def _ensure_tree(self) -> None:
        """Make train/ and val/ exist (downloading where the source is public) or raise DatasetUnavailable."""

    @abc.abstractmethod
    def _advice(self) -> str:
        """What to do when the dataset does not fit in memory."""

    @abc.abstractmethod
    def _broken(self, what: str) -> DatasetUnavailable:
        """The error for a tree that is there but incomplete or unreadable (`what` says how)."""

    def _source(self) -> str | None:
        """The class folder names, or None when the tree is not on disk."""
        if not (self.folder / "train").is_dir():
            return None
        return ",".join(self._classes())

    def _decode(self) -> dict[str, np.ndarray]:
        self._ensure_tree()
        classes = self._classes()
        train_paths, train_labels = self._split("train", classes)
        test_paths, test_labels = self._split("val", classes)
        count = len(train_paths) + len(test_paths)
        image_bytes = 3 * self.size * self.size
        require_memory(self.title, f"its {count:,} images at {self.size}x{self.size}", count * (image_bytes + 8),
                       self._advice())
        log.info("decoding %d %s JPEGs (once; cached in %s)", count, self.title, self.folder / self.cache_name)
        return {"train_images": self._decode_jpegs(train_paths), "train_labels": np.array(train_labels, np.int64),
                "test_images": self._decode_jpegs(test_paths), "test_labels": np.array(test_labels, np.int64)}

    def _split(self, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            folder = self.folder / split / name
            if not folder.is_dir():
                raise self._broken(f"{split}/ has no folder {name} (every class of train/ needs one in {split}/)")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in JPEG_SUFFIXES)
            if not files:
                raise self._broken(f"no JPEGs in {folder}")
            paths += files
            labels += [label] * len(files)
        return paths, labels

    def _decode_jpegs(self, paths: list[Path]) -> np.ndarray:
        from PIL import Image
        from torchvision.transforms import functional as TF

        out = np.empty((len(paths), 3, self.size, self.size), dtype=np.uint8)

        def decode_range(start: int, stop: int) -> None:
            for i in range(start, stop):
                try:
                    with Image.open(paths[i]) as image:
                        rgb = image.convert("RGB")
                except (OSError, ValueError) as err:
                    raise self._broken(f"cannot read {paths[i]} ({type(err).__name__}: {err})") from err
                view = TF.resize(TF.center_crop(rgb, [CENTER_CROP, CENTER_CROP]), [self.size, self.size],
                                 interpolation=TF.InterpolationMode.BILINEAR)
                out[i] = np.asarray(view).transpose(2, 0, 1)

        decode_parallel(len(paths), decode_range)
        return out


@attrs.define(frozen=True)
class ImageNetteParams:
    root: str = "data"
    download: bool = True
    augment: bool = True
    cache: bool = True


class ImageNette(_ImageFolder):
    """ImageNette (fast.ai's `imagenette2`, 10 easy ImageNet classes): 9,469 training and 3,925 validation
    JPEGs, downloaded from fast.ai, decoded at 32x32 into `<root>/imagenette2/pccore_cache_s32_v1.npz`."""

    title = "ImageNette"
    size = IMAGENETTE_SIZE
    cache_name = f"pccore_cache_s{IMAGENETTE_SIZE}_v1.npz"

    def __init__(self, params: ImageNetteParams):
        super().__init__(params)
        self.root = Path(params.root).expanduser()
        self.folder = self.root / IMAGENETTE_FOLDER

    def spec(self) -> DataSpec:
        return DataSpec((3, self.size, self.size), 10)

    def _classes(self) -> list[str]:
        classes = sorted(p.name for p in (self.folder / "train").iterdir() if p.is_dir())
        if len(classes) != 10:
            raise self._broken(f"train/ holds {len(classes)} class folders, not imagenette2's 10")
        return classes

    def _ensure_tree(self) -> None:
        fetch_archive(lambda: (self.folder / "train").is_dir() and (self.folder / "val").is_dir(),
                      self.params.download, IMAGENETTE_URL, IMAGENETTE_MD5, self.root,
                      f"{IMAGENETTE_FOLDER}/train and /val", self._unavailable)

    def _advice(self) -> str:
        return "free some memory or use a machine with more."

    def _unavailable(self, reason: str) -> DatasetUnavailable:
        folder = self.folder.absolute()
        return DatasetUnavailable(
            f"ImageNette is not available: looked for the folders {folder / 'train'} and {folder / 'val'} "
            f"(under data.root = {str(self.params.root)!r}) and found them missing, and {reason}. To obtain it, "
            f"set `data.download = true` on a machine with network access, or download {IMAGENETTE_URL} "
            f"(md5 {IMAGENETTE_MD5}) yourself and extract it under {self.root.absolute()}, so that {folder} "
            f"holds train/ and val/."
        )

    def _broken(self, what: str) -> DatasetUnavailable:
        return DatasetUnavailable(
            f"ImageNette in {self.folder.absolute()} is incomplete or corrupted: {what}. Delete the folder and "
            f"set `data.download = true` (with network access), or extract {IMAGENETTE_URL} (md5 "
            f"{IMAGENETTE_MD5}) again under {self.root.absolute()}."
        )


@attrs.define(frozen=True)
class ImageNet10Params:
    root: str = "data"
    classes: int = attrs.field(default=10, validator=attrs.validators.gt(0))
    size: int = attrs.field(default=112, validator=attrs.validators.gt(0))
    augment: bool = True
    cache: bool = True


class ImageNet10(_ImageFolder):
    """ImageNet-10: the first `classes` classes (10), by folder name, of the user's ImageNet tree
    `<root>/imagenet/train/<wnid>/` and `val/<wnid>/`, decoded at `size` (112) into
    `<root>/imagenet/pccore_cache_imagenet<classes>_s<size>_v1.npz`. More classes make a larger subset;
    one that does not fit in memory is refused before decoding."""

    title = "ImageNet-10"

    def __init__(self, params: ImageNet10Params):
        super().__init__(params)
        self.folder = Path(params.root).expanduser() / IMAGENET_FOLDER
        self.size = params.size
        self.cache_name = f"pccore_cache_imagenet{params.classes}_s{params.size}_v1.npz"

    def spec(self) -> DataSpec:
        return DataSpec((3, self.size, self.size), self.params.classes)

    def _classes(self) -> list[str]:
        classes = sorted(p.name for p in (self.folder / "train").iterdir() if p.is_dir())
        if len(classes) < self.params.classes:
            raise self._broken(f"train/ holds {len(classes)} class folders, fewer than data.classes = "
                               f"{self.params.classes}")
        return classes[:self.params.classes]

    def _ensure_tree(self) -> None:
        if not (self.folder / "train").is_dir() or not (self.folder / "val").is_dir():
            raise self._unavailable()

    def _advice(self) -> str:
        return "choose fewer classes (data.classes) or a smaller size (data.size), or use a machine with more memory."

    def _unavailable(self) -> DatasetUnavailable:
        folder = self.folder.absolute()
        return DatasetUnavailable(
            f"ImageNet-10 is not available: looked for the folders {folder / 'train'} and {folder / 'val'} "
            f"(under data.root = {str(self.params.root)!r}) and found them missing. ImageNet cannot be "
            f"downloaded without an account: get ILSVRC2012 from https://image-net.org and place it so that "
            f"{folder / 'train'} holds one folder of JPEGs per class (n01440764, n01443537, ...) and "
            f"{folder / 'val'} the validation JPEGs sorted into the same class folders; ImageNet-10 uses the "
            f"first {self.params.classes} class folders by name."
        )

    def _broken(self, what: str) -> DatasetUnavailable:
        return DatasetUnavailable(
            f"The ImageNet tree in {self.folder.absolute()} is incomplete or corrupted for ImageNet-10: {what}. "
            f"train/ and val/ each need one folder of JPEGs per class (val/ sorted into the class folders of "
            f"train/)."
        )
