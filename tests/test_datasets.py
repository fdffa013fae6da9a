"""Tests of the built-in dataset plugins, on miniature copies of the real on-disk formats (no network)."""

from __future__ import annotations

import os
import pickle
import shutil
import struct
from importlib.metadata import entry_points
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.utils
from PIL import Image

from pccore.core.components import Augmentation, Dataset, DataSpec, ImageData
from pccore.core.errors import DatasetUnavailable
from pccore_plugins import datasets as ds

# --- registration --------------------------------------------------------------------------------


def test_entry_point_and_components():
    (ep,) = [ep for ep in entry_points(group="pccore") if ep.name == "dataset"]
    assert ep.value == "pccore_plugins.datasets"
    components = {c.name: c for c in ds.pccore_register_dataset()}
    assert sorted(components) == ["cifar10", "cifar100", "digits", "synthetic", "tinyimagenet"]
    for component in components.values():
        assert component.description
        assert isinstance(component.factory(component.params()), Dataset)
    assert components["cifar10"].params() == ds.CifarParams(root="data", download=True, augment=True)
    assert components["tinyimagenet"].params() == ds.TinyImageNetParams("data", True, True, True)
    assert components["digits"].params() == ds.DigitsParams(size=32, channels=3, test_fraction=0.2,
                                                             split_seed=0)
    assert components["synthetic"].params() == ds.SyntheticParams(3, 32, 10, 512, 256, 0)


def test_specs_need_no_disk(tmp_path):
    missing = str(tmp_path / "nothing-here")
    assert ds.Cifar10(ds.CifarParams(root=missing)).spec() == DataSpec((3, 32, 32), 10)
    assert ds.Cifar100(ds.CifarParams(root=missing)).spec() == DataSpec((3, 32, 32), 100)
    assert ds.TinyImageNet(ds.TinyImageNetParams(root=missing)).spec() == DataSpec((3, 64, 64), 200)
    assert ds.Digits(ds.DigitsParams(size=16, channels=1)).spec() == DataSpec((1, 16, 16), 10)
    assert ds.Synthetic(ds.SyntheticParams(channels=2, size=5, classes=7)).spec() == DataSpec((2, 5, 5), 7)
    assert not (tmp_path / "nothing-here").exists()


def test_params_reject_bad_values():
    with pytest.raises(ValueError, match=r"^'test_fraction' must be < 1.0: 1.0$"):
        ds.DigitsParams(test_fraction=1.0)
    with pytest.raises(ValueError, match=r"^'classes' must be > 0: 0$"):
        ds.SyntheticParams(classes=0)


# --- synthetic -----------------------------------------------------------------------------------


def test_synthetic_shapes_determinism_and_statistics():
    params = ds.SyntheticParams()
    a = ds.Synthetic(params).load()
    b = ds.Synthetic(params).load()
    c = ds.Synthetic(ds.SyntheticParams(seed=1)).load()
    assert a.train_images.shape == (512, 3, 32, 32) and a.test_images.shape == (256, 3, 32, 32)
    assert a.train_images.dtype == torch.float32 and a.train_labels.dtype == torch.int64
    assert a.num_classes == 10 and a.mean == (0.0, 0.0, 0.0) and a.std == (1.0, 1.0, 1.0)
    assert a.augmentation == Augmentation()
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, c.train_images)
    assert 0 <= int(a.train_labels.min()) and int(a.train_labels.max()) <= 9
    pixels = a.train_images.double()
    assert abs(pixels.mean().item()) < 0.1 and abs(pixels.std().item() - 1.0) < 0.1


def test_synthetic_labels_are_learnable():
    data = ds.Synthetic(ds.SyntheticParams(size=8)).load()
    flat = data.train_images.flatten(1)
    means = torch.stack([flat[data.train_labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(data.test_images.flatten(1), means).argmin(1)
    assert (predicted == data.test_labels).float().mean().item() > 0.9


# --- digits --------------------------------------------------------------------------------------


def _digit_split(test_fraction=0.2, seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train, test = train_test_split(np.arange(1797), test_size=test_fraction, stratify=bunch.target,
                                   random_state=seed)
    return bunch, train, test


def test_digits_split_labels_and_statistics():
    data = ds.Digits(ds.DigitsParams()).load()
    bunch, train, test = _digit_split()
    assert data.train_images.shape == (1437, 3, 32, 32) and data.test_images.shape == (360, 3, 32, 32)
    assert data.train_images.dtype == torch.float32 and data.num_classes == 10
    assert data.augmentation == Augmentation()
    assert data.train_labels.tolist() == bunch.target[train].tolist()
    assert data.test_labels.tolist() == bunch.target[test].tolist()
    totals = np.bincount(bunch.target, minlength=10)
    test_counts = np.bincount(data.test_labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * totals) <= 1)
    assert torch.equal(data.train_images[:, 0], data.train_images[:, 2])
    pixels = data.train_images[:, 0].double().numpy()
    assert data.mean == pytest.approx((pixels.mean(),) * 3, abs=1e-9)
    assert data.std == pytest.approx((pixels.std(),) * 3, abs=1e-9)
    again = ds.Digits(ds.DigitsParams()).load()
    assert torch.equal(again.train_images, data.train_images)
    other = ds.Digits(ds.DigitsParams(split_seed=1)).load()
    assert not torch.equal(other.test_labels, data.test_labels)


def test_digits_bilinear_resize_matches_pil():
    data = ds.Digits(ds.DigitsParams(size=32, channels=1)).load()
    bunch, train, _ = _digit_split()
    assert data.train_images.shape == (1437, 1, 32, 32)
    for k in (0, 1, 500):
        source = Image.fromarray((bunch.images[train[k]] / 16.0).astype(np.float32), mode="F")
        expected = np.asarray(source.resize((32, 32), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(data.train_images[k, 0].numpy(), expected, atol=1e-5)


def test_digits_native_size_is_exact():
    data = ds.Digits(ds.DigitsParams(size=8, channels=1, test_fraction=0.5)).load()
    bunch, train, test = _digit_split(0.5)
    assert len(test) == 899 and data.test_images.shape == (899, 1, 8, 8)
    np.testing.assert_array_equal(data.test_images[:, 0].numpy(), (bunch.images[test] / 16.0))


# --- CIFAR: miniature files in the real format ---------------------------------------------------


class _Py2Str(bytes):
    """Pickled as a Python 2 `str`, like the keys and names in the official CIFAR files."""


class _Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2str


def _write_py2(path: Path, record: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump({_Py2Str(k.encode()): v for k, v in record.items()})


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """[N, 3, 32, 32] images as the files store them: N rows of 1024 red, 1024 green, 1024 blue values."""
    return images.reshape(len(images), 3072)


@pytest.fixture
def fake_integrity(monkeypatch):
    """The miniature files cannot match the official MD5s: accept any file that exists."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))


def _make_cifar10(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, list, np.ndarray, list]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x = rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    train_y = rng.integers(0, 10, 10).tolist()
    test_x = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    test_y = rng.integers(0, 10, 3).tolist()
    for i in range(5):
        part = slice(2 * i, 2 * i + 2)
        _write_py2(folder / f"data_batch_{i + 1}", {
            "batch_label": _Py2Str(f"training batch {i + 1} of 5".encode()),
            "labels": train_y[part],
            "data": _cifar_rows(train_x[part]),
            "filenames": [_Py2Str(f"img_{i}_{j}.png".encode()) for j in range(2)],
        })
    _write_py2(folder / "test_batch", {
        "batch_label": _Py2Str(b"testing batch 1 of 1"), "labels": test_y,
        "data": _cifar_rows(test_x), "filenames": [_Py2Str(b"t%d.png" % j) for j in range(3)],
    })
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
             b"truck"]
    _write_py2(folder / "batches.meta", {"num_cases_per_batch": 10000,
                                         "label_names": [_Py2Str(n) for n in names], "num_vis": 3072})
    return train_x, train_y, test_x, test_y


def _make_cifar100(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, list, np.ndarray, list]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train_x = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    train_y = [99, 0, 42, 7]
    test_x = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    test_y = [13, 99]
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        _write_py2(folder / name, {
            "filenames": [_Py2Str(b"f%d.png" % j) for j in range(len(y))],
            "batch_label": _Py2Str(name.encode()), "fine_labels": y,
            "coarse_labels": [label // 5 for label in y], "data": _cifar_rows(x),
        })
    _write_py2(folder / "meta", {
        "fine_label_names": [_Py2Str(b"class%d" % k) for k in range(100)],
        "coarse_label_names": [_Py2Str(b"super%d" % k) for k in range(20)],
    })
    return train_x, train_y, test_x, test_y


def test_fixture_has_the_real_files_keys(tmp_path):
    _make_cifar10(tmp_path, np.random.default_rng(0))
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        record = pickle.load(f, encoding="bytes")
    assert sorted(record) == [b"batch_label", b"data", b"filenames", b"labels"]
    assert record[b"data"].shape == (2, 3072) and record[b"data"].dtype == np.uint8


@pytest.mark.parametrize("component, make, classes, mean", [
    (ds.Cifar10, _make_cifar10, 10, (0.4914, 0.4822, 0.4465)),
    (ds.Cifar100, _make_cifar100, 100, (0.5071, 0.4867, 0.4408)),
])
def test_cifar_round_trip(tmp_path, fake_integrity, monkeypatch, component, make, classes, mean):
    train_x, train_y, test_x, test_y = make(tmp_path, np.random.default_rng(1))

    def no_download(*args, **kwargs):
        raise AssertionError("the files are present: nothing may be downloaded")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_download)
    for download in (False, True):
        data = component(ds.CifarParams(root=str(tmp_path), download=download)).load()
        assert data.train_images.dtype == torch.uint8 and data.train_images.is_contiguous()
        np.testing.assert_array_equal(data.train_images.numpy(), train_x)
        np.testing.assert_array_equal(data.test_images.numpy(), test_x)
        assert data.train_labels.dtype == torch.int64
        assert data.train_labels.tolist() == train_y and data.test_labels.tolist() == test_y
        assert data.num_classes == classes and data.mean == mean
        assert data.augmentation == Augmentation(crop_padding=4, horizontal_flip=True)
    plain = component(ds.CifarParams(root=str(tmp_path), download=False, augment=False)).load()
    assert plain.augmentation == Augmentation()
    assert ds.Cifar10.std == (0.2023, 0.1994, 0.2010) and ds.Cifar100.std == (0.2675, 0.2565, 0.2761)


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(DatasetUnavailable) as info:
        ds.Cifar10(ds.CifarParams(root=str(tmp_path), download=False)).load()
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data.download = false" in message and "`data.download = true`" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "\n" not in message


def test_cifar_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailable) as info:
        ds.Cifar100(ds.CifarParams(root=str(tmp_path), download=True)).load()
    message = str(info.value)
    assert "the download failed" in message and "no network" in message
    assert str(tmp_path / "cifar-100-python") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert isinstance(info.value.__cause__, URLError)


def test_cifar_corrupted_files(tmp_path, fake_integrity):
    _make_cifar10(tmp_path, np.random.default_rng(2))
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetUnavailable, match="missing or incomplete"):
        ds.Cifar10(ds.CifarParams(root=str(tmp_path), download=False)).load()


# --- Tiny ImageNet: a miniature tree of real JPEGs ------------------------------------------------

WNIDS = ["n0300", "n0100", "n0200"]  # deliberately not sorted: class order is the file's line order
TRAIN_COLOURS = {
    "n0300": [(200, 30, 90), (10, 250, 128)],
    "n0100": [(77, 77, 77), (0, 0, 250)],
    "n0200": [(250, 250, 0), (128, 64, 32)],
}
VAL = [("val_0.JPEG", "n0200", (40, 160, 220)), ("val_1.JPEG", "n0300", (90, 90, 90)),
       ("val_2.JPEG", "n0100", (220, 20, 20)), ("val_3.JPEG", "n0200", (60, 200, 60))]


def _jpeg(path: Path, colour: tuple[int, int, int], grey: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (64, 64), colour[0]) if grey else Image.new("RGB", (64, 64), colour)
    image.save(path, "JPEG", quality=100)


def _make_tiny(root: Path) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in WNIDS))
    for wnid, colours in TRAIN_COLOURS.items():
        for i, colour in enumerate(colours):
            _jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colour, grey=colour[0] == 77)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    for name, _, colour in VAL:
        _jpeg(folder / "val" / "images" / name, colour)
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t1\t2\t60\t61\n" for name, wnid, _ in VAL))
    _jpeg(folder / "test" / "images" / "test_0.JPEG", (1, 2, 3))
    return folder


def _expected_tiny() -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    def solid(colours):
        return np.stack([np.broadcast_to(np.array(c, np.int64)[:, None, None], (3, 64, 64))
                         for c in colours])

    train_colours = [c for w in WNIDS for c in TRAIN_COLOURS[w]]
    return (solid(train_colours), [0, 0, 1, 1, 2, 2],
            solid([c for _, _, c in VAL]), [2, 0, 1, 2])


def _assert_tiny(data: ImageData) -> None:
    train_x, train_y, test_x, test_y = _expected_tiny()
    assert data.train_images.shape == (6, 3, 64, 64) and data.test_images.shape == (4, 3, 64, 64)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert np.abs(data.train_images.numpy().astype(np.int64) - train_x).max() <= 2
    assert np.abs(data.test_images.numpy().astype(np.int64) - test_x).max() <= 2
    assert data.train_labels.tolist() == train_y and data.test_labels.tolist() == test_y
    assert data.num_classes == 3
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)


def test_tiny_imagenet_decodes_then_loads_from_cache(tmp_path):
    folder = _make_tiny(tmp_path)
    params = ds.TinyImageNetParams(root=str(tmp_path), download=False)
    first = ds.TinyImageNet(params).load()
    _assert_tiny(first)
    assert first.augmentation == Augmentation(crop_padding=8, horizontal_flip=True)
    assert (folder / "pccore_cache_v1.npz").is_file()
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    shutil.rmtree(folder / "train")
    shutil.rmtree(folder / "val")
    second = ds.TinyImageNet(params).load()
    assert torch.equal(second.train_images, first.train_images)
    assert torch.equal(second.test_images, first.test_images)
    assert torch.equal(second.train_labels, first.train_labels)
    assert torch.equal(second.test_labels, first.test_labels)
    (folder / "wnids.txt").unlink()
    third = ds.TinyImageNet(ds.TinyImageNetParams(root=str(tmp_path), download=False, augment=False)).load()
    assert torch.equal(third.test_images, first.test_images) and third.augmentation == Augmentation()
    with pytest.raises(DatasetUnavailable, match=r"^Tiny ImageNet is not available: .*found no .*wnids\.txt"):
        ds.TinyImageNet(ds.TinyImageNetParams(root=str(tmp_path), download=False, cache=False)).load()


def test_tiny_imagenet_without_cache_writes_none(tmp_path):
    folder = _make_tiny(tmp_path)
    _assert_tiny(ds.TinyImageNet(ds.TinyImageNetParams(root=str(tmp_path), cache=False)).load())
    assert not (folder / "pccore_cache_v1.npz").exists()


def test_tiny_imagenet_rebuilds_a_damaged_or_stale_cache(tmp_path):
    folder = _make_tiny(tmp_path)
    cache = folder / "pccore_cache_v1.npz"
    cache.write_bytes(b"garbage")
    params = ds.TinyImageNetParams(root=str(tmp_path), download=False)
    _assert_tiny(ds.TinyImageNet(params).load())
    assert cache.stat().st_size > 6 * 3 * 64 * 64
    (folder / "wnids.txt").write_text("n0100\nn0300\nn0200\n")
    data = ds.TinyImageNet(params).load()
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2] and data.test_labels.tolist() == [2, 1, 0, 2]
    first_pixels = data.train_images[:, :, 0, 0].tolist()
    assert np.abs(np.array(first_pixels[0]) - [77, 77, 77]).max() <= 2  # n0100's first image
    assert np.abs(np.array(first_pixels[2]) - [200, 30, 90]).max() <= 2  # n0300's first image


def test_tiny_imagenet_missing_without_download(tmp_path):
    with pytest.raises(DatasetUnavailable) as info:
        ds.TinyImageNet(ds.TinyImageNetParams(root=str(tmp_path), download=False)).load()
    message = str(info.value)
    assert str(tmp_path / "tiny-imagenet-200" / "wnids.txt") in message
    assert "data.download = false" in message and "`data.download = true`" in message
    assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in message and "\n" not in message


def test_tiny_imagenet_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailable) as info:
        ds.TinyImageNet(ds.TinyImageNetParams(root=str(tmp_path), download=True)).load()
    message = str(info.value)
    assert "the download failed" in message and "no network" in message
    assert str(tmp_path / "tiny-imagenet-200") in message
    assert isinstance(info.value.__cause__, URLError)


def test_tiny_imagenet_download_extracts_under_root(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, md5=None, **kwargs):
        calls.append((url, download_root, md5))
        _make_tiny(Path(download_root))

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    _assert_tiny(ds.TinyImageNet(ds.TinyImageNetParams(root=str(tmp_path))).load())
    assert calls == [("http://cs231n.stanford.edu/tiny-imagenet-200.zip", str(tmp_path),
                      "90528d7ca1a48142e341f4ef8d21d0de")]


def test_tiny_imagenet_archive_without_the_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", lambda *a, **k: None)
    with pytest.raises(DatasetUnavailable, match="did not contain tiny-imagenet-200/wnids.txt"):
        ds.TinyImageNet(ds.TinyImageNetParams(root=str(tmp_path))).load()


def test_tiny_imagenet_broken_trees(tmp_path):
    folder = _make_tiny(tmp_path)
    params = ds.TinyImageNetParams(root=str(tmp_path), download=False, cache=False)
    annotations = folder / "val" / "val_annotations.txt"
    good = annotations.read_text()
    annotations.write_text(good + "val_9.JPEG\tn9999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetUnavailable, match="line 5 of .*val_annotations.txt"):
        ds.TinyImageNet(params).load()
    annotations.write_text(good)
    (folder / "val" / "images" / "val_2.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetUnavailable, match="cannot read .*val_2.JPEG"):
        ds.TinyImageNet(params).load()
    shutil.rmtree(folder / "train" / "n0200" / "images")
    with pytest.raises(DatasetUnavailable, match="no training images in .*n0200"):
        ds.TinyImageNet(params).load()
