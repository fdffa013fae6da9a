"""MNIST and FashionMNIST: the IDX files torchvision downloads, read with torchvision's readers.

The IDX files are already uint8 arrays (torchvision maps them straight to tensors), so unlike the JPEG and
HDF5 datasets there is nothing to decode and no second cache. The reference code's preprocessing:
normalise with mean 0.5 and std 0.5, no augmentation (a flipped or shifted glyph is another glyph).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from pccore.plugin import DatasetUnavailable, DataSpec, ImageData
from pccore_plugins.dataset_cache import DOWNLOAD_OFF, data_root, require_memory

MNIST_MEAN = (0.5,)
MNIST_STD = (0.5,)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
"""The four files torchvision extracts into <root>/<MNIST|FashionMNIST>/raw."""
IMAGES, SIDE = 70_000, 28


@attrs.define(frozen=True)
class MnistParams:
    root: str = "data"
    download: bool = True


class _Mnist:
    """A 28x28 greyscale dataset in torchvision's MNIST layout, as uint8 [N, 1, 28, 28] tensors."""

    title: str
    reader_name: str
    """The torchvision.datasets class that reads (and downloads) this dataset's files."""

    def __init__(self, params: MnistParams):
        self.params = params

    def spec(self) -> DataSpec:
        return DataSpec((1, SIDE, SIDE), 10)

    def load(self) -> ImageData:
        import torchvision.datasets

        reader = getattr(torchvision.datasets, self.reader_name)
        root = data_root(self.params.root)
        raw = root.absolute() / self.reader_name / "raw"
        require_memory(self.title, f"its {IMAGES:,} images", IMAGES * (SIDE * SIDE + 8),
                       "free some memory or use a machine with more.")
        try:
            train = reader(str(root), train=True, download=self.params.download)
            test = reader(str(root), train=False, download=False)
        except Exception as err:  # torchvision raises RuntimeError, AssertionError, URLError, OSError...
            missing = [name for name in IDX_FILES if not (raw / name).is_file()]
            if missing:
                raise self._unavailable(reader, raw, missing, err) from err
            raise self._broken(raw, f"torchvision could not read its IDX files ({_one_line(err)})") from err
        splits = [(train.data, train.targets, "train"), (test.data, test.targets, "t10k")]
        for images, labels, name in splits:
            if images.dim() != 3 or tuple(images.shape[1:]) != (SIDE, SIDE) or len(images) != len(labels):
                raise self._broken(raw, f"{name}-images-idx3-ubyte holds images of shape {tuple(images.shape)} "
                                        f"and {name}-labels-idx1-ubyte {len(labels)} labels; expected "
                                        f"[N, {SIDE}, {SIDE}] images and N labels")
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
                raise self._broken(raw, f"{name}-labels-idx1-ubyte holds labels outside 0..9")
        return ImageData(train.data.unsqueeze(1).contiguous(), train.targets.to(torch.int64),
                         test.data.unsqueeze(1).contiguous(), test.targets.to(torch.int64),
                         10, MNIST_MEAN, MNIST_STD)

    def _unavailable(self, reader: type, raw: Path, missing: list[str], err: Exception) -> DatasetUnavailable:
        attempt = ("the download failed" if self.params.download
                   else DOWNLOAD_OFF)
        return DatasetUnavailable(
            f"{self.title} is not available: looked in {raw} (under data.root = {str(self.params.root)!r}) and "
            f"found no {', '.join(missing)}, and {attempt} ({_one_line(err)}). To obtain it, set "
            f"`data.download = true` on a machine with network access, or download the four .gz files "
            f"({', '.join(name for name, _ in reader.resources)}) from {' or '.join(reader.mirrors)} yourself "
            f"and decompress them into {raw}."
        )

    def _broken(self, raw: Path, what: str) -> DatasetUnavailable:
        return DatasetUnavailable(
            f"{self.title} in {raw} is incomplete or corrupted: {what}. Delete the folder and set "
            f"`data.download = true` (with network access) to download it again."
        )


class Mnist(_Mnist):
    """MNIST: 60,000 + 10,000 handwritten digits, 28x28 grey, 10 classes, mean 0.5, std 0.5."""

    title = "MNIST"
    reader_name = "MNIST"


class FashionMnist(_Mnist):
    """FashionMNIST: 60,000 + 10,000 clothing images, 28x28 grey, 10 classes, mean 0.5, std 0.5."""

    title = "FashionMNIST"
    reader_name = "FashionMNIST"


def _one_line(err: Exception) -> str:
    """`Type: message` with the message's line breaks (torchvision lists every mirror it tried) as spaces."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"
