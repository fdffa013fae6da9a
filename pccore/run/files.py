"""The files and folders a run writes: folders made with clear errors, atomic writes, and every OSError
turned into a message that names the path and what failed.

Every file is written to a temporary name in the same folder, flushed to disk and then renamed over the
target, so a crash or a full disk leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pccore.core.errors import PccoreError, UsageError

_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.EROFS: "the file system is read-only",
}


_PATH_ERRORS = {errno.ENAMETOOLONG, errno.ENOENT, errno.EINVAL, errno.ELOOP}
"""Errors that say the path given cannot name a folder (rather than that the machine refuses)."""


class OutputError(PccoreError):
    """A file or folder that pccore must write could not be written (a full disk, no permission)."""


def _reason(err: OSError) -> str:
    text = err.strerror or str(err)
    hint = _HINTS.get(err.errno)
    return f"{text}: {hint}" if hint and hint.lower() != text.lower() else text


def _not_a_folder(path: Path) -> Path | None:
    """The first existing part of `path` (itself or a parent) that is not a folder."""
    for part in [path, *path.parents]:
        try:
            if part.exists():
                return None if part.is_dir() else part
        except OSError:
            continue
    return None


def _folder_error(err: OSError, path: Path, what: str) -> PccoreError:
    """A UsageError when the path itself is unusable (too long, a file in the way, a place that cannot
    hold folders), an OutputError when the machine refuses (permission, a full or read-only disk)."""
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        blocker = _not_a_folder(path) or path
        return UsageError(f"cannot create {what} {path}: {blocker} exists and is not a folder")
    error = UsageError if err.errno in _PATH_ERRORS else OutputError
    return error(f"cannot create {what} {path}: {_reason(err)}")


def is_folder(path: Path, what: str) -> bool:
    """Whether `path` is an existing folder; a path the system cannot even look up (too long, say) is an
    error naming `what` it is for."""
    try:
        return Path(path).is_dir()
    except OSError as err:
        raise _folder_error(err, Path(path), what) from None


def make_folder(path: Path, what: str) -> Path:
    """Create `path` (and its parents) if needed. A part of it that exists and is not a folder, or a path
    that cannot name a folder, is a UsageError; the machine refusing is an OutputError; both name `what`
    the folder is for."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _folder_error(err, path, what) from None
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync, then `os.replace`; an
    OSError becomes an OutputError that says the earlier version of the file, if any, is unchanged."""
    path = Path(path)
    make_folder(path.parent, f"the folder for {path.name}")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            kept = "its earlier version is unchanged" if path.exists() else "nothing was written"
            raise OutputError(f"cannot write {path}: {_reason(err)} ({kept})") from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))

