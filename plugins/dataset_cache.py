"""What the decoded datasets share: `data.root` checked, atomic writes, the uint8 cache next to the data,
the memory check before a dataset is loaded, and parallel decoding of image files.

A dataset whose files need decoding (JPEGs, HDF5, pickles) is decoded once into an uncompressed `.npz` of
uint8 [N, C, H, W] images and int64 labels; later runs read that file instead. Before either, the bytes the
arrays will take are compared with the memory available, so a dataset too big for this machine is refused
with both numbers instead of failing part way through.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pccore.plugin import DatasetUnavailable, UsageError

log = logging.getLogger(__name__)

SPLITS = ("train_images", "train_labels", "test_images", "test_labels")
"""The arrays every cache holds; a dataset may add its own (Galaxy10's mean and std)."""


# --- memory --------------------------------------------------------------------------------------


JPEG_SUFFIXES = (".jpeg", ".jpg")
"""The file endings of the JPEG images that ImageFolder-style datasets read."""


def data_root(root: str) -> Path:
    """`data.root` as a path; UsageError when it, or a folder above it, exists and is not a folder."""
    path = Path(root).expanduser()
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                raise UsageError(f"data.root = {root!r}: {part} exists and is not a folder; set data.root to "
                                 "the folder that holds (or will hold) the dataset")
            break
    return path


DOWNLOAD_OFF = "downloading is off (data.download = false)"
"""The reason a missing dataset was not downloaded, in its "not available" message."""


def fetch_archive(present: Callable[[], bool], download: bool, url: str, md5: str, root: Path, contents: str,
                  unavailable: Callable[[str], Exception]) -> None:
    """Unless `present()`, download `url` (checked against `md5`) and extract it into `root`; every way this
    can fail (downloading off, no network, a bad checksum, an archive without `contents`) raises
    `unavailable(reason)`, the dataset's own message."""
    if present():
        return
    if not download:
        raise unavailable(DOWNLOAD_OFF)
    from torchvision.datasets import utils as tv_utils

    try:
        tv_utils.download_and_extract_archive(url, download_root=str(root), md5=md5)
    except Exception as err:  # URLError, OSError, RuntimeError (checksum), BadZipFile, tarfile.ReadError...
        raise unavailable(f"the download failed ({type(err).__name__}: {err})") from err
    if not present():
        raise unavailable(f"the downloaded archive did not contain {contents}")


def atomic_write(path: Path, write: Callable) -> None:
    """Call `write(file)` on a temporary file next to `path`, then rename it to `path`."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as err:
        log.warning("could not write the cache %s: %s", path, err)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as err:
        log.warning("could not write the cache %s: %s", path, err)
        Path(temp).unlink(missing_ok=True)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes that can be allocated without swapping (MemAvailable in Linux's `meminfo`, else the free pages
    the system reports), or None when unknown."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: int) -> str:
    """`n` bytes in decimal units, e.g. 4.09 GB."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def require_memory(title: str, what: str, nbytes: int, advice: str) -> None:
    """DatasetUnavailable when `nbytes` (the dataset's arrays, `what` says which) exceed the memory
    available now; nothing when they fit or the available memory cannot be known."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise DatasetUnavailable(
            f"{title} does not fit in memory: it needs {format_bytes(nbytes)} ({nbytes:,} bytes) for {what}, and "
            f"only {format_bytes(available)} ({available:,} bytes) is available on this machine, so it was not "
            f"loaded. Every dataset is held in memory whole; {advice}"
        )


# --- the cache -----------------------------------------------------------------------------------


class Uint8Cache:
    """A decoded dataset in one uncompressed `.npz` next to its source.

    Besides the arrays, the file records `settings` (how it was decoded: a different setting means a
    different cache) and `source` (what it was decoded from: when the source is on disk and differs, the
    cache is stale). Reading returns None for a missing, damaged, stale or foreign cache, which is then
    rebuilt; writing is atomic, and failing to write only costs speed.
    """

    def __init__(self, path: Path, title: str, extra: tuple[str, ...] = ()):
        self.path = path
        self.title = title
        self.names = SPLITS + extra

    def nbytes(self, settings: str, source: str | None) -> int | None:
        """Bytes the cached arrays take once loaded (read from their headers, nothing loaded), or None when
        there is no usable cache for `settings` and `source` (None: the source is not on disk to compare)."""
        if not self.path.is_file():
            return None
        try:
            with zipfile.ZipFile(self.path) as archive:
                if not self._matches(archive, settings, source):
                    return None
                total = 0
                for name in self.names:
                    shape, dtype = _header(archive, name)
                    total += int(np.prod(shape)) * dtype.itemsize
                return total
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            log.warning("ignoring the unreadable %s cache %s: %s", self.title, self.path, err)
            return None

    def read(self) -> dict[str, np.ndarray] | None:
        """The cached arrays (checked by `nbytes` first), or None when the file cannot be read after all."""
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in self.names}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            log.warning("ignoring the unreadable %s cache %s: %s", self.title, self.path, err)
            return None
        images_and_labels = [(arrays["train_images"], arrays["train_labels"]),
                             (arrays["test_images"], arrays["test_labels"])]
        if any(x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y) for x, y in images_and_labels):
            log.warning("ignoring the malformed %s cache %s", self.title, self.path)
            return None
        return arrays

    def write(self, arrays: dict[str, np.ndarray], settings: str, source: str) -> None:
        """Write the arrays with their `settings` and `source` (atomically: a temporary file renamed)."""
        labelled = {**arrays, "settings": np.array(settings), "source": np.array(source)}
        atomic_write(self.path, lambda f: np.savez(f, **labelled))

    def _matches(self, archive: zipfile.ZipFile, settings: str, source: str | None) -> bool:
        stored = {}
        for name in ("settings", "source"):
            with archive.open(name + ".npy") as f:
                stored[name] = str(np.lib.format.read_array(f, allow_pickle=False))
        if stored["settings"] != settings:
            log.info("not using the %s cache %s: it was decoded with other settings (%s)", self.title,
                     self.path, stored["settings"])
            return False
        if source is not None and stored["source"] != source:
            log.warning("ignoring the stale %s cache %s: the files it was decoded from changed", self.title,
                        self.path)
            return False
        return True


def _header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of the array `name` in an open .npz, from its header alone."""
    with archive.open(name + ".npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unexpected .npy format version {version} for {name}")
    return shape, dtype


def load_cached(cache: Uint8Cache | None, settings: str, source: Callable[[], str | None],
                decode: Callable[[], dict[str, np.ndarray]], title: str, advice: str) -> dict[str, np.ndarray]:
    """The dataset's arrays: from `cache` when it holds them for `settings` (after the memory check), else
    from `decode()` (which checks memory itself before decoding), then written to `cache`. `cache` None:
    always decode, write nothing. `source()` describes the files on disk (None when they are absent)."""
    if cache is not None:
        current = source()
        nbytes = cache.nbytes(settings, current)
        if nbytes is not None:
            require_memory(title, f"its cached arrays in {cache.path}", nbytes, advice)
            arrays = cache.read()
            if arrays is not None:
                return arrays
    arrays = decode()
    if cache is not None:
        cache.write(arrays, settings, source() or "")
    return arrays


# --- decoding ------------------------------------------------------------------------------------


def decode_parallel(count: int, decode_range: Callable[[int, int], None], chunk: int = 256) -> None:
    """Call `decode_range(start, stop)` over 0..count in chunks on a thread pool (PIL and h5py release the
    GIL); the first error is raised and the chunks not yet started are cancelled."""
    workers = min(32, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(decode_range, start, min(start + chunk, count)) for start in range(0, count, chunk)]
        try:
            for job in jobs:
                job.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
