"""`pccore tune` under load: many worker processes on one study, on the default SQLite storage and on a
PostgreSQL database (tests/postgres.py); and what a user sees when SQLite's file stays locked."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from pccore.cli import main
from pccore.experiments.tune import storage as storage_module
from tests.postgres import wait_until
from tests.test_tune import write_study

pytestmark = pytest.mark.timeout(400)
"""A study that never ends fails its test instead of hanging the suite."""

WORKERS = 8
TRIALS = 16


def _run_many(tmp_path: Path, *storage: str) -> tuple[dict, str, float]:
    """`pccore tune` with WORKERS worker processes on a study of TRIALS one-epoch trials; its summary, its
    progress and error output, and its wall time."""
    study = write_study(tmp_path, trials=TRIALS)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pccore.cli", "tune", str(study), "--out", str(out), "--workers", str(WORKERS),
               "--json", *storage]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=360)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    numbers = [row["number"] for row in summary["trials"]]
    assert sorted(numbers) == list(range(TRIALS))  # none lost, none twice, none over the target
    assert (summary["n_complete"], summary["n_pruned"], summary["n_failed"], summary["n_running"]) == (TRIALS, 0, 0, 0)
    assert sorted(int(p.name) for p in (out / "trials").iterdir()) == list(range(TRIALS))
    for row in summary["trials"]:
        seed = json.loads((out / "trials" / str(row["number"]) / "seed_0" / "summary.json").read_text())
        assert row["value"] == seed["best_val_top1"]
    assert len({row["worker"] for row in summary["trials"]}) > 1
    lines = result.stderr.splitlines()
    errors = [line for line in lines if not line.startswith(("trial ", "study "))]
    assert not errors, result.stderr  # no "database is locked", no traceback: only progress lines...
    # ...each whole on its line, though the workers write them at the same moments
    whole = re.compile(rf"trial \d+ complete: value [0-9.]+ \| [^|]+ \| \d+/{TRIALS} finished \| [^|]+")
    assert sum(bool(whole.fullmatch(line)) for line in lines) == TRIALS, result.stderr
    return summary, result.stderr, took


def test_eight_workers_on_the_default_sqlite_storage_reach_exactly_the_target(tmp_path: Path) -> None:
    _summary, _progress, took = _run_many(tmp_path)
    print(f"\nSQLite: {WORKERS} workers, {TRIALS} trials complete in {took:.0f} s")


def test_eight_workers_on_postgresql_reach_exactly_the_target(tmp_path: Path, postgres_url: str) -> None:
    summary, _progress, took = _run_many(tmp_path, "--storage", postgres_url)
    assert summary["storage"].startswith("postgresql+psycopg://pccore:***@")
    print(f"\nPostgreSQL: {WORKERS} workers, {TRIALS} trials complete in {took:.0f} s")


def test_an_sqlite_file_locked_too_long_stops_the_worker_with_a_message(tmp_path: Path, monkeypatch,
                                                                        capsys) -> None:
    # another writer holds the study's SQLite file while a trial runs, longer than a write waits for it
    monkeypatch.setattr(storage_module, "SQLITE_TIMEOUT_S", 1)
    # trials long enough to be still running when the lock is taken, however fast the machine: the worker
    # stops at the trial's next report, at the end of an epoch
    study = write_study(tmp_path, trials=2, fixed={"train.max_batches": 0, "train.epochs": 200})
    out = tmp_path / "out"
    database = out / "study.db"
    held = threading.Event()
    done = threading.Event()

    def hold_the_lock_while_a_trial_runs() -> None:
        def running() -> bool:
            try:
                with sqlite3.connect(database, timeout=5) as connection:
                    return bool(connection.execute("SELECT 1 FROM trials WHERE state = 'RUNNING'").fetchall())
            except sqlite3.Error:
                return False

        wait_until(running, 120, "a running trial")
        connection = sqlite3.connect(database, timeout=5, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        held.set()
        done.wait(120)
        connection.execute("ROLLBACK")
        connection.close()

    holder = threading.Thread(target=hold_the_lock_while_a_trial_runs, daemon=True)
    holder.start()
    try:
        status = main(["tune", str(study), "--out", str(out)])
    finally:
        done.set()
        holder.join(timeout=30)
    assert held.is_set()
    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pccore: error: the study's storage sqlite:///{database.absolute()} stayed locked by "
                          'other writers for 1 s (SQLite\'s "database is locked")'), err
    assert "--storage journal:PATH" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # nothing was recorded complete that did not complete; the same command then finishes the study
    trials = optuna.load_study(study_name="study", storage=f"sqlite:///{database}").get_trials()
    assert not [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    monkeypatch.setattr(storage_module, "SQLITE_TIMEOUT_S", 60)
    write_study(tmp_path, trials=2)
    assert main(["tune", str(study), "--out", str(out), "--grace-period", "1"]) == 0
    assert os.path.exists(out / "best.toml")
