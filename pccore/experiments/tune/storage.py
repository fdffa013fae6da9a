"""Where a study lives: Optuna storages named by one string, and how a trial whose worker died is found.

- no `--storage`: an SQLite file `study.db` in the study's output folder (embedded, nothing to start);
- an SQLAlchemy URL (`sqlite:///path.db`, `postgresql://user@host/db`, `mysql+pymysql://...`): Optuna's
  RDBStorage, with Optuna's heartbeat: a worker records a heartbeat every `interval` seconds while its
  trial runs, and a RUNNING trial whose heartbeat is older than the grace period is marked failed;
- `journal:PATH`: Optuna's JournalStorage on a file backend (for a shared file system). Optuna 5 has no
  heartbeat for journal storages, so pccore keeps one of its own in the trial's user attributes
  (`heartbeat`, a Unix time) with the same rule.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pccore.core.errors import MissingDependency, PccoreError, UsageError
from pccore.experiments.tune import DEFAULT_GRACE_PERIOD

JOURNAL_PREFIX = "journal:"
DEFAULT_STORAGE_FILE = "study.db"
HEARTBEAT_ATTR = "heartbeat"
WORKER_ATTR = "worker"
DRIVERS = {"postgresql": "psycopg[binary] (or psycopg2-binary for postgresql+psycopg2://)",
           "mysql": "pymysql (with mysql+pymysql://)"}


def heartbeat_interval(grace_period: int) -> int:
    """Seconds between heartbeats: a quarter of the grace period, at least 1."""
    return max(1, grace_period // 4)


def describe(storage: str | None, out_dir: Path) -> str:
    """The storage as given (or the default SQLite URL), with any password hidden."""
    if storage is None:
        return default_url(out_dir)
    if storage.startswith(JOURNAL_PREFIX):
        return storage
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: open_storage says so
        return storage


def default_url(out_dir: Path) -> str:
    return f"sqlite:///{(Path(out_dir) / DEFAULT_STORAGE_FILE).absolute()}"


def open_storage(storage: str | None, out_dir: Path, grace_period: int = DEFAULT_GRACE_PERIOD) -> Any:
    """The Optuna storage named by `storage` (None: `out_dir/study.db`)."""
    if storage is not None and storage.startswith(JOURNAL_PREFIX):
        return _journal(storage[len(JOURNAL_PREFIX):])
    url = default_url(out_dir) if storage is None else storage
    if "://" not in url:
        raise UsageError(
            f"--storage {storage}: expected an SQLAlchemy URL (sqlite:///study.db, postgresql://user@host/db, "
            "mysql+pymysql://user@host/db) or journal:PATH (a journal file, e.g. on a shared file system)"
        )
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    shown = describe(url, out_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval(grace_period),
                grace_period=grace_period,
            )
    except ImportError as err:  # Optuna wraps the driver's ModuleNotFoundError
        missing = err if isinstance(err, ModuleNotFoundError) else err.__cause__
        name = getattr(missing, "name", None) or "?"
        dialect = url.partition("://")[0].partition("+")[0]
        hint = DRIVERS.get(dialect, f"the Python driver {name}")
        raise MissingDependency(
            f"the storage {shown} needs the database driver {name!r}, which is not installed: pip install {hint}"
        ) from None
    except Exception as err:  # sqlalchemy's ArgumentError, NoSuchModuleError, OperationalError...
        kind = type(err).__name__
        text = " ".join(str(err).split())[:300]
        if kind in ("ArgumentError", "NoSuchModuleError"):
            raise UsageError(f"--storage {shown}: not a usable SQLAlchemy URL ({kind}: {text})") from None
        raise PccoreError(f"cannot open the storage {shown} ({kind}: {text})") from None


def _journal(path_text: str) -> Any:
    if not path_text:
        raise UsageError("--storage journal:PATH needs a file path after journal:")
    path = Path(path_text).expanduser()
    if not path.parent.is_dir():
        raise UsageError(f"--storage journal:{path_text}: the folder {path.parent} does not exist")
    try:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as err:
        raise PccoreError(f"cannot open the journal file {path}: {err.strerror or err}") from None


def uses_optuna_heartbeat(storage: Any) -> bool:
    """Whether Optuna itself records heartbeats for this storage (RDB storages)."""
    return isinstance(storage, optuna.storages.RDBStorage)


def worker_name() -> str:
    """This worker as recorded with its trials: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def journal_heartbeat(trial: optuna.Trial, storage: Any, grace_period: int) -> Iterator[None]:
    """While the block runs, record a heartbeat in the trial's user attributes every interval (journal
    storages only; RDB storages have Optuna's own)."""
    if uses_optuna_heartbeat(storage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed heartbeat only risks the trial being failed
                trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            if stop.wait(heartbeat_interval(grace_period)):
                return

    thread = threading.Thread(target=beat, name="pccore-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: optuna.Study, storage: Any, grace_period: int) -> list[int]:
    """Mark failed the RUNNING trials of `study` (kept in `storage`) whose worker stopped sending
    heartbeats (killed, or its machine lost) more than `grace_period` seconds ago; their numbers."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    if uses_optuna_heartbeat(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        return sorted(t.number for t in failed if t.number in running)
    now = time.time()
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        last = float(trial.user_attrs.get(HEARTBEAT_ATTR, started))
        if now - last > grace_period:
            with contextlib.suppress(ValueError, optuna.exceptions.UpdateFinishedTrialError):
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                stale.append(trial.number)
    return stale
