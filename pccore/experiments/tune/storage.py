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
from pccore.core.failures import hide_passwords
from pccore.experiments.tune import DEFAULT_GRACE_PERIOD

JOURNAL_PREFIX = "journal:"
DEFAULT_STORAGE_FILE = "study.db"
HEARTBEAT_ATTR = "heartbeat"
WORKER_ATTR = "worker"
SCHEMA_ATTEMPTS = 5
"""How often opening a database storage is tried when another process created Optuna's schema meanwhile."""
SCHEMA_LOCK_KEY = 0x70636F7265
"""The PostgreSQL advisory lock under which pccore processes create Optuna's schema one at a time."""
SCHEMA_LOCK_TIMEOUT_S = 120
SQLITE_TIMEOUT_S = 60
"""How long a write to an SQLite storage waits for the file's lock, which one writer holds at a time."""
CONNECT_TIMEOUT_S = 10
"""How long a connection to a PostgreSQL storage may take before it counts as failed (unless the URL sets
connect_timeout itself): a database host that went away stops a worker instead of hanging it."""
STORAGE_LOST_EXIT = 75
"""The exit status of a command whose storage stopped answering (EX_TEMPFAIL: run it again later)."""
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
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    elif url.startswith("postgresql") and "connect_timeout=" not in url:
        engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    shown = describe(url, out_dir)
    try:
        return _rdb_storage(url, engine_kwargs, grace_period)
    except ImportError as err:  # Optuna wraps the driver's ModuleNotFoundError
        missing = err if isinstance(err, ModuleNotFoundError) else err.__cause__
        name = getattr(missing, "name", None) or "?"
        dialect = url.partition("://")[0].partition("+")[0]
        hint = DRIVERS.get(dialect, f"the Python driver {name}")
        raise MissingDependency(
            f"the storage {shown} needs the database driver {name!r}, which is not installed: pip install {hint}"
        ) from None
    except Exception as err:  # sqlalchemy's ArgumentError, NoSuchModuleError, OperationalError...
        if storage_failure(err) is not None:
            raise StorageUnavailable(shown, err, opening=True) from None
        if _locked(err):
            raise StorageBusy(shown) from None
        kind = type(err).__name__
        text = " ".join(str(err).split())[:300]
        if kind in ("ArgumentError", "NoSuchModuleError"):
            raise UsageError(f"--storage {shown}: not a usable SQLAlchemy URL ({kind}: {text})") from None
        raise PccoreError(f"cannot open the storage {shown} ({kind}: {text})") from None


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], grace_period: int) -> Any:
    """Optuna's RDBStorage for `url`. Opening it creates Optuna's tables, types and version rows when the
    database has none; processes that open one empty database at the same moment (two machines, a job
    array) would race to create them, so on PostgreSQL they take turns under an advisory lock, and on any
    database an opening that lost such a race is tried again (the schema is then there)."""
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            with _schema_lock(url, engine_kwargs), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _RDBStorage(
                    url, engine_kwargs=dict(engine_kwargs), heartbeat_interval=heartbeat_interval(grace_period),
                    grace_period=grace_period,
                )
        except Exception as err:
            if attempt == SCHEMA_ATTEMPTS or not _lost_schema_race(err):
                raise
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")  # the loop returns or raises


@contextlib.contextmanager
def _schema_lock(url: str, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """On PostgreSQL, a session-level advisory lock held while the block runs (released when its connection
    closes, also when this process dies); elsewhere nothing."""
    if not url.partition("://")[0].startswith("postgresql"):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    kwargs = {key: value for key, value in engine_kwargs.items() if key != "poolclass"}
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, **kwargs)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SET lock_timeout = '{SCHEMA_LOCK_TIMEOUT_S}s'")
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({SCHEMA_LOCK_KEY})")
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # a lost connection has released the lock already
                    connection.exec_driver_sql(f"SELECT pg_advisory_unlock({SCHEMA_LOCK_KEY})")
    finally:
        engine.dispose()


def _lost_schema_race(err: BaseException) -> bool:
    """Whether opening a storage failed because another process created the same table, type or version row
    at the same moment ("already exists", a duplicate key)."""
    from sqlalchemy import exc

    for link in _chain(err):
        if isinstance(link, exc.IntegrityError):
            return True
        if isinstance(link, exc.ProgrammingError | exc.OperationalError) and "already exists" in str(link):
            return True
    return False


def _chain(err: BaseException) -> Iterator[BaseException]:
    """`err` and the exceptions it was raised from or while handling (each once)."""
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


class StorageUnavailable(PccoreError):
    """The study's database stopped answering (its server stopped, the network or the host lost): the
    command stops with one message naming the storage (password hidden) and how to go on."""

    exit_code = STORAGE_LOST_EXIT

    def __init__(self, shown: str, cause: BaseException | None = None, *, opening: bool = False,
                 workers: int = 0) -> None:
        reason = ""
        if cause is not None:
            found = storage_failure(cause) or cause
            reason = f" ({hide_passwords(_one_line(found))})"
        if opening:
            text = (f"cannot reach the study's storage {shown}{reason}. Check that the database server runs and "
                    "that this machine can reach it, then run the command again")
        else:
            who = f"{workers} worker processes" if workers > 1 else "the worker"
            text = (f"the study's storage {shown} stopped answering{reason}, so {who} stopped. The trials it "
                    "recorded as finished are kept there; a trial that was running is not recorded as complete "
                    "(it is marked failed once --grace-period has passed without its heartbeat). Once the "
                    "database answers again, run the same command to continue the study to its target")
        super().__init__(text)
        self.shown = shown


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose heartbeat survives the database not answering for a while: Optuna's
    heartbeat thread ends at the first failed write (printing a traceback), after which the running trial
    would be marked failed although its worker lives on. Here a failed heartbeat is kept in `lost` (the
    worker reports it when it next needs the database) and the next one is tried on time."""

    lost: BaseException | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.silent_since: dict[int, float] = {}
        """RUNNING trials seen without any heartbeat (their worker died before its first one), by trial id:
        when this process first saw each (its monotonic clock, so that machines' clocks need not agree)."""

    def silent_trial_ids(self, study_id: int) -> list[int]:
        """The RUNNING trials of the study that have no heartbeat at all. Optuna's own check skips them, so a
        worker killed (or cut off from the database) between starting a trial and its first heartbeat would
        leave the trial RUNNING for ever, and the study waiting for it."""
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        beating = sqlalchemy.select(models.TrialHeartbeatModel.trial_id)
        with _create_scoped_session(self.scoped_session, True) as session:
            rows = session.execute(
                sqlalchemy.select(models.TrialModel.trial_id)
                .where(models.TrialModel.study_id == study_id)
                .where(models.TrialModel.state == TrialState.RUNNING)
                .where(models.TrialModel.trial_id.not_in(beating))
            ).all()
        return [row[0] for row in rows]

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as err:
            if storage_failure(err) is None and not _locked(err):
                raise
            self.lost = err
        else:
            self.lost = None


@contextlib.contextmanager
def reporting_storage_loss(storage: Any, workers: int = 0) -> Iterator[None]:
    """Turn the database not answering inside the block into StorageUnavailable, naming `storage` (an
    opened storage, or its description)."""
    try:
        yield
    except StorageUnavailable:
        raise
    except Exception as err:
        shown = storage if isinstance(storage, str) else storage_name(storage)
        if _locked(err):
            raise StorageBusy(shown) from err
        if storage_failure(err) is None:
            raise
        raise StorageUnavailable(shown, err, workers=workers) from err


class StorageBusy(PccoreError):
    """An SQLite storage whose file stayed locked by other writers for longer than SQLITE_TIMEOUT_S."""

    def __init__(self, shown: str) -> None:
        super().__init__(
            f"the study's storage {shown} stayed locked by other writers for {SQLITE_TIMEOUT_S} s (SQLite's "
            '"database is locked"): an SQLite file takes one writer at a time, and here it could not keep up with '
            "the workers (too many of them, or the file on a slow or network file system). The finished trials "
            "are kept; run the command again with fewer --workers, or keep the study in a journal file "
            "(--storage journal:PATH) or a PostgreSQL database (--storage postgresql+psycopg://...)"
        )


def storage_trouble(err: BaseException) -> bool:
    """Whether `err` comes from the storage not answering or staying locked (not from the trial itself)."""
    return storage_failure(err) is not None or _locked(err)


def _locked(err: BaseException) -> bool:
    """Whether `err` is (or was raised while handling) SQLite's "database is locked"."""
    from sqlalchemy import exc

    return any(isinstance(link, exc.OperationalError) and "database is locked" in str(link) for link in _chain(err))


def storage_failure(err: BaseException) -> BaseException | None:
    """The database driver's connection error behind `err` (raised by it, or while handling it: Optuna
    hides it behind StorageInternalError or an UnboundLocalError of its own), or None when `err` is not
    about reaching the database. SQLite's "database is locked" is not: the file is there, only busy."""
    from sqlalchemy import exc

    for link in _chain(err):
        if isinstance(link, exc.DBAPIError) and link.connection_invalidated:
            return link
        if isinstance(link, exc.OperationalError | exc.InterfaceError | exc.DisconnectionError):
            if "database is locked" not in str(link):
                return link
    return None


def storage_name(storage: Any) -> str:
    """How messages name an opened storage: its URL with the password hidden, or its journal file."""
    url = getattr(storage, "url", None)
    if isinstance(url, str):
        return describe(url, Path("."))
    backend = getattr(storage, "_backend", None)
    path = getattr(backend, "_file_path", None)
    return f"{JOURNAL_PREFIX}{path}" if path else "the study's storage"


def _one_line(err: BaseException) -> str:
    """The driver's own words: the first line of its message, without SQLAlchemy's background link."""
    text = str(getattr(err, "orig", None) or err)
    line = " ".join(text.split("\n")[0].split())[:300]
    return f"{type(getattr(err, 'orig', None) or err).__name__}: {line}" if line else type(err).__name__


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
        if isinstance(storage, _RDBStorage):
            _fail_silent_trials(study, storage, grace_period)
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


def _fail_silent_trials(study: optuna.Study, storage: _RDBStorage, grace_period: int) -> None:
    """Mark failed the RUNNING trials that this process has seen without any heartbeat for more than
    `grace_period` seconds (a live worker records its trial's first heartbeat as the trial starts)."""
    now = time.monotonic()
    silent = set(storage.silent_trial_ids(study._study_id))
    for trial_id in list(storage.silent_since):
        if trial_id not in silent:  # it has a heartbeat now, or it ended
            del storage.silent_since[trial_id]
    for trial_id in silent:
        if now - storage.silent_since.setdefault(trial_id, now) > grace_period:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            del storage.silent_since[trial_id]
