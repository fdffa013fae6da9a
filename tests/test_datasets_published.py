"""The published code's datasets (MNIST, FashionMNIST, ImageNet32, ImageNette, ImageNet-10, Galaxy10
DECaLS), on miniature files the tests write in each real on-disk format (no network): exact pixels and
labels, the uint8 cache, the memory check, and one clear message for every missing or broken input."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import struct
import sys
from importlib.metadata import entry_points
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.mnist
import torchvision.datasets.utils
from PIL import Image
from sklearn.model_selection import train_test_split
from torchvision import transforms

from pccore.plugin import Augmentation, Dataset, DatasetUnavailable, DataSpec, MissingDependency
from pccore_plugins import dataset_cache
from pccore_plugins import datasets_galaxy10 as dg
from pccore_plugins import datasets_imagenet as di
from pccore_plugins import datasets_mnist as dm
from pccore_plugins import datasets_published as dp
from tests.test_datasets import _write_py2
from tests.test_faults import error_line, run_cli
from tests.test_training import write_recipe

# --- registration --------------------------------------------------------------------------------


def test_entry_point_and_components():
    (ep,) = [ep for ep in entry_points(group="pccore") if ep.name == "published_datasets"]
    assert ep.value == "pccore_plugins.datasets_published"
    components = {c.name: c for c in dp.pccore_register_dataset()}
    assert sorted(components) == ["fashionmnist", "galaxy10", "imagenet10", "imagenet32", "imagenette", "mnist"]
    for component in components.values():
        assert component.description and component.label
        assert isinstance(component.factory(component.params()), Dataset)
    assert components["mnist"].params() == dm.MnistParams(root="data", download=True)
    assert components["imagenet32"].params() == di.ImageNet32Params("data", True, True)
    assert components["imagenette"].params() == di.ImageNetteParams("data", True, True, True)
    assert components["imagenet10"].params() == di.ImageNet10Params("data", 10, 112, True, True)
    assert components["galaxy10"].params() == dg.Galaxy10Params("data", True, 256, True, True, 42)


def test_specs_need_no_disk(tmp_path):
    missing = str(tmp_path / "nothing-here")
    assert dm.Mnist(dm.MnistParams(root=missing)).spec() == DataSpec((1, 28, 28), 10)
    assert dm.FashionMnist(dm.MnistParams(root=missing)).spec() == DataSpec((1, 28, 28), 10)
    assert di.ImageNet32(di.ImageNet32Params(root=missing)).spec() == DataSpec((3, 32, 32), 1000)
    assert di.ImageNette(di.ImageNetteParams(root=missing)).spec() == DataSpec((3, 32, 32), 10)
    assert di.ImageNet10(di.ImageNet10Params(root=missing)).spec() == DataSpec((3, 112, 112), 10)
    assert di.ImageNet10(di.ImageNet10Params(root=missing, classes=100, size=64)).spec() == DataSpec((3, 64, 64), 100)
    assert dg.Galaxy10(dg.Galaxy10Params(root=missing)).spec() == DataSpec((3, 256, 256), 10)
    assert dg.Galaxy10(dg.Galaxy10Params(root=missing, size=64)).spec() == DataSpec((3, 64, 64), 10)
    assert not (tmp_path / "nothing-here").exists()


# --- memory --------------------------------------------------------------------------------------


def test_available_memory_reads_memavailable(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         100 kB\nMemAvailable:    1234 kB\n")
    assert dataset_cache.available_memory(meminfo) == 1234 * 1024
    fallback = dataset_cache.available_memory(tmp_path / "absent")  # the system's free pages instead
    assert fallback is None or fallback > 0


def test_format_bytes():
    assert dataset_cache.format_bytes(4_089_345_024) == "4.09 GB"
    assert dataset_cache.format_bytes(54_880_000) == "54.88 MB"
    assert dataset_cache.format_bytes(1_500) == "1.50 kB"
    assert dataset_cache.format_bytes(12) == "12 bytes"


@pytest.fixture
def low_memory(monkeypatch):
    """This machine has 1000 bytes available."""
    monkeypatch.setattr(dataset_cache, "available_memory", lambda: 1000)


def test_require_memory_names_both_sizes(low_memory):
    dataset_cache.require_memory("X", "its images", 1000, "advice.")  # exactly fits
    with pytest.raises(DatasetUnavailable) as info:
        dataset_cache.require_memory("X", "its 2 images", 2_500_000, "choose fewer.")
    assert str(info.value) == (
        "X does not fit in memory: it needs 2.50 MB (2,500,000 bytes) for its 2 images, and only 1.00 kB "
        "(1,000 bytes) is available on this machine, so it was not loaded. Every dataset is held in memory "
        "whole; choose fewer."
    )


# --- MNIST and FashionMNIST: IDX files as torchvision downloads them ------------------------------


def _idx(path: Path, array: np.ndarray) -> None:
    """`array` (uint8) as an IDX file: magic 0x0000 08 <ndim>, big-endian sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def _make_mnist(root: Path, folder: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    raw = root / folder / "raw"
    train_x = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    train_y = np.array([3, 0, 9, 1, 1, 7], dtype=np.uint8)
    test_x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    test_y = np.array([2, 9, 0], dtype=np.uint8)
    for name, array in (("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y),
                        ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)):
        _idx(raw / name, array)
    return train_x, train_y, test_x, test_y


def _no_download(*args, **kwargs):
    raise AssertionError("the files are present: nothing may be downloaded")


@pytest.mark.parametrize("component, folder", [(dm.Mnist, "MNIST"), (dm.FashionMnist, "FashionMNIST")])
def test_mnist_round_trip(tmp_path, monkeypatch, component, folder):
    train_x, train_y, test_x, test_y = _make_mnist(tmp_path, folder, np.random.default_rng(0))
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", _no_download)
    for download in (False, True):
        data = component(dm.MnistParams(root=str(tmp_path), download=download)).load()
        assert data.train_images.shape == (6, 1, 28, 28) and data.test_images.shape == (3, 1, 28, 28)
        assert data.train_images.dtype == torch.uint8 and data.train_images.is_contiguous()
        np.testing.assert_array_equal(data.train_images[:, 0].numpy(), train_x)
        np.testing.assert_array_equal(data.test_images[:, 0].numpy(), test_x)
        assert data.train_labels.dtype == torch.int64
        assert data.train_labels.tolist() == train_y.tolist() and data.test_labels.tolist() == test_y.tolist()
        assert data.num_classes == 10 and data.mean == (0.5,) and data.std == (0.5,)
        assert data.augmentation == Augmentation()


def test_mnist_downloads_every_file_with_its_checksum(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename, md5):
        calls.append((url, md5))
        if len(calls) == 4:  # the last file: write the whole miniature set
            _make_mnist(tmp_path, "FashionMNIST", np.random.default_rng(1))

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", fake_download)
    data = dm.FashionMnist(dm.MnistParams(root=str(tmp_path))).load()
    assert data.train_images.shape == (6, 1, 28, 28)
    base = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert calls == [(base + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                     (base + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                     (base + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                     (base + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")]


def test_mnist_missing_without_download(tmp_path):
    with pytest.raises(DatasetUnavailable) as info:
        dm.Mnist(dm.MnistParams(root=str(tmp_path), download=False)).load()
    message = str(info.value)
    assert message.startswith(f"MNIST is not available: looked in {tmp_path / 'MNIST' / 'raw'} ")
    assert "found no train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, " in message
    assert "data.download = false" in message and "`data.download = true`" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/ or http://yann.lecun.com/exdb/mnist/" in message
    assert "\n" not in message


def test_mnist_download_failure_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailable) as info:
        dm.Mnist(dm.MnistParams(root=str(tmp_path))).load()
    message = str(info.value)
    assert "the download failed (RuntimeError: Error downloading train-images-idx3-ubyte.gz" in message
    assert "no network" in message and "\n" not in message


def test_mnist_truncated_or_mismatched_files(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", _no_download)
    _make_mnist(tmp_path, "MNIST", np.random.default_rng(2))
    raw = tmp_path / "MNIST" / "raw"
    params = dm.MnistParams(root=str(tmp_path))
    images = raw / "t10k-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-100])
    with pytest.raises(DatasetUnavailable, match=r"^MNIST in .*raw is incomplete or corrupted: torchvision could "
                                                 r"not read its IDX files \(RuntimeError: shape"):
        dm.Mnist(params).load()
    images.write_bytes(good)
    _idx(raw / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DatasetUnavailable, match=r"holds images of shape \(6, 28, 28\) and train-labels-idx1-ubyte "
                                                 r"5 labels"):
        dm.Mnist(params).load()
    _idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 10], np.uint8))
    with pytest.raises(DatasetUnavailable, match="train-labels-idx1-ubyte holds labels outside 0..9"):
        dm.Mnist(params).load()


# --- ImageNet32: pickled batches ------------------------------------------------------------------


def _make_imagenet32(root: Path, rng: np.random.Generator, py2: bool = False) -> tuple[np.ndarray, ...]:
    """train_data_batch_1..10 (2 images each, 1 in the last) and val_data (3), as the official files: a
    dict of `data` (N x 3072 uint8), `labels` (a list of 1..1000) and, in training batches, `mean`."""
    folder = root / "imagenet32"
    folder.mkdir(parents=True)
    train_x = rng.integers(0, 256, (19, 3, 32, 32), dtype=np.uint8)
    train_y = [1, 1000, *rng.integers(1, 1001, 17).tolist()]
    test_x = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    test_y = [500, 1, 1000]
    files = [(f"train_data_batch_{i + 1}", slice(2 * i, 2 * i + 2)) for i in range(10)]
    for name, part in files:
        _write_batch(folder / name, train_x[part], train_y[part], py2, mean=True)
    _write_batch(folder / "val_data", test_x, test_y, py2, mean=False)
    return train_x, np.array(train_y) - 1, test_x, np.array(test_y) - 1


def _write_batch(path: Path, images: np.ndarray, labels: list[int], py2: bool, mean: bool) -> None:
    record = {"data": images.reshape(len(images), 3072), "labels": labels}
    if mean:
        record["mean"] = np.full(3072, 127.5)
    if py2:
        _write_py2(path, record)
    else:
        path.write_bytes(pickle.dumps(record))


def _assert_imagenet32(data, expected) -> None:
    train_x, train_y, test_x, test_y = expected
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (19, 3, 32, 32)
    np.testing.assert_array_equal(data.train_images.numpy(), train_x)
    np.testing.assert_array_equal(data.test_images.numpy(), test_x)
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == train_y.tolist() and data.test_labels.tolist() == test_y.tolist()
    assert data.num_classes == 1000
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("py2", [False, True], ids=["python3-pickles", "python2-pickles"])
def test_imagenet32_reads_the_batches_then_the_cache(tmp_path, py2):
    expected = _make_imagenet32(tmp_path, np.random.default_rng(3), py2)
    params = di.ImageNet32Params(root=str(tmp_path))
    first = di.ImageNet32(params).load()
    _assert_imagenet32(first, expected)
    assert first.augmentation == Augmentation(crop_padding=4, horizontal_flip=True)
    folder = tmp_path / "imagenet32"
    assert (folder / "pccore_cache_v1.npz").is_file()
    for f in folder.glob("*_data*"):
        f.unlink()
    second = di.ImageNet32(di.ImageNet32Params(root=str(tmp_path), augment=False)).load()
    _assert_imagenet32(second, expected)
    assert second.augmentation == Augmentation()


def test_imagenet32_reads_numpy1_pickles(tmp_path):
    """Files pickled by NumPy 1 name numpy.core.multiarray (NumPy 2 calls it numpy._core.multiarray)."""
    expected = _make_imagenet32(tmp_path, np.random.default_rng(4))
    for f in (tmp_path / "imagenet32").iterdir():
        record = pickle.loads(f.read_bytes())
        text = pickle.dumps(record, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"cnumpy.core.multiarray\n" in text
        f.write_bytes(text)
    _assert_imagenet32(di.ImageNet32(di.ImageNet32Params(root=str(tmp_path), cache=False)).load(), expected)


def test_imagenet32_cache_goes_stale_when_a_batch_changes(tmp_path):
    _make_imagenet32(tmp_path, np.random.default_rng(5))
    di.ImageNet32(di.ImageNet32Params(root=str(tmp_path))).load()
    folder = tmp_path / "imagenet32"
    changed = np.full((4, 3, 32, 32), 9, dtype=np.uint8)
    _write_batch(folder / "val_data", changed, [7, 7, 7, 7], py2=False, mean=False)
    data = di.ImageNet32(di.ImageNet32Params(root=str(tmp_path))).load()
    assert data.test_labels.tolist() == [6, 6, 6, 6]
    np.testing.assert_array_equal(data.test_images.numpy(), changed)


def test_imagenet32_missing_files_name_each_and_where_they_go(tmp_path):
    _make_imagenet32(tmp_path, np.random.default_rng(6))
    folder = tmp_path / "imagenet32"
    (folder / "train_data_batch_7").unlink()
    (folder / "val_data").unlink()
    with pytest.raises(DatasetUnavailable) as info:
        di.ImageNet32(di.ImageNet32Params(root=str(tmp_path))).load()
    message = str(info.value)
    assert message.startswith(f"ImageNet32 is not available: looked in {folder} (under data.root = "
                              f"'{tmp_path}') and found no train_data_batch_7, val_data. ")
    assert "https://image-net.org/download-images.php" in message
    assert "Imagenet32_train.zip and Imagenet32_val.zip" in message
    assert f"so that {folder} holds train_data_batch_1 ... train_data_batch_10 and val_data." in message
    assert "\n" not in message
    shutil.rmtree(folder)
    with pytest.raises(DatasetUnavailable, match="found no train_data_batch_1, train_data_batch_2, "):
        di.ImageNet32(di.ImageNet32Params(root=str(tmp_path))).load()


def test_imagenet32_broken_batches(tmp_path):
    _make_imagenet32(tmp_path, np.random.default_rng(7))
    folder = tmp_path / "imagenet32"
    params = di.ImageNet32Params(root=str(tmp_path), cache=False)
    batch = folder / "train_data_batch_3"
    good = batch.read_bytes()
    batch.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetUnavailable, match=r"^ImageNet32 in .* is incomplete or corrupted: cannot unpickle "
                                                 r".*train_data_batch_3 \((UnpicklingError|EOFError)"):
        di.ImageNet32(params).load()
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 5]}))
    with pytest.raises(DatasetUnavailable, match=r"'labels' in .*train_data_batch_3 lie in 0..5, not 1..1000"):
        di.ImageNet32(params).load()
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3, 32, 32), np.uint8), "labels": [1, 5]}))
    with pytest.raises(DatasetUnavailable, match=r"'data' in .* is not an N x 3072 uint8 array \(got ndarray of "
                                                 r"shape \(2, 3, 32, 32\)\)"):
        di.ImageNet32(params).load()
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}))
    with pytest.raises(DatasetUnavailable, match=r"has 2 images but 'labels' of shape \(1,\)"):
        di.ImageNet32(params).load()
    batch.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DatasetUnavailable, match="is not a dict with 'data' and 'labels'"):
        di.ImageNet32(params).load()


class _RunsCode:
    def __reduce__(self):
        return (print, ("a batch file ran code",))


def test_imagenet32_batches_cannot_run_code(tmp_path, capsys):
    _make_imagenet32(tmp_path, np.random.default_rng(8))
    (tmp_path / "imagenet32" / "val_data").write_bytes(pickle.dumps({"data": _RunsCode(), "labels": [1]}))
    with pytest.raises(DatasetUnavailable, match=r"cannot unpickle .*val_data \(UnpicklingError: the file refers "
                                                 r"to builtins.print, which an ImageNet32 batch never does\)"):
        di.ImageNet32(di.ImageNet32Params(root=str(tmp_path))).load()
    assert "ran code" not in capsys.readouterr().out


def test_imagenet32_too_big_is_refused_before_reading(tmp_path, low_memory, monkeypatch):
    _make_imagenet32(tmp_path, np.random.default_rng(9))
    monkeypatch.setattr(di.ImageNet32, "_batch", _no_download)
    sizes = sum(f.stat().st_size for f in (tmp_path / "imagenet32").iterdir())
    with pytest.raises(DatasetUnavailable) as info:
        di.ImageNet32(di.ImageNet32Params(root=str(tmp_path))).load()
    size = dataset_cache.format_bytes(sizes)
    assert str(info.value).startswith(f"ImageNet32 does not fit in memory: it needs {size} ({sizes:,} bytes) "
                                      "for its images (about the size of its batch files), and only 1.00 kB "
                                      "(1,000 bytes) is available")
    assert not (tmp_path / "imagenet32" / "pccore_cache_v1.npz").exists()


def test_a_cached_dataset_too_big_is_refused_before_reading_the_cache(tmp_path, monkeypatch):
    _make_imagenet32(tmp_path, np.random.default_rng(10))
    di.ImageNet32(di.ImageNet32Params(root=str(tmp_path))).load()
    monkeypatch.setattr(dataset_cache, "available_memory", lambda: 1000)
    monkeypatch.setattr(dataset_cache.Uint8Cache, "read", _no_download)
    with pytest.raises(DatasetUnavailable) as info:
        di.ImageNet32(di.ImageNet32Params(root=str(tmp_path))).load()
    needed = 22 * 3072 + 22 * 8  # 19 + 3 images and their int64 labels
    assert f"it needs 67.76 kB ({needed:,} bytes) for its cached arrays in {tmp_path / 'imagenet32'}" in str(info.value)


def test_the_cache_is_used_only_for_its_settings_and_its_source(tmp_path):
    cache = dataset_cache.Uint8Cache(tmp_path / "c.npz", "X", extra=("mean",))
    assert cache.nbytes("s", None) is None  # no file yet
    arrays = {"train_images": np.zeros((2, 1, 3, 3), np.uint8), "train_labels": np.array([0, 1]),
              "test_images": np.ones((1, 1, 3, 3), np.uint8), "test_labels": np.array([1]),
              "mean": np.array([0.5])}
    cache.write(arrays, "size=3", "a.bin:100")
    assert cache.nbytes("size=3", "a.bin:100") == 2 * 9 + 2 * 8 + 9 + 8 + 8
    assert cache.nbytes("size=3", None) == 59  # the source is not on disk: nothing to compare
    assert cache.nbytes("size=4", "a.bin:100") is None  # decoded with other settings
    assert cache.nbytes("size=3", "a.bin:101") is None  # the source changed
    read = cache.read()
    assert sorted(read) == ["mean", "test_images", "test_labels", "train_images", "train_labels"]
    np.testing.assert_array_equal(read["test_images"], arrays["test_images"])


def test_a_damaged_cache_is_rebuilt(tmp_path):
    expected = _make_imagenet32(tmp_path, np.random.default_rng(11))
    cache = tmp_path / "imagenet32" / "pccore_cache_v1.npz"
    cache.write_bytes(b"garbage")
    _assert_imagenet32(di.ImageNet32(di.ImageNet32Params(root=str(tmp_path))).load(), expected)
    assert cache.stat().st_size > 22 * 3072


# --- ImageNette and ImageNet-10: ImageFolder trees of JPEGs ---------------------------------------

SIZES = [(300, 260), (500, 375), (200, 180), (230, 500)]
"""JPEG sizes the miniature trees cycle through: wider, taller, and smaller than the 224 center crop."""


def _make_tree(folder: Path, classes: list[str], per_split: dict[str, int], rng: np.random.Generator) -> None:
    """`folder/<split>/<class>/<k>.JPEG` of random pixels (every tenth one greyscale)."""
    k = 0
    for split, count in per_split.items():
        for name in classes:
            for i in range(count):
                width, height = SIZES[k % len(SIZES)]
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).convert("L") if k % 10 == 9 else Image.fromarray(pixels)
                path = folder / split / name / f"{name}_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path, "JPEG", quality=90)
                k += 1


def _reference(folder: Path, split: str, classes: list[str], size: int) -> tuple[np.ndarray, list[int]]:
    """The reference code's test transform, run by torchvision: ImageFolder's RGB loader, CenterCrop(224),
    Resize(size)."""
    transform = transforms.Compose([transforms.CenterCrop(224), transforms.Resize(size)])
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / split / name).iterdir()):
            with Image.open(path) as image:
                images.append(np.asarray(transform(image.convert("RGB"))).transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), labels


IMAGENETTE_CLASSES = ["n03888605", "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
                      "n03394916", "n03417042", "n03425413", "n03445777"]


def _make_imagenette(root: Path) -> Path:
    folder = root / "imagenette2"
    _make_tree(folder, IMAGENETTE_CLASSES, {"train": 2, "val": 1}, np.random.default_rng(12))
    return folder


def test_imagenette_matches_the_reference_transform_then_loads_from_cache(tmp_path, monkeypatch):
    folder = _make_imagenette(tmp_path)
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", _no_download)
    data = di.ImageNette(di.ImageNetteParams(root=str(tmp_path))).load()
    classes = sorted(IMAGENETTE_CLASSES)
    train_x, train_y = _reference(folder, "train", classes, 32)
    test_x, test_y = _reference(folder, "val", classes, 32)
    assert data.train_images.shape == (20, 3, 32, 32) and data.train_images.dtype == torch.uint8
    np.testing.assert_array_equal(data.train_images.numpy(), train_x)
    np.testing.assert_array_equal(data.test_images.numpy(), test_x)
    assert data.train_labels.tolist() == train_y == [k // 2 for k in range(20)]
    assert data.test_labels.tolist() == test_y == list(range(10))
    assert data.num_classes == 10 and data.mean == (0.485, 0.456, 0.406)
    assert data.augmentation == Augmentation(crop_padding=4, horizontal_flip=True)
    assert (folder / "pccore_cache_s32_v1.npz").is_file()
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    shutil.rmtree(folder / "train")
    shutil.rmtree(folder / "val")
    again = di.ImageNette(di.ImageNetteParams(root=str(tmp_path), download=False, augment=False)).load()
    assert torch.equal(again.train_images, data.train_images) and torch.equal(again.test_labels, data.test_labels)
    assert again.augmentation == Augmentation()


def test_imagenette_cache_goes_stale_when_the_classes_change(tmp_path):
    folder = _make_imagenette(tmp_path)
    di.ImageNette(di.ImageNetteParams(root=str(tmp_path))).load()
    for split in ("train", "val"):
        (folder / split / "n01440764").rename(folder / split / "n09999999")
    data = di.ImageNette(di.ImageNetteParams(root=str(tmp_path))).load()
    assert data.train_labels.tolist() == [k // 2 for k in range(20)]
    assert data.test_labels.tolist() == list(range(10))
    # n01440764 was class 0; now it is n09999999, class 9
    assert torch.equal(data.test_images[9], torch.from_numpy(_reference(folder, "val", ["n09999999"], 32)[0][0]))


def test_imagenette_download(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, md5=None, **kwargs):
        calls.append((url, download_root, md5))
        _make_imagenette(Path(download_root))

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    data = di.ImageNette(di.ImageNetteParams(root=str(tmp_path))).load()
    assert data.train_images.shape == (20, 3, 32, 32)
    assert calls == [("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz", str(tmp_path),
                      "fe2fc210e6bb7c5664d602c3cd71e612")]


def test_imagenette_missing_or_not_downloadable(tmp_path, monkeypatch):
    with pytest.raises(DatasetUnavailable) as info:
        di.ImageNette(di.ImageNetteParams(root=str(tmp_path), download=False)).load()
    message = str(info.value)
    folder = tmp_path / "imagenette2"
    assert message.startswith(f"ImageNette is not available: looked for the folders {folder / 'train'} and "
                              f"{folder / 'val'} ")
    assert "data.download = false" in message and "(md5 fe2fc210e6bb7c5664d602c3cd71e612)" in message
    assert "\n" not in message

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailable, match=r"the download failed \(URLError: <urlopen error no network>\)"):
        di.ImageNette(di.ImageNetteParams(root=str(tmp_path))).load()
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", lambda *a, **k: None)
    with pytest.raises(DatasetUnavailable, match="the downloaded archive did not contain imagenette2/train and /val"):
        di.ImageNette(di.ImageNetteParams(root=str(tmp_path))).load()


def test_imagenette_broken_trees(tmp_path):
    folder = _make_imagenette(tmp_path)
    params = di.ImageNetteParams(root=str(tmp_path), download=False, cache=False)
    bad = folder / "val" / "n03000684" / "n03000684_0.JPEG"
    good = bad.read_bytes()
    bad.write_bytes(good[:200])
    with pytest.raises(DatasetUnavailable, match=r"^ImageNette in .* is incomplete or corrupted: cannot read "
                                                 r".*n03000684_0.JPEG \(OSError"):
        di.ImageNette(params).load()
    bad.write_bytes(good)
    shutil.rmtree(folder / "val" / "n03445777")
    with pytest.raises(DatasetUnavailable, match=r"val/ has no folder n03445777 \(every class of train/ needs one"):
        di.ImageNette(params).load()
    (folder / "val" / "n03445777").mkdir()
    with pytest.raises(DatasetUnavailable, match=r"no JPEGs in .*val/n03445777"):
        di.ImageNette(params).load()
    (folder / "train" / "extra").mkdir()
    with pytest.raises(DatasetUnavailable, match="train/ holds 11 class folders, not imagenette2's 10"):
        di.ImageNette(params).load()


IMAGENET_CLASSES = [f"n0{k:07d}" for k in (1440764, 1443537, 1484850, 1491361, 1494475)]


def test_imagenet10_takes_the_first_classes_by_name(tmp_path):
    folder = tmp_path / "imagenet"
    _make_tree(folder, IMAGENET_CLASSES[::-1], {"train": 2, "val": 1}, np.random.default_rng(13))
    params = di.ImageNet10Params(root=str(tmp_path), classes=3, size=16)
    data = di.ImageNet10(params).load()
    first = IMAGENET_CLASSES[:3]
    train_x, _ = _reference(folder, "train", first, 16)
    test_x, _ = _reference(folder, "val", first, 16)
    assert data.train_images.shape == (6, 3, 16, 16) and data.num_classes == 3
    np.testing.assert_array_equal(data.train_images.numpy(), train_x)
    np.testing.assert_array_equal(data.test_images.numpy(), test_x)
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2] and data.test_labels.tolist() == [0, 1, 2]
    assert data.augmentation == Augmentation(crop_padding=2, horizontal_flip=True)
    assert (folder / "pccore_cache_imagenet3_s16_v1.npz").is_file()
    four = di.ImageNet10(di.ImageNet10Params(root=str(tmp_path), classes=4, size=16)).load()
    assert four.train_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(DatasetUnavailable, match=r"train/ holds 5 class folders, fewer than data.classes = 6"):
        di.ImageNet10(di.ImageNet10Params(root=str(tmp_path), classes=6)).load()


def test_imagenet10_missing_tree_says_where_to_put_imagenet(tmp_path):
    with pytest.raises(DatasetUnavailable) as info:
        di.ImageNet10(di.ImageNet10Params(root=str(tmp_path))).load()
    message = str(info.value)
    folder = tmp_path / "imagenet"
    assert message.startswith(f"ImageNet-10 is not available: looked for the folders {folder / 'train'} and "
                              f"{folder / 'val'} ")
    assert f"so that {folder / 'train'} holds one folder of JPEGs per class (n01440764, n01443537, ...)" in message
    assert "the first 10 class folders by name" in message and "\n" not in message


def test_imagenet10_flat_validation_folder_is_explained(tmp_path):
    folder = tmp_path / "imagenet"
    _make_tree(folder, IMAGENET_CLASSES[:2], {"train": 1}, np.random.default_rng(14))
    (folder / "val").mkdir()
    Image.new("RGB", (250, 250)).save(folder / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetUnavailable) as info:
        di.ImageNet10(di.ImageNet10Params(root=str(tmp_path), classes=2)).load()
    assert str(info.value) == (
        f"The ImageNet tree in {folder} is incomplete or corrupted for ImageNet-10: val/ has no folder n01440764 "
        "(every class of train/ needs one in val/). train/ and val/ each need one folder of JPEGs per class (val/ "
        "sorted into the class folders of train/)."
    )


def test_imagenet10_too_big_is_refused_before_decoding(tmp_path, low_memory, monkeypatch):
    folder = tmp_path / "imagenet"
    _make_tree(folder, IMAGENET_CLASSES[:2], {"train": 3, "val": 1}, np.random.default_rng(15))
    monkeypatch.setattr(di._ImageFolder, "_decode_jpegs", _no_download)
    with pytest.raises(DatasetUnavailable) as info:
        di.ImageNet10(di.ImageNet10Params(root=str(tmp_path), classes=2)).load()
    needed = 8 * (3 * 112 * 112 + 8)
    assert str(info.value) == (
        f"ImageNet-10 does not fit in memory: it needs 301.12 kB ({needed:,} bytes) for its 8 images at 112x112, "
        "and only 1.00 kB (1,000 bytes) is available on this machine, so it was not loaded. Every dataset is held "
        "in memory whole; choose fewer classes (data.classes) or a smaller size (data.size), or use a machine "
        "with more memory."
    )
    assert not list(folder.glob("pccore_cache*"))


# --- Galaxy10 DECaLS: HDF5 ------------------------------------------------------------------------


def _make_galaxy(root: Path, count: int = 30, side: int = 256, seed: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Galaxy10_DECals.h5 as published: `images` N x S x S x 3 uint8, `ans` N uint8, and the catalogue
    columns the reference does not use."""
    import h5py

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "Galaxy10_DECals.h5", "w") as f:
        f.create_dataset("images", data=images, chunks=(1, side, side, 3), compression="gzip")
        f.create_dataset("ans", data=labels)
        for column in ("ra", "dec", "redshift", "pxscale"):
            f.create_dataset(column, data=rng.random(count))
    return images, labels


def test_galaxy10_uses_the_reference_split_then_loads_from_cache_without_h5py(tmp_path, monkeypatch):
    images, labels = _make_galaxy(tmp_path)
    # the reference: train_test_split(images, labels, test_size=0.1, random_state=42)
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=0.1, random_state=42)
    data = dg.Galaxy10(dg.Galaxy10Params(root=str(tmp_path))).load()
    assert data.train_images.shape == (27, 3, 256, 256) and data.test_images.shape == (3, 3, 256, 256)
    np.testing.assert_array_equal(data.train_images.numpy(), train_x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(data.test_images.numpy(), test_x.transpose(0, 3, 1, 2))
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == train_y.tolist() and data.test_labels.tolist() == test_y.tolist()
    pixels = train_x.reshape(-1, 3).astype(np.float64) / 255.0
    assert data.mean == pytest.approx(tuple(pixels.mean(axis=0)), abs=1e-12)
    assert data.std == pytest.approx(tuple(pixels.std(axis=0)), abs=1e-12)
    assert data.num_classes == 10 and data.augmentation == Augmentation(0, True)
    cache = tmp_path / "Galaxy10_DECals.pccore_cache_s256_seed42_v1.npz"
    assert cache.is_file()
    (tmp_path / "Galaxy10_DECals.h5").unlink()
    monkeypatch.setitem(sys.modules, "h5py", None)
    again = dg.Galaxy10(dg.Galaxy10Params(root=str(tmp_path), download=False, augment=False)).load()
    assert torch.equal(again.train_images, data.train_images) and torch.equal(again.test_labels, data.test_labels)
    assert again.mean == data.mean and again.std == data.std and again.augmentation == Augmentation()


def test_galaxy10_resizes_bilinearly_and_splits_by_seed(tmp_path):
    images, labels = _make_galaxy(tmp_path, count=12, side=32)
    data = dg.Galaxy10(dg.Galaxy10Params(root=str(tmp_path), size=8, split_seed=3)).load()
    train_idx, test_idx = train_test_split(np.arange(12), test_size=0.1, random_state=3)
    assert data.train_images.shape == (10, 3, 8, 8) and data.test_labels.tolist() == labels[test_idx].tolist()
    for k, i in enumerate(test_idx):
        expected = np.asarray(Image.fromarray(images[i]).resize((8, 8), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(data.test_images[k].numpy(), expected.transpose(2, 0, 1))
    assert (tmp_path / "Galaxy10_DECals.pccore_cache_s8_seed3_v1.npz").is_file()


def test_galaxy10_without_h5py_names_the_extra(tmp_path, monkeypatch):
    _make_galaxy(tmp_path, count=4, side=8)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MissingDependency) as info:
        dg.Galaxy10(dg.Galaxy10Params(root=str(tmp_path), size=8)).load()
    message = str(info.value)
    assert message.startswith(f"reading Galaxy10 DECaLS ({tmp_path / 'Galaxy10_DECals.h5'}, an HDF5 file) needs "
                              "h5py, which is not installed here")
    assert 'install it with pip install "pccore[galaxy]" (or pip install h5py)' in message


def test_galaxy10_download_checks_the_sha256(tmp_path, monkeypatch):
    source = tmp_path / "source"
    _make_galaxy(source, count=10, side=8)
    digest = hashlib.sha256((source / "Galaxy10_DECals.h5").read_bytes()).hexdigest()
    calls = []

    def fake_download(url, root, filename=None, md5=None, **kwargs):
        calls.append((url, root, filename))
        shutil.copy(source / "Galaxy10_DECals.h5", Path(root) / filename)

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download)
    root = tmp_path / "data"
    with pytest.raises(DatasetUnavailable) as info:  # the published checksum cannot match the miniature
        dg.Galaxy10(dg.Galaxy10Params(root=str(root), size=8)).load()
    assert f"the downloaded file's SHA-256 was {digest}, not {dg.GALAXY10_SHA256}, so it was deleted" in str(info.value)
    assert sorted(p.name for p in root.iterdir()) == []
    assert calls == [("https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5", str(root),
                      "Galaxy10_DECals.h5.part")]
    monkeypatch.setattr(dg, "GALAXY10_SHA256", digest)
    data = dg.Galaxy10(dg.Galaxy10Params(root=str(root), size=8)).load()
    assert data.train_images.shape == (9, 3, 8, 8)
    assert sorted(p.name for p in root.iterdir()) == ["Galaxy10_DECals.h5",
                                                      "Galaxy10_DECals.pccore_cache_s8_seed42_v1.npz"]


def test_galaxy10_missing_or_not_downloadable(tmp_path, monkeypatch):
    with pytest.raises(DatasetUnavailable) as info:
        dg.Galaxy10(dg.Galaxy10Params(root=str(tmp_path), download=False)).load()
    message = str(info.value)
    assert message.startswith(f"Galaxy10 DECaLS is not available: looked for {tmp_path / 'Galaxy10_DECals.h5'} ")
    assert "data.download = false" in message and dg.GALAXY10_SHA256 in message and "\n" not in message

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    with pytest.raises(DatasetUnavailable, match=r"the download failed \(URLError: <urlopen error no network>\)"):
        dg.Galaxy10(dg.Galaxy10Params(root=str(tmp_path))).load()
    assert list(tmp_path.iterdir()) == []


def test_galaxy10_broken_files(tmp_path):
    import h5py

    _make_galaxy(tmp_path, count=6, side=8)
    path = tmp_path / "Galaxy10_DECals.h5"
    params = dg.Galaxy10Params(root=str(tmp_path), size=8, cache=False)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(DatasetUnavailable, match=r"^Galaxy10 DECaLS in .*Galaxy10_DECals.h5 is incomplete or "
                                                 r"corrupted: h5py cannot read it \(OSError"):
        dg.Galaxy10(params).load()
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((6, 8, 8, 3), np.uint8)
    with pytest.raises(DatasetUnavailable, match=r"it has no dataset ans \(it holds images\)"):
        dg.Galaxy10(params).load()
    with h5py.File(path, "a") as f:
        f["ans"] = np.array([0, 1, 2, 3, 4, 10], np.uint8)
    with pytest.raises(DatasetUnavailable, match=r"'ans' holds labels 0..10, not 0..9"):
        dg.Galaxy10(params).load()
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((6, 8, 8), np.uint8)
        f["ans"] = np.zeros(6, np.uint8)
    with pytest.raises(DatasetUnavailable, match=r"'images' is uint8 of shape \(6, 8, 8\), not N x S x S x 3 uint8"):
        dg.Galaxy10(params).load()


def test_galaxy10_too_big_is_refused_before_decoding(tmp_path, low_memory):
    _make_galaxy(tmp_path, count=10, side=16)
    with pytest.raises(DatasetUnavailable) as info:
        dg.Galaxy10(dg.Galaxy10Params(root=str(tmp_path))).load()
    needed = 10 * (3 * 256 * 256 + 8)
    assert str(info.value).startswith(f"Galaxy10 DECaLS does not fit in memory: it needs 1.97 MB ({needed:,} bytes) "
                                      "for its 10 images at 256x256, and only 1.00 kB")
    assert str(info.value).endswith("choose a smaller size (data.size = 128 takes a quarter), or use a machine "
                                    "with more memory.")
    assert not list(tmp_path.glob("*.npz"))


# --- through the command line ---------------------------------------------------------------------


@pytest.mark.parametrize("dataset, data, starts", [
    ("imagenet32", {}, "ImageNet32 is not available: looked in "),
    ("imagenet10", {}, "ImageNet-10 is not available: looked for the folders "),
    ("mnist", {"download": False}, "MNIST is not available: looked in "),
    ("galaxy10", {"download": False}, "Galaxy10 DECaLS is not available: looked for "),
    ("imagenette", {"download": False}, "ImageNette is not available: looked for the folders "),
])
def test_pccore_run_with_a_missing_dataset_is_one_paragraph(tmp_path, capsys, dataset, data, starts):
    recipe = write_recipe(tmp_path, data={"name": dataset, "root": str(tmp_path / "data"), **data},
                          model={"name": "mlp", "hidden": [4]})
    code, out, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    assert code == 1
    assert error_line(err).startswith(starts)
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_pccore_run_with_a_corrupt_dataset_is_one_paragraph(tmp_path, capsys):
    root = tmp_path / "data"
    _make_mnist(root, "FashionMNIST", np.random.default_rng(17))
    (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    recipe = write_recipe(tmp_path, data={"name": "fashionmnist", "root": str(root), "download": False},
                          model={"name": "mlp", "hidden": [4]})
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    assert code == 1
    assert error_line(err).startswith(f"FashionMNIST in {root / 'FashionMNIST' / 'raw'} is incomplete or corrupted: "
                                      "torchvision could not read its IDX files")
    assert not (tmp_path / "out").exists()


def test_pccore_run_refuses_a_dataset_too_big_for_memory(tmp_path, capsys, low_memory):
    root = tmp_path / "data"
    _make_galaxy(root, count=6, side=8)
    recipe = write_recipe(tmp_path, data={"name": "galaxy10", "root": str(root), "size": 8},
                          model={"name": "mlp", "hidden": [4]})
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    assert code == 1
    assert error_line(err).startswith("Galaxy10 DECaLS does not fit in memory: it needs 1.20 kB (1,200 bytes) for "
                                      "its 6 images at 8x8, and only 1.00 kB (1,000 bytes) is available")
    assert not (tmp_path / "out").exists()


def test_pccore_trains_on_a_decoded_dataset(tmp_path, capsys):
    root = tmp_path / "data"
    _make_galaxy(root, count=40, side=8)
    recipe = write_recipe(tmp_path, data={"name": "galaxy10", "root": str(root), "size": 8, "batch_size": 8},
                          model={"name": "mlp", "hidden": [4]})
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "summary.json").is_file()
    assert (root / "Galaxy10_DECals.pccore_cache_s8_seed42_v1.npz").is_file()

