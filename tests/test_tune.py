"""`pccore tune`: studies of one-epoch trials of a thin model on digits, their storages (SQLite, a journal
file), local worker processes, a worker killed mid-trial, trials that diverge or are refused, the checks of
a study file, and `pccore tune show`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

import pccore
from pccore.cli import main
from pccore.experiments.tune.storage import HEARTBEAT_ATTR, JOURNAL_PREFIX
from pccore.experiments.tune.worker import FAILURES_IN_A_ROW, Worker
from pccore.recipe import load_recipe
from tests.test_training import _toml, write_recipe

pytestmark = pytest.mark.timeout(180)
"""A study or sweep that never ends fails the test instead of hanging the suite."""

SPACE = {
    "inference.lr": {"low": 0.05, "high": 0.5, "log": True},
    "inference.momentum": {"choices": [0.0, 0.1, 0.3]},
}


def write_study(folder: Path, trials: int = 3, space: dict | None = None, fixed: dict | None = None,
                **top: Any) -> Path:
    """A study of the tiny digits recipe (one epoch of two batches, a 20% validation split) in
    `folder/study.toml`; `top` adds top-level keys (sampler, seed, name...)."""
    write_recipe(folder, epochs=1, max_batches=2, tensorboard=False, log_checkpoints=False,
                 data_validation_fraction=0.2)
    settings = {"recipe": "tiny.toml", "trials": trials, "sampler": "random", "seed": 0, **top}
    lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
    lines.append("[set]")
    lines += [f'"{key}" = {_toml(value)}' for key, value in (fixed or {}).items()]
    lines.append("[space]")
    for key, entry in (SPACE if space is None else space).items():
        inner = ", ".join(f"{k} = {_toml(v)}" for k, v in entry.items()) if isinstance(entry, dict) else None
        lines.append(f'"{key}" = ' + ("{ " + inner + " }" if inner is not None else _toml(entry)))
    path = folder / "study.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def _sqlite(out: Path) -> str:
    return f"sqlite:///{out / 'study.db'}"


def _trials(storage: Any, name: str = "study") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


# --- a study from start to end -------------------------------------------------------------------


def test_a_study_finishes_its_trials_writes_its_summary_and_a_best_recipe_that_runs(tmp_path: Path, capsys) -> None:
    study = write_study(tmp_path, trials=3)
    out = tmp_path / "out"
    assert main(["tune", str(study), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("trial ") and " complete: value " in line for line in lines) == 3
    summary = _summary(out)
    assert (summary["n_complete"], summary["n_pruned"], summary["n_failed"]) == (3, 0, 0)
    rows = summary["trials"]
    assert [row["number"] for row in rows] == [0, 1, 2]
    for row in rows:  # each trial is an ordinary run directory, scored by its validation top-1
        seed = json.loads((out / "trials" / str(row["number"]) / "seed_0" / "summary.json").read_text())
        assert row["value"] == seed["best_val_top1"]
        assert row["test_top1_at_best_val"] == seed["test_top1_at_best_val"]
        assert row["run_dir"] == str((out / "trials" / str(row["number"])).absolute())
        saved = load_recipe(out / "trials" / str(row["number"]) / "recipe.toml")
        assert saved.inference.lr == row["params"]["inference.lr"]
        assert saved.inference.momentum == row["params"]["inference.momentum"]
    best = max(rows, key=lambda row: row["value"])
    assert summary["best_value"] == best["value"]
    assert summary["best_params"] == best["params"] and set(best["params"]) == set(SPACE)
    assert summary["best_trial"] == next(r["number"] for r in rows if r["value"] == best["value"])

    best_recipe = out / "best.toml"
    assert main(["recipe", "check", str(best_recipe)]) == 0
    recipe = load_recipe(best_recipe)
    assert recipe.inference.lr == summary["best_params"]["inference.lr"]
    assert recipe.run.name == "study_best"
    assert main(["run", str(best_recipe), "--out", str(tmp_path / "again")]) == 0
    capsys.readouterr()

    # the Python API returns the summary it writes
    assert pccore.search_study(study, out=out, quiet=True) == {**summary, "out_dir": str(out)}
    # the same command again: the study has its trials, nothing runs; more trials continue it
    assert main(["tune", str(study), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert " 3 of 3 finished trials so far" in captured.err  # progress on stderr, the summary on stdout
    assert json.loads(captured.out)["n_complete"] == 3
    assert main(["tune", str(study), "--out", str(out), "--trials", "4"]) == 0
    assert [t.number for t in _trials(_sqlite(out))] == [0, 1, 2, 3]
    assert _summary(out)["n_complete"] == 4


@pytest.mark.timeout(180)
def test_two_worker_processes_share_one_sqlite_study(tmp_path: Path, capsys) -> None:
    # trials of twenty batches, so that both workers are busy at once
    study = write_study(tmp_path, trials=4, fixed={"train.max_batches": 20})
    out = tmp_path / "out"
    assert main(["tune", str(study), "--out", str(out), "--workers", "2"]) == 0
    trials = _trials(_sqlite(out))
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0", "1", "2", "3"]
    assert _summary(out)["n_complete"] == 4


def test_a_journal_file_storage_holds_the_study_and_show_finds_it(tmp_path: Path, capsys) -> None:
    study = write_study(tmp_path, trials=2)
    out = tmp_path / "out"
    journal = tmp_path / "study.log"
    assert main(["tune", str(study), "--out", str(out), "--storage", f"{JOURNAL_PREFIX}{journal}"]) == 0
    assert not (out / "study.db").exists()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    assert [t.state.name for t in _trials(storage)] == ["COMPLETE", "COMPLETE"]
    capsys.readouterr()
    for target in (str(out), f"{JOURNAL_PREFIX}{journal}"):
        assert main(["tune", "show", target, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["n_complete"] == 2 and len(shown["top_trials"]) == 2


def _running(storage: Any) -> bool:
    try:
        return any(t.state == optuna.trial.TrialState.RUNNING for t in _trials(storage))
    except KeyError:  # the study is not created yet
        return False


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_trial_loses_only_that_trial(tmp_path: Path, capsys) -> None:
    study = write_study(tmp_path, trials=2, fixed={"train.epochs": 200, "train.max_batches": 0})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pccore.cli", "tune", str(study), "--out", str(out), "--grace-period", "1"]
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not ((out / "trials" / "0" / "seed_0").is_dir() and _running(_sqlite(out))):
            assert worker.poll() is None and time.monotonic() < deadline, "the worker never started a trial"
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    # the same command again, with short trials: the lost trial is failed and the study completes
    write_study(tmp_path, trials=2)
    assert main(["tune", str(study), "--out", str(out), "--grace-period", "1"]) == 0
    assert [t.state.name for t in _trials(_sqlite(out))] == ["FAIL", "COMPLETE", "COMPLETE"]
    summary = _summary(out)
    assert (summary["n_complete"], summary["n_failed"]) == (2, 1)
    assert summary["trials"][0]["reason"] == "stopped without a result (its worker was killed or lost)"
    assert "trial 0 failed: its worker stopped (no heartbeat for 1 s)" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_a_journal_trial_whose_heartbeat_stopped_is_failed_and_the_study_goes_on(tmp_path: Path, capsys) -> None:
    # Optuna has no heartbeat for journal storages: pccore keeps its own in the trial's attributes. A trial
    # left RUNNING by a worker whose last heartbeat is a minute old:
    study = write_study(tmp_path, trials=2)
    journal = tmp_path / "study.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    handle = optuna.create_study(study_name="study", storage=storage, direction="maximize")
    handle.ask().set_user_attr(HEARTBEAT_ATTR, time.time() - 60)
    out = tmp_path / "out"
    assert main(["tune", str(study), "--out", str(out), "--grace-period", "30",
                 "--storage", f"{JOURNAL_PREFIX}{journal}"]) == 0
    assert [t.state.name for t in _trials(storage)] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "trial 0 failed: its worker stopped (no heartbeat for 30 s)" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_a_trial_left_running_before_its_first_heartbeat_is_failed_and_the_study_goes_on(tmp_path: Path,
                                                                                        capsys) -> None:
    # a worker killed (or cut off from the database) between starting a trial and its first heartbeat:
    # Optuna's check skips a trial without heartbeats, which would then stay RUNNING for ever
    study = write_study(tmp_path, trials=2)
    out = tmp_path / "out"
    out.mkdir()
    optuna.create_study(study_name="study", storage=_sqlite(out), direction="maximize").ask()
    assert main(["tune", str(study), "--out", str(out), "--grace-period", "1"]) == 0
    assert [t.state.name for t in _trials(_sqlite(out))] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "trial 0 failed: its worker stopped (no heartbeat for 1 s)" in capsys.readouterr().out


# --- trials that diverge, are refused, are pruned ------------------------------------------------


def test_diverging_trials_are_pruned_and_refused_ones_failed_with_their_reason(tmp_path: Path) -> None:
    # inference.lr = 1e9 diverges in the first batch; bf16 is a CUDA option, refused on the recipe's CPU
    space = {"inference.lr": {"choices": [0.1, 1e9]}, "run.precision": {"choices": ["fp32", "bf16"]}}
    study = write_study(tmp_path, trials=3, space=space, seed=1)
    out = tmp_path / "out"
    assert main(["tune", str(study), "--out", str(out)]) == 0
    summary = _summary(out)
    states = {}
    for row in summary["trials"]:
        precision, lr = row["params"]["run.precision"], row["params"]["inference.lr"]
        if precision == "bf16":
            expected, reason = "FAIL", 'run.precision = "bf16" needs a CUDA device, but the run is on cpu'
        elif lr == 1e9:
            expected, reason = "PRUNED", "training diverged in epoch 1, batch 1 (seed 0)"
        else:
            expected, reason = "COMPLETE", None
        assert row["state"] == expected
        assert reason is None or reason in row["reason"]
        states[expected] = states.get(expected, 0) + 1
    assert set(states) == {"FAIL", "PRUNED", "COMPLETE"}, "the seed no longer draws every case: choose another"
    assert summary["n_complete"] + summary["n_pruned"] == 3


def test_a_worker_stops_after_trials_fail_in_a_row(tmp_path: Path, capsys) -> None:
    study = write_study(tmp_path, trials=3, space={"run.precision": {"choices": ["bf16"]}})
    out = tmp_path / "out"
    assert main(["tune", str(study), "--out", str(out)]) == 1
    assert f"{FAILURES_IN_A_ROW} trials in a row failed, the last because: " in capsys.readouterr().err
    assert _summary(out)["n_failed"] == FAILURES_IN_A_ROW


class _Trial:
    """What the pruning hook uses of an Optuna trial: report and should_prune."""

    def __init__(self, prune_at: int) -> None:
        self.prune_at = prune_at
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.reports[-1][1] >= self.prune_at


def test_the_first_seed_reports_validation_top1_each_epoch_and_the_pruner_stops_the_run(tmp_path: Path) -> None:
    from pccore.experiments.tune.study import read_study
    from pccore.run.training import EpochReport

    study = read_study(write_study(tmp_path, pruner="median"))
    recipe = load_recipe(write_recipe(tmp_path, seeds=[3, 4]))
    worker = Worker(study, None, tmp_path, 3, 10)
    trial = _Trial(prune_at=2)
    hook = worker._pruning_hook(trial, recipe)
    assert hook(EpochReport(3, 1, 5, 0.5, 0.8, 0.9, 0.75, 0.9)) is None
    assert hook(EpochReport(4, 1, 5, 0.5, 0.1, 0.9, 0.15, 0.9)) is None  # a later seed does not report
    assert hook(EpochReport(3, 2, 5, 0.5, 0.8, 0.9, 0.7, 0.9)) == (
        "pruned by the median pruner after epoch 2 (validation top-1 0.7000)")
    assert trial.reports == [(0.75, 1), (0.7, 2)]


def test_tpe_samples_at_random_for_its_startup_trials_and_then_takes_over(tmp_path: Path, capsys) -> None:
    """startup_trials = 1: trial 0 is drawn at random as with Optuna's default start of 10, the trials
    after it by TPE (from the same per-trial seeds), so they differ."""
    params = {}
    for startup in (1, 10):
        folder = tmp_path / f"startup{startup}"
        folder.mkdir()
        study = write_study(folder, trials=3, sampler="tpe", pruner="none", startup_trials=startup)
        assert main(["tune", str(study), "--out", str(folder / "out")]) == 0
        trials = sorted(_trials(_sqlite(folder / "out")), key=lambda t: t.number)
        params[startup] = [t.params for t in trials]
    capsys.readouterr()
    assert params[1][0] == params[10][0]
    assert params[1][1:] != params[10][1:]


# --- checks before any trial ---------------------------------------------------------------------

BAD_STUDIES = [
    ({"fixed": {"inference.lrr": 0.1}},
     r'study.toml \[set\] inference.lrr=0.1: unknown key inference.lrr \(inference "states"\); did you mean "lr"\?'),
    ({"space": {"optimizer.lrr": {"low": 0.1, "high": 0.2}}}, r'\[space\] optimizer.lrr=0.1: unknown key '
                                                              r'optimizer.lrr; did you mean "lr"\?'),
    ({"space": {"infrence.lr": {"low": 0.1, "high": 0.2}}}, r"unknown section 'infrence'; did you mean "
                                                            r'"inference"\?'),
    ({"fixed": {"model.name": "vgg5"}, "space": {"model.hidden": {"choices": ["a"]}}},
     r'\[space\] model.hidden="a": unknown key model.hidden \(architecture "vgg5"\); valid: name, output_energy, '
     r"activation, width$"),
    ({"fixed": {"optimizer.warmup": 1.5}}, r"\[set\] optimizer.warmup=1.5: optimizer.warmup: expected a number "
                                           r"in \[0, 1\], got 1.5"),
    ({"space": {"inference.momentum": {"low": 0.0, "high": 1.0}}}, r"\[space\] inference.momentum=1.0: "
                                                                   r"inference.momentum: expected a number in"),
    ({"space": {"inference.lr": {"low": 0.5, "high": 0.5}}}, r"\[space\] inference.lr: low must be below high"),
    ({"space": {"inference.lr": {"low": 0.0, "high": 0.5, "log": True}}}, r"inference.lr: a log range needs low > 0"),
    ({"space": {"inference.steps": {"low": 1, "high": 4.0}}}, r"inference.steps: low and high must both be "
                                                              r"integers \(an integer range\) or both numbers"),
    ({"space": {"inference.steps": {"low": 1}}}, r"inference.steps: a range needs both low and high"),
    ({"space": {"inference.lr": {"lo": 0.1, "high": 0.2}}}, r"\[space\] inference.lr: unknown key in \[space\] "
                                                            r'inference.lr; did you mean "low" or "log"\?'),
    ({"space": {"inference.momentum": {"choices": []}}}, r"inference.momentum: choices must be a non-empty list"),
    ({"space": {"inference.momentum": {"choices": [0, 0.1]}}}, r"inference.momentum: choices must all have one "
                                                               r"type, got \[0, 0.1\]; write every number with"),
    ({"space": {"inference.lr": 0.5}}, r"\[space\] inference.lr: expected a range \{ low = ..., high = ... \}"),
    ({"space": {}}, r"\[space\] is empty"),
    ({"fixed": {"inference.lr": 0.1}, "space": {"inference.lr": {"low": 0.05, "high": 0.5}}},
     r"inference.lr is in both \[set\] and \[space\]"),
    ({"space": {"data.validation_fraction": {"low": 0.1, "high": 0.3}}}, r"the validation split cannot be searched"),
    ({"fixed": {"data.validation_fraction": 0.0}}, r"the tuner optimises the validation top-1, but .* has "
                                                   r"data.validation_fraction = 0; add"),
    ({"trails": 3}, r'study.toml: trails: unknown key; did you mean "trials"\?'),
    ({"sampler": "cmaes"}, r'study.toml: sampler: expected one of "tpe", "random", got "cmaes"'),
    ({"startup_trials": 0}, r"study.toml: startup_trials: expected an integer >= 1, got 0"),
]


@pytest.mark.parametrize(("change", "message"), BAD_STUDIES, ids=[m[:40] for _, m in BAD_STUDIES])
def test_a_bad_study_file_is_refused_before_any_trial_naming_the_key(tmp_path: Path, change: dict, message: str,
                                                                      capsys) -> None:
    study = write_study(tmp_path, **change)
    out = tmp_path / "out"
    assert main(["tune", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # (after any note the recipe loader prints)
    assert err.startswith("pccore: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_a_study_file_with_a_repeated_key_names_it_with_its_line(tmp_path: Path, capsys) -> None:
    study = write_study(tmp_path)
    study.write_text("trials = 5\n" + study.read_text())  # the file's own `trials` is now on line 3
    assert main(["tune", str(study), "--check"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"pccore: error: {study}: invalid TOML: trials is defined twice (line 3)"
    )


def test_check_validates_a_study_and_runs_nothing(tmp_path: Path, capsys) -> None:
    study = write_study(tmp_path, fixed={"model.name": "mlp", "model.hidden": [8]},
                        space={"model.activation": {"choices": ["tanh", "relu"]}})
    assert main(["tune", str(study), "--check"]) == 0
    assert capsys.readouterr().out.startswith(f"OK {study} (study study): recipe ")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("storage", "status", "message"), [
    ("nonsense", 2, r"--storage nonsense: expected an SQLAlchemy URL"),
    ("journal:/no/such/folder/x.log", 2, r"the folder /no/such/folder does not exist"),
    ("postgresql+psycopg2://user:secret@localhost/db", 1, r"user:\*\*\*@localhost/db needs the database driver "
                                                          r"'psycopg2', which is not installed: pip install psycopg"),
])
def test_a_storage_that_cannot_be_opened_is_named(tmp_path: Path, storage: str, status: int, message: str,
                                                  capsys) -> None:
    assert main(["tune", str(write_study(tmp_path)), "--out", str(tmp_path / "o"), "--storage", storage]) == status
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "secret" not in err


def test_an_output_folder_holding_other_runs_is_refused(tmp_path: Path, capsys) -> None:
    study = write_study(tmp_path, trials=1)
    out = tmp_path / "out"
    (out / "trials" / "0").mkdir(parents=True)
    (out / "trials" / "0" / "recipe.toml").write_text("")
    assert main(["tune", str(study), "--out", str(out)]) == 2
    assert "holds runs (0) that are not trials of the study 'study'" in capsys.readouterr().err


# --- pccore tune show ----------------------------------------------------------------------------


def test_show_lists_the_top_trials_importances_and_writes_optunas_figures(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["tune", str(write_study(tmp_path, trials=3)), "--out", str(out)]) == 0
    capsys.readouterr()
    figures = tmp_path / "figures"
    figures.mkdir()
    assert main(["tune", "show", str(out), "--top", "2", "--plot", str(figures)]) == 0
    text = capsys.readouterr().out
    summary = _summary(out)
    ranked = sorted(summary["trials"], key=lambda row: row["value"], reverse=True)
    table = [line.split() for line in text.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert [int(row[1]) for row in table] == [ranked[0]["number"], ranked[1]["number"]]
    assert "parameter importances (Optuna's default evaluator):" in text
    assert sorted(p.name for p in figures.iterdir()) == ["history.png", "importances.png", "parallel_coordinate.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in figures.iterdir())
    assert main(["tune", "show", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["importances"]) == set(SPACE)
    assert abs(sum(data["importances"].values()) - 1.0) < 1e-9


def test_show_says_when_importances_need_more_trials(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["tune", str(write_study(tmp_path, trials=1)), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["tune", "show", str(out)]) == 0
    assert "parameter importances need at least 2 complete trials (1 so far)" in capsys.readouterr().out


def test_show_asks_which_study_when_a_storage_holds_several(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'many.db'}"
    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=url)
    assert main(["tune", "show", url]) == 2
    assert "holds 2 studies (a, b): choose one with --study NAME" in capsys.readouterr().err
    assert main(["tune", "show", url, "--study", "b"]) == 0
    assert "no complete trial yet" in capsys.readouterr().out


def test_show_lists_the_failed_trials_with_their_reasons(tmp_path: Path, capsys, monkeypatch) -> None:
    from pccore.experiments.tune import results

    url = f"sqlite:///{tmp_path / 'failed.db'}"
    handle = optuna.create_study(study_name="s", storage=url, direction="maximize")
    handle.tell(handle.ask(), 0.5)
    refused = handle.ask()
    refused.set_user_attr("reason", 'run.precision = "bf16" needs a CUDA device')
    handle.tell(refused, state=optuna.trial.TrialState.FAIL)
    for _ in range(2):  # its worker killed: no reason recorded
        handle.tell(handle.ask(), state=optuna.trial.TrialState.FAIL)
    monkeypatch.setattr(results, "SHOWN_FAILURES", 2)
    assert main(["tune", "show", url]) == 0
    text = capsys.readouterr().out
    assert "1 complete, 0 pruned, 3 failed, 0 running" in text
    assert ('failed trials:\n  trial 1: run.precision = "bf16" needs a CUDA device\n'
            "  trial 2: stopped without a result (its worker was killed or lost)\n"
            "  ... and 1 more (pccore tune show --json lists them all)\n") in text


# --- worker processes ----------------------------------------------------------------------------


@pytest.mark.parametrize(("devices", "message"), [
    ("gpu", "--devices gpu: 'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
    (",", "--devices ',': expected a comma-separated list such as cuda:0,cuda:1"),
])
def test_devices_are_checked_before_anything_runs(tmp_path: Path, devices: str, message: str, capsys) -> None:
    assert main(["tune", str(write_study(tmp_path)), "--out", str(tmp_path / "o"), "--devices", devices]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_workers_share_the_cores_and_take_devices_round_robin(monkeypatch) -> None:
    from pccore.parallel import processes

    monkeypatch.setattr(processes.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [processes.threads_per_worker(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert processes.worker_env(3)["OMP_NUM_THREADS"] == "3"
    assert [processes.device_for(["cuda:0", "cuda:1"], i) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert processes.device_for([], 5) is None
