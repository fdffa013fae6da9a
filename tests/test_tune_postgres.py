"""`pccore tune` with a study shared through a real PostgreSQL server (tests/postgres.py starts a throwaway
one): two machines starting together on an empty database, one of them killed; the server stopped while
workers run and started again; Optuna's schema created by many processes at once. Every process the tests
start runs in its own session with a timeout, and is killed with its children when a test ends."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from pccore.cli import main
from pccore.experiments.tune import storage as storage_module
from pccore.experiments.tune.storage import STORAGE_LOST_EXIT, open_storage
from tests.postgres import PASSWORD, postgres_server, wait_until
from tests.test_tune import write_study

pytestmark = pytest.mark.timeout(300)
"""A study, a server or a process that hangs fails its test instead of the suite."""

PROCESS_TIMEOUT_S = 240
KILLED_REASON = "stopped without a result (its worker was killed or lost)"


class Processes:
    """`pccore tune` processes started by a test, each in its own session (its worker processes with it),
    its output in a file; whatever still runs when the test ends is killed, children included."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, *arguments: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([sys.executable, "-m", "pccore.cli", "tune", *arguments], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        process.log = log  # type: ignore[attr-defined]
        process.log_path = self.folder / f"{name}.log"  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    @staticmethod
    def output(process: subprocess.Popen) -> str:
        return process.log_path.read_text()  # type: ignore[attr-defined]

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """SIGKILL to the process and its workers (a machine lost), then reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                self.kill(process)
            with contextlib.suppress(ProcessLookupError):  # its workers, if the process itself ended first
                os.killpg(process.pid, signal.SIGKILL)
            process.log.close()  # type: ignore[attr-defined]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.close()


def _states(server, database: str) -> dict[int, str]:
    """Trial number -> state, read straight from the database (empty before Optuna's tables exist)."""
    try:
        text = server.psql("SELECT number, state FROM trials", database)
    except subprocess.CalledProcessError:
        return {}
    return {int(number): state for number, state in (line.split("|") for line in text.split())}


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _trial_folders(out: Path) -> set[int]:
    folder = out / "trials"
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


def _best_trial_in_recipe(path: Path) -> int:
    header = path.read_text().splitlines()[0]
    match = re.search(r": trial (\d+), validation top-1", header)
    assert match, header
    return int(match.group(1))


def _finished(states: dict[int, str]) -> int:
    return sum(state in ("COMPLETE", "PRUNED") for state in states.values())


# --- two machines, one study ---------------------------------------------------------------------


def test_two_machines_start_together_on_an_empty_database_and_one_is_killed(
        tmp_path: Path, postgres_server, postgres_url: str, processes: Processes, capsys) -> None:
    # 8 one-epoch trials of the digits (every batch: a few seconds each), 2 workers on each machine
    study = write_study(tmp_path, trials=8, fixed={"train.max_batches": 0})
    database = _database(postgres_url)
    out = {machine: tmp_path / f"machine_{machine}" for machine in "ab"}
    command = {machine: [str(study), "--workers", "2", "--out", str(out[machine]), "--storage", postgres_url,
                         "--grace-period", "5"] for machine in "ab"}
    started = {machine: processes.start(machine, *command[machine]) for machine in "ab"}  # the same moment

    def a_runs_a_trial_and_both_joined() -> bool:
        for machine, process in started.items():
            assert process.poll() is None, f"machine {machine} stopped early:\n{processes.output(process)}"
        states = _states(postgres_server, database)
        running_on_a = [n for n in _trial_folders(out["a"]) if states.get(n) == "RUNNING"]
        return bool(running_on_a) and bool(_trial_folders(out["b"]))

    wait_until(a_runs_a_trial_and_both_joined, 180, "both machines to run trials")
    processes.kill(started["a"])  # SIGKILL to machine a's command and its workers
    at_kill = _states(postgres_server, database)
    killed = sorted(n for n in _trial_folders(out["a"]) if at_kill.get(n) == "RUNNING")
    assert killed

    assert started["b"].wait(timeout=PROCESS_TIMEOUT_S) == 0, processes.output(started["b"])
    log_b = processes.output(started["b"])
    for number in killed:
        assert f"trial {number} failed: its worker stopped (no heartbeat for 5 s)" in log_b
    states = _states(postgres_server, database)
    assert all(states[number] == "FAIL" for number in killed)
    assert 8 <= _finished(states) <= 10  # each machine counts on its own: at most one over per machine
    assert set(states) == _trial_folders(out["a"]) | _trial_folders(out["b"])  # every trial ran on one of them
    assert not _trial_folders(out["a"]) & _trial_folders(out["b"])
    assert list(states.values()).count("FAIL") == len(killed)

    # machine a back: the same command finds the study complete, runs nothing and writes its results
    again = processes.start("a_again", *command["a"])
    assert again.wait(timeout=PROCESS_TIMEOUT_S) == 0, processes.output(again)
    assert _states(postgres_server, database) == states
    summaries = {m: json.loads((out[m] / "summary.json").read_text()) for m in "ab"}
    assert summaries["a"]["best_trial"] == summaries["b"]["best_trial"] is not None
    assert _best_trial_in_recipe(out["a"] / "best.toml") == _best_trial_in_recipe(out["b"] / "best.toml") == (
        summaries["b"]["best_trial"])
    assert PASSWORD not in json.dumps(summaries["a"])  # the storage is recorded with its password hidden

    capsys.readouterr()
    assert main(["tune", "show", postgres_url, "--study", "study"]) == 0
    shown = capsys.readouterr().out
    assert f"{list(states.values()).count('FAIL')} failed, 0 running" in shown
    for number in killed:
        assert f"  trial {number}: {KILLED_REASON}" in shown
    assert f"best: trial {summaries['b']['best_trial']}, " in shown
    with capsys.disabled():
        print(f"\ntwo machines: {_finished(states)} finished of 8 ({list(states.values()).count('COMPLETE')} "
              f"complete), {len(killed)} failed (killed: trials {killed}), {_finished(states) - 8} over the target")


@pytest.mark.parametrize("guard", ["advisory lock", "retry"])
def test_many_processes_opening_an_empty_database_at_once_all_get_the_study(
        postgres_server, guard: str, monkeypatch, tmp_path: Path) -> None:
    # Optuna creates its tables, types and version rows when it opens an empty database; opened at the same
    # moment, all but one used to fail ("type studydirection already exists", a duplicate alembic version).
    # Either guard alone must hold: the advisory lock (PostgreSQL) or trying again (any database).
    if guard == "advisory lock":
        monkeypatch.setattr(storage_module, "SCHEMA_ATTEMPTS", 1)
    else:
        monkeypatch.setattr(storage_module, "_schema_lock", lambda url, kwargs: contextlib.nullcontext())
    for attempt in range(3):
        url = postgres_server.create_database(f"race_{guard[0]}_{attempt}")
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def open_and_join(url: str = url, barrier: threading.Barrier = barrier,
                          errors: list[BaseException] = errors) -> None:
            barrier.wait(timeout=60)
            try:
                optuna.create_study(study_name="study", storage=open_storage(url, tmp_path), load_if_exists=True)
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=open_and_join) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors[0]
        assert optuna.study.get_all_study_names(url) == ["study"]


# --- the database goes away ----------------------------------------------------------------------


def test_the_server_stopped_while_workers_run_stops_them_with_one_message_and_the_study_continues_later(
        tmp_path: Path, postgres_programs, processes: Processes) -> None:
    study = write_study(tmp_path, trials=8, fixed={"train.max_batches": 0})
    out = tmp_path / "out"
    with postgres_server(postgres_programs) as server:  # a server of its own: this test stops it
        url = server.create_database("away")
        command = [str(study), "--workers", "2", "--out", str(out), "--storage", url, "--grace-period", "4"]
        first = processes.start("first", *command)

        def some_finished_and_some_running() -> bool:
            assert first.poll() is None, processes.output(first)
            states = list(_states(server, "away").values())
            return states.count("COMPLETE") >= 2 and states.count("RUNNING") >= 1

        wait_until(some_finished_and_some_running, 180, "two complete trials and a running one")
        server.stop("fast")
        stopped_at = time.monotonic()
        status = first.wait(timeout=120)
        took = time.monotonic() - stopped_at
        output = processes.output(first)
        assert status == STORAGE_LOST_EXIT, output
        assert took < 60, f"the workers took {took:.1f} s to stop"
        errors = [line for line in output.splitlines() if line.startswith("pccore")]
        assert len(errors) == 1, output  # one message for the command and its two workers
        shown = f"postgresql+psycopg://pccore:***@127.0.0.1:{server.port}/away"
        assert errors[0].startswith(f"pccore: error: the study's storage {shown} stopped answering (")
        assert "so 2 worker processes stopped" in errors[0]
        assert "run the same command to continue the study" in errors[0]
        for wrong in ("Traceback", "bug in pccore", "UnboundLocalError", "StorageInternalError", PASSWORD):
            assert wrong not in output, output

        server.start()
        states = _states(server, "away")
        lost = sorted(n for n, state in states.items() if state == "RUNNING")
        assert lost and _finished(states) >= 2
        for trial in optuna.load_study(study_name="study", storage=url).get_trials():
            if trial.state == optuna.trial.TrialState.COMPLETE:  # recorded complete only with its result
                seed = json.loads((out / "trials" / str(trial.number) / "seed_0" / "summary.json").read_text())
                assert trial.value == seed["best_val_top1"]
        print(f"\nserver stopped: the workers stopped {took:.1f} s later; {_finished(states)} finished, trials "
              f"{lost} running (lost)")

        # the server back: the same command fails the lost trials and continues the study to its target
        again = processes.start("again", *command)
        assert again.wait(timeout=PROCESS_TIMEOUT_S) == 0, processes.output(again)
        states = _states(server, "away")
        assert _finished(states) == 8
        assert all(states[number] == "FAIL" for number in lost)
        assert list(states.values()).count("FAIL") == len(lost)


def test_one_worker_in_this_process_says_the_same_and_show_names_an_unreachable_storage(
        tmp_path: Path, postgres_programs, capsys) -> None:
    study = write_study(tmp_path, trials=8, fixed={"train.max_batches": 0})
    out = tmp_path / "out"
    with postgres_server(postgres_programs) as server:
        url = server.create_database("alone")

        def stop_once_a_trial_runs() -> None:
            wait_until(lambda: "RUNNING" in _states(server, "alone").values(), 120, "a running trial")
            server.stop("fast")

        stopper = threading.Thread(target=stop_once_a_trial_runs, daemon=True)
        stopper.start()
        assert main(["tune", str(study), "--out", str(out), "--storage", url]) == STORAGE_LOST_EXIT
        stopper.join(timeout=60)
        err = capsys.readouterr().err
        shown = f"postgresql+psycopg://pccore:***@127.0.0.1:{server.port}/alone"
        assert err.startswith(f"pccore: error: the study's storage {shown} stopped answering ("), err
        assert "so the worker stopped" in err and PASSWORD not in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1

        assert main(["tune", "show", url, "--study", "study"]) == STORAGE_LOST_EXIT
        err = capsys.readouterr().err
        assert err.startswith(f"pccore: error: cannot reach the study's storage {shown} ("), err
        assert "Check that the database server runs" in err and PASSWORD not in err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed:UserWarning")
def test_a_heartbeat_outlives_the_server_stopping_for_a_while(tmp_path: Path, postgres_programs) -> None:
    # Optuna's heartbeat thread ends (with a traceback) at its first failed write, and the trial is then
    # failed by others although its worker lives; pccore's storage keeps beating once the server is back.
    with postgres_server(postgres_programs) as server:
        url = server.create_database("beat")
        storage = open_storage(url, tmp_path, grace_period=4)
        trial = optuna.create_study(study_name="study", storage=storage).ask()
        storage.record_heartbeat(trial._trial_id)
        assert storage.lost is None
        server.stop("fast")
        storage.record_heartbeat(trial._trial_id)  # no exception: the failure is kept for the worker
        assert storage.lost is not None
        server.start()
        before = server.psql("SELECT heartbeat FROM trial_heartbeats", "beat")
        time.sleep(1.1)
        storage.record_heartbeat(trial._trial_id)
        assert storage.lost is None
        assert server.psql("SELECT heartbeat FROM trial_heartbeats", "beat") > before
