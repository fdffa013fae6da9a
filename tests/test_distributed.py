"""Data-parallel training: torchrun and `pccore run --nproc` on the CPU with gloo, compared with one process.

The processes are started with torch's own launcher (`python -m torch.distributed.run --standalone`, which
picks a free port, or `pccore run --nproc`, which uses torch's launcher API); each such test has a hard
timeout. The models are tiny MLPs on the digits in float64, so that a 2-process run and a 1-process run of
the same recipe can be compared to 1e-9.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from pccore.cli import main
from pccore.core.components import Augmentation, ImageData
from pccore.core.errors import PccoreError, UsageError
from pccore.parallel import distributed
from pccore.parallel.distributed import PeerFailed, launch_environment, shard_bounds, timeout_seconds
from pccore.parallel.launch import _failure_status
from pccore.run import seeds
from pccore.run.checkpoint import load_checkpoint
from pccore.run.data import BatchFeeder
from pccore_plugins.normalization import FreezableBatchNorm2d
from tests.test_training import write_recipe

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "GROUP_RANK", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE",
                      "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")
TOLERANCE = 1e-9
"""Largest difference between the weights of a 2-process and a 1-process run (float64)."""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE: torch 2.14's restarted workers otherwise often read the dead
    # workers' addresses from the store they share with the launcher (docs/distributed.md)
    return {**env, "OMP_NUM_THREADS": "1", "PCCORE_DIST_TIMEOUT": "60", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            **extra}


def _torchrun(args: list[str], cwd: Path, timeout: float = 200) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc-per-node 2 SCRIPT ARGS...`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _recipe(folder: Path, **changes: Any) -> Path:
    """write_recipe's tiny digits MLP in float64, global batch 64 (uneven shards in the last batch), test
    batches of 101 (uneven shards), S+F without normalisation, unless `changes` say otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"run_dtype": "float64", "data_batch_size": 64, "data_eval_batch_size": 101, "every": 5,
                **changes}
    return write_recipe(folder, **settings)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _history(run_dir: Path, seed: int) -> list[dict[str, float]]:
    return json.loads((run_dir / f"seed_{seed}" / "summary.json").read_text())["history"]


def _assert_same_training(one: Path, two: Path, seeds: list[int]) -> None:
    """Same weights (to 1e-9), the same test accuracies (exact counts) and losses (to 1e-12) per epoch."""
    for seed in seeds:
        assert _largest_difference(_weights(one / f"seed_{seed}" / "checkpoint.pt"),
                                   _weights(two / f"seed_{seed}" / "checkpoint.pt")) <= TOLERANCE
        for a, b in zip(_history(one, seed), _history(two, seed), strict=True):
            assert (a["epoch"], a["top1"], a["top5"]) == (b["epoch"], b["top1"], b["top5"])
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-12, abs=1e-12)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)).split("events.out.tfevents")[0] for p in folder.rglob("*") if p.is_file()}


# --- what each rank sees (one torchrun launch of tests/distributed_worker.py) ------------------------------


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> SimpleNamespace:
    """Four epochs of ten batches (one seed) and its uninterrupted 1-process run."""
    root = tmp_path_factory.mktemp("long")
    recipe = _recipe(root / "recipe", epochs=4, max_batches=10, every=5)
    assert main(["run", str(recipe), "--out", str(root / "whole")]) == 0
    return SimpleNamespace(root=root, recipe=recipe, whole=root / "whole" / "seed_0" / "checkpoint.pt")


class _StopInSecondEpoch(BatchFeeder):
    """A training feeder that is interrupted (Ctrl-C) in the second batch of the second epoch."""

    def epoch(self, seed, epoch):
        for i, batch in enumerate(super().epoch(seed, epoch)):
            if self.train and epoch == 1 and i == 1:
                raise KeyboardInterrupt
            yield batch


@pytest.fixture(scope="module")
def worker(tmp_path_factory, long_run) -> SimpleNamespace:
    """One 2-process launch of tests/distributed_worker.py, and the 1-process runs to compare with:

    - sf: `pccore run` of S+F without normalisation, two seeds, two full epochs (global batch 64: the last
      batch of 29 splits 15/14; test batches of 101 split 51/50);
    - bf, bf_sync, pc, ipc: BatchNorm Freezing with per-rank and with synchronised statistics, standard PC,
      incremental PC (batches of 33 split 17/16);
    - a divergence on rank 1, errors between ranks, synchronised BatchNorm on shards of 3 and 2;
    - `pccore bench`, and `pccore run --resume` of a 1-process run interrupted in its second epoch.
    """
    root = tmp_path_factory.mktemp("worker")
    recipes, out = root / "recipes", root / "out"
    out.mkdir()
    common = {"data_batch_size": 33, "max_batches": 4, "every": 2}
    for name, changes in {
        "sf": {"seeds": [0, 1], "epochs": 2, "max_batches": 0},
        "bf": {**common, "normalization": "frozen"},
        "bf_sync": {**common, "normalization": "frozen", "normalization_sync": True},
        "pc": {**common, "update_name": "standard", "precision_name": "constant"},
        "ipc": {**common, "update_name": "standard",
                "inference": {"name": "incremental", "steps": 3, "lr": 0.1, "momentum": 0.1}},
    }.items():
        _recipe(recipes / name, **changes).rename(recipes / f"{name}.toml")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(seeds, "BatchFeeder", _StopInSecondEpoch)
        assert main(["run", str(long_run.recipe), "--out", str(root / "cut")]) == 130
    assert load_checkpoint(root / "cut" / "seed_0" / "checkpoint.pt")["state"]["epochs_done"] == 1
    start = time.perf_counter()
    done = _torchrun([str(WORKER), str(recipes), str(out)], cwd=root)
    seconds = time.perf_counter() - start
    for name in ("sf", "bf_sync", "pc", "ipc"):
        assert main(["run", str(recipes / f"{name}.toml"), "--out", str(root / f"{name}_one")]) == 0
    ranks = [json.loads((out / f"rank{r}.json").read_text()) if (out / f"rank{r}.json").exists() else None
             for r in (0, 1)]
    return SimpleNamespace(root=root, out=out, done=done, ranks=ranks, seconds=seconds, whole=long_run.whole)


def _worker_ok(worker) -> None:
    assert worker.done.returncode == 0 and None not in worker.ranks, worker.done.stderr[-3000:]


@pytest.mark.timeout(300)
def test_two_processes_train_exactly_like_one(worker) -> None:
    _worker_ok(worker)
    assert [r["sf"]["status"] for r in worker.ranks] == [0, 0]
    one, two = worker.root / "sf_one", worker.out / "sf"
    _assert_same_training(one, two, [0, 1])
    one_summary = json.loads((one / "summary.json").read_text())
    two_summary = json.loads((two / "summary.json").read_text())
    assert (one_summary["world_size"], two_summary["world_size"]) == (1, 2)
    assert (two_summary["top1_mean"], two_summary["top5_mean"]) == (one_summary["top1_mean"], one_summary["top5_mean"])
    assert json.loads((two / "run.json").read_text())["status"] == "finished"


@pytest.mark.timeout(300)
def test_rank_zero_alone_writes_files_and_prints(worker) -> None:
    _worker_ok(worker)
    one, two = worker.root / "sf_one", worker.out / "sf"
    # the same files as one process writes, one events file per seed
    assert _files(two) == _files(one)
    assert len(list(two.glob("seed_0/events.out.tfevents*"))) == 1
    zero, other = (r["sf"]["stdout"] for r in worker.ranks)
    assert other == ""
    assert zero.count(f"run directory: {two}") == 1 and zero.count("seed 1 epoch 2/2 loss") == 1
    assert "data-parallel over 2 processes: data.batch_size = 64 is the global batch" in zero


@pytest.mark.timeout(300)
def test_standard_pc_in_two_processes_trains_like_one(worker) -> None:
    _worker_ok(worker)
    _assert_same_training(worker.root / "pc_one", worker.out / "pc", [0])


@pytest.mark.timeout(300)
def test_incremental_pc_in_two_processes_trains_like_one(worker) -> None:
    """iPC sums the gradients across processes at every inference step (zeros for the inactive blocks, so
    that every process holds back the same tensors): the model follows the one-process run."""
    _worker_ok(worker)
    _assert_same_training(worker.root / "ipc_one", worker.out / "ipc", [0])


@pytest.mark.timeout(300)
def test_synchronised_batchnorm_freezing_trains_like_one_process(worker) -> None:
    _worker_ok(worker)
    _assert_same_training(worker.root / "bf_sync_one", worker.out / "bf_sync", [0])


@pytest.mark.timeout(300)
def test_batchnorm_freezing_statistics_are_identical_on_every_rank(worker) -> None:
    _worker_ok(worker)
    zero, one = (torch.load(worker.out / f"bf_rank{r}.pt", weights_only=True)[0] for r in (0, 1))
    statistics = [k for k in zero if "running_" in k]
    assert statistics and all(torch.equal(zero[k], one[k]) for k in zero)
    assert all(torch.equal(zero[k], v) for k, v in _weights(worker.out / "bf" / "seed_0" / "checkpoint.pt").items())
    # per-rank batch statistics: the model differs from the synchronised run's
    synchronised = torch.load(worker.out / "bf_sync_rank0.pt", weights_only=True)[0]
    assert max(float((zero[k] - synchronised[k]).abs().max()) for k in statistics) > 1e-6


@pytest.mark.timeout(300)
def test_a_divergence_on_one_rank_stops_every_rank_with_the_same_message(worker) -> None:
    _worker_ok(worker)
    zero, one = (r["divergence"] for r in worker.ranks)
    assert zero["message"] is not None and zero["message"] == one["message"]
    assert zero["message"].startswith("training diverged in epoch 1, batch 2 (seed 0): every layer's energy")
    assert (zero["shared"], one["shared"]) == (True, True)
    info = json.loads((worker.out / "diverged" / "run.json").read_text())
    assert info["status"] == "failed" and info["error"].startswith("training diverged in epoch 1, batch 2")


@pytest.mark.timeout(300)
def test_errors_reach_every_rank(worker) -> None:
    _worker_ok(worker)
    zero, one = (r["errors"] for r in worker.ranks)
    # the same error on every rank, marked as one that rank 0 reports for all
    assert zero["from_rank_zero"] == one["from_rank_zero"] == ["UsageError", "rank 0 cannot do this", True]
    assert zero["agree"] == ["PeerFailed", "rank 1 failed while testing agreement (its message says why).", True]
    assert one["agree"] == ["UsageError", "rank 1 failed on its own", False]
    assert zero["from_rank_zero_value"] == one["from_rank_zero_value"] == {"made by": 0}


@pytest.mark.timeout(300)
def test_synchronised_batchnorm_on_uneven_shards_matches_the_whole_batch(worker) -> None:
    _worker_ok(worker)
    for rank, result in enumerate(r["batch_norm"] for r in worker.ranks):
        assert result["shard"] == (3, 2)[rank]
        for key in ("output", "input_grad", "weight_grad", "bias_grad", "running_mean", "running_var",
                    "frozen_output"):
            assert result[key] < 1e-12, (rank, key, result[key])
        assert result["tracked"] == 1 and result["frozen_untouched"]


@pytest.mark.timeout(300)
def test_a_one_process_checkpoint_resumes_in_two_processes(worker) -> None:
    _worker_ok(worker)
    zero, one = (r["resume"] for r in worker.ranks)
    assert (zero["status"], one["status"]) == (0, 0)
    assert "seed 0: resuming after epoch 1" in zero["stdout"] and one["stdout"] == ""
    cut = worker.root / "cut"
    assert _largest_difference(_weights(worker.whole), _weights(cut / "seed_0" / "checkpoint.pt")) <= TOLERANCE
    assert json.loads((cut / "run.json").read_text())["status"] == "finished"


@pytest.mark.timeout(300)
def test_bench_under_torchrun_reports_the_allreduce(worker) -> None:
    _worker_ok(worker)
    zero, one = (r["bench"] for r in worker.ranks)
    assert (zero["status"], one["status"], one["stdout"]) == (0, 0, "")  # rank 0 alone prints
    report = json.loads(zero["stdout"])
    gradient_bytes = ((64 * 32 + 32) + (32 * 10 + 10)) * 8  # the MLP 64 -> 32 -> 10 in float64
    assert report["world_size"] == 2 and report["batch_size"] == 64
    assert report["gradient_mb"] == gradient_bytes / 2**20
    assert report["ring_mb_per_rank"] == 2 * (2 - 1) / 2 * gradient_bytes / 2**20
    for name in ("pc", "bp"):
        assert 0 < report[f"{name}_allreduce_s"] <= report[f"{name}_step_s"]
        assert report[f"{name}_allreduce_share"] == report[f"{name}_allreduce_s"] / report[f"{name}_step_s"]
    assert report["pc_peak_mb"] is None  # CPU memory is not measured under torchrun


# --- failures, restarts and resuming ------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                children += [int(entry.name), *_descendants(int(entry.name))]
    return children


def _rank_pids(pid: int) -> dict[int, int]:
    """The training processes under `pid` by rank (from their environment)."""
    ranks = {}
    for child in _descendants(pid):
        try:
            env = dict(item.split("=", 1) for item in
                       (Path(f"/proc/{child}/environ").read_bytes().decode(errors="replace").split("\0"))
                       if "=" in item)
        except OSError:
            continue
        if "RANK" in env and env.get("TORCHELASTIC_RUN_ID"):
            ranks[int(env["RANK"])] = child
    return ranks


def _kill_rank_one_after_first_checkpoint(process: subprocess.Popen, checkpoint: Path) -> float:
    """Once `checkpoint` exists, stop rank 0 (so the run cannot move on), kill rank 1, let rank 0 go on;
    returns the time of the kill."""
    deadline = time.monotonic() + 90
    while not checkpoint.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    ranks = _rank_pids(process.pid)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[0], signal.SIGSTOP)
    try:
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
    finally:
        os.kill(ranks[0], signal.SIGCONT)
    return killed


@linux_only
@pytest.mark.timeout(240)
def test_a_killed_rank_stops_the_run_which_resumes_in_one_process(long_run, capsys) -> None:
    out = long_run.root / "killed"
    process = subprocess.Popen([sys.executable, "-m", "pccore", "run", str(long_run.recipe), "--nproc", "2",
                                "--out", str(out)], cwd=long_run.root, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        killed = _kill_rank_one_after_first_checkpoint(process, out / "seed_0" / "checkpoint.pt")
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert time.monotonic() - killed < 30
    assert process.returncode == 1
    assert "pccore: error: the training process of rank 1 (pid " in err and ") was killed by SIGKILL" in err
    assert "Traceback" not in err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] in ("failed", "interrupted")
    saved = load_checkpoint(out / "seed_0" / "checkpoint.pt")["state"]["epochs_done"]
    assert 1 <= saved < 4
    # the 2-process checkpoint resumes in one process and ends where an uninterrupted run ends
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    assert f"seed 0: resuming after epoch {saved}" in capsys.readouterr().out
    assert _largest_difference(_weights(long_run.whole), _weights(out / "seed_0" / "checkpoint.pt")) <= TOLERANCE


@linux_only
@pytest.mark.timeout(240)
def test_torchrun_restarts_continue_the_same_run_directory(long_run) -> None:
    """The restarted processes find the failed attempt's run in --out and continue it."""
    cwd = long_run.root / "restart"
    cwd.mkdir()
    run_dir = cwd / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "1", "-m", "pccore", "run", str(long_run.recipe), "--out", "run"]
    process = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        _kill_rank_one_after_first_checkpoint(process, run_dir / "seed_0" / "checkpoint.pt")
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    assert "torchrun restarted the processes: continuing run" in out
    assert "seed 0: resuming after epoch" in out
    assert [p.name for p in cwd.iterdir()] == ["run"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["launch"]
    assert _largest_difference(_weights(long_run.whole), _weights(run_dir / "seed_0" / "checkpoint.pt")) <= TOLERANCE


# --- in one process --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_environment(monkeypatch, rank: int, world_size: int, port: int) -> None:
    for name, value in {"RANK": rank, "WORLD_SIZE": world_size, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": world_size,
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():
        monkeypatch.setenv(name, str(value))


@pytest.mark.timeout(60)
def test_a_process_group_that_cannot_form_is_a_clear_error(tmp_path: Path, monkeypatch, capfd) -> None:
    recipe = _recipe(tmp_path)
    _torchrun_environment(monkeypatch, rank=1, world_size=2, port=_free_port())  # nobody serves that port
    monkeypatch.setenv("PCCORE_DIST_TIMEOUT", "1")
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 1
    err = capfd.readouterr().err
    assert err.startswith("pccore (rank 1): error: rank 1 of 2 could not join the process group at 127.0.0.1:")
    assert "within 1 s" in err and "PCCORE_DIST_TIMEOUT" in err
    assert "Traceback" not in err and "frame #" not in err  # the rendezvous's own retry log is held back
    assert not (tmp_path / "out").exists()
    assert not distributed.current().distributed


@pytest.mark.timeout(60)
def test_restarts_need_a_run_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = _recipe(tmp_path)
    _torchrun_environment(monkeypatch, rank=0, world_size=1, port=_free_port())
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    assert main(["run", str(recipe)]) == 2
    assert capsys.readouterr().err.startswith(
        "pccore: error: torchrun --max-restarts 2 restarts the processes after a failure, and a restarted attempt "
        "must find the run directory of the failed one: give it with --out DIR"
    )
    assert not (tmp_path / "runs").exists() and not torch.distributed.is_initialized()


@pytest.mark.timeout(60)
def test_a_group_of_one_runs_every_collective(tmp_path: Path, monkeypatch) -> None:
    """torchrun with one process joins a real (gloo) group: the collectives run and change nothing, and
    synchronised BatchNorm computes what BatchNorm computes."""
    _torchrun_environment(monkeypatch, rank=0, world_size=1, port=_free_port())
    world = distributed.join()
    try:
        assert world.distributed and (world.rank, world.size) == (0, 1)
        assert world.sum_counts([3, 4]) == [3, 4]
        assert world.from_rank_zero(lambda: [1, 2], "testing") == [1, 2]
        torch.manual_seed(0)
        x = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
        layer = FreezableBatchNorm2d(2).double()
        layer.sync = True
        layer(x).square().sum().backward()
        reference_x = x.detach().clone().requires_grad_(True)
        mean, var = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
        F.batch_norm(reference_x, mean, var, None, None, True, 0.1, 1e-5).square().sum().backward()
        torch.testing.assert_close(x.grad, reference_x.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.running_mean, mean, rtol=0, atol=1e-14)
        torch.testing.assert_close(layer.running_var, var, rtol=0, atol=1e-14)
    finally:
        distributed.leave()
    assert not distributed.current().distributed and not torch.distributed.is_initialized()


def test_shards_split_a_range_in_rank_order() -> None:
    assert [shard_bounds(10, 15, r, 3) for r in range(3)] == [(10, 12), (12, 14), (14, 15)]
    assert [shard_bounds(0, 2, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]
    for count in range(12):
        for world in range(1, 5):
            parts = [shard_bounds(5, 5 + count, r, world) for r in range(world)]
            assert parts[0][0] == 5 and parts[-1][1] == 5 + count
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_sharded_feeders_serve_the_batches_of_one_feeder() -> None:
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (23, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(23) % 4,
                     torch.randint(0, 256, (7, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(7) % 4, 4,
                     (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), Augmentation(2, True))
    for train in (True, False):
        whole = list(BatchFeeder(data, train=train, batch_size=10, device="cpu").epoch(3, 1))
        shards = [list(BatchFeeder(data, train=train, batch_size=10, device="cpu", shard=(r, 3)).epoch(3, 1))
                  for r in range(3)]
        assert [len(s) for s in shards] == [len(whole)] * 3
        for b, (x, y) in enumerate(whole):
            assert torch.equal(torch.cat([s[b][0] for s in shards]), x)
            assert torch.equal(torch.cat([s[b][1] for s in shards]), y)
    feeder = BatchFeeder(data, train=True, batch_size=10, device="cpu", shard=(2, 3))
    assert [feeder.global_size(b) for b in range(len(feeder))] == [10, 10, 3]
    with pytest.raises(UsageError, match=r"shard = \(rank, world_size\) needs 0 <= rank < world_size, got \(3, 3\)"):
        BatchFeeder(data, train=True, batch_size=10, device="cpu", shard=(3, 3))


def test_the_launch_environment_is_read_and_checked() -> None:
    assert launch_environment({}) is None
    launch = launch_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                                 "MASTER_ADDR": "node0", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "job",
                                 "TORCHELASTIC_MAX_RESTARTS": "3"})
    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (3, 8, 1, 4)
    assert (launch.master_addr, launch.master_port, launch.run_id, launch.max_restarts) == ("node0", 29500, "job", 3)
    world = distributed.World(launch)
    assert (world.launch_id, world.restarts) == ("job", 3)
    assert distributed.World(launch_environment({"RANK": "0", "WORLD_SIZE": "1", "TORCHELASTIC_RUN_ID": "none"})
                             ).launch_id is None  # torchrun's default id does not tell launches apart
    with pytest.raises(UsageError, match=r"^the environment variable WORLD_SIZE='two' is not a whole number >= 1"):
        launch_environment({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(UsageError, match=r"^RANK=2 is not below WORLD_SIZE=2\.$"):
        launch_environment({"RANK": "2", "WORLD_SIZE": "2"})
    assert timeout_seconds({}) == 1800.0 and timeout_seconds({"PCCORE_DIST_TIMEOUT": "2.5"}) == 2.5
    with pytest.raises(UsageError, match=r"^PCCORE_DIST_TIMEOUT='0': expected a number of seconds above 0"):
        timeout_seconds({"PCCORE_DIST_TIMEOUT": "0"})


def test_every_rank_needs_a_sample_of_every_batch() -> None:
    world = distributed.World(launch_environment({"RANK": "0", "WORLD_SIZE": "4"}))
    world.check_batches(batch_size=4, train_size=12, max_batches=0)
    with pytest.raises(UsageError, match=r"^data.batch_size = 3 cannot be split over 4 processes"):
        world.check_batches(batch_size=3, train_size=12, max_batches=0)
    with pytest.raises(UsageError, match=r"^the last batch of each epoch holds 2 of the 14 training images"):
        world.check_batches(batch_size=4, train_size=14, max_batches=0)
    world.check_batches(batch_size=4, train_size=14, max_batches=3)  # the last batch is never served


def test_the_launcher_blames_the_process_that_failed_first(capsys) -> None:
    def failure(code: int, pid: int, timestamp: int = 5) -> SimpleNamespace:
        return SimpleNamespace(exitcode=code, pid=pid, timestamp=timestamp)

    # rank 0 was stopped by the launcher (SIGTERM) in the same second as rank 1 was killed: rank 1 is blamed
    with pytest.raises(PccoreError, match=r"^the training process of rank 1 \(pid 11\) was killed by "
                                                      r"SIGKILL; the other processes were stopped"):
        _failure_status({0: failure(-signal.SIGTERM, 10), 1: failure(-signal.SIGKILL, 11)})
    # a process that reported its own error: its status, nothing more said
    assert _failure_status({0: failure(143, 10, 4), 1: failure(2, 11, 6)}) == 2
    with pytest.raises(PccoreError, match=r"rank 0 \(pid 10\) exited with status 7 without a pccore"):
        _failure_status({0: failure(7, 10), 1: failure(1, 11)})


def test_nproc_is_checked_before_anything_starts(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = _recipe(tmp_path)
    assert main(["run", str(recipe), "--nproc", "0"]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err
    _torchrun_environment(monkeypatch, rank=0, world_size=2, port=1)
    assert main(["run", str(recipe), "--nproc", "2"]) == 2
    assert "--nproc starts the training processes itself; under torchrun leave it out" in capsys.readouterr().err
    monkeypatch.delenv("RANK")
    assert main(["run", str(tmp_path / "missing.toml"), "--nproc", "2"]) == 2  # checked once, in this process
    assert capsys.readouterr().err.count("pccore: error:") == 1


def test_errors_shared_by_every_rank_are_reported_by_rank_zero(monkeypatch) -> None:
    err = distributed.World(launch_environment({"RANK": "1", "WORLD_SIZE": "2"})).shared(PeerFailed("x"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.quiet_here(err) and distributed.quiet_here(KeyboardInterrupt())
    assert not distributed.quiet_here(PeerFailed("a failure of this rank's own"))
    assert distributed.rank_label() == " (rank 1)"
    monkeypatch.setenv("RANK", "0")
    assert not distributed.quiet_here(err) and distributed.rank_label() == ""
    assert not distributed.World().shared(PeerFailed("y")).__dict__  # a single process marks nothing


def test_nproc_starts_the_same_command_in_every_process(tmp_path: Path, monkeypatch) -> None:
    import pccore.parallel.launch

    recipe = _recipe(tmp_path)
    started = []
    monkeypatch.setattr(pccore.parallel.launch, "launch_local", lambda nproc, argv: started.append((nproc, argv)) or 0)
    assert main(["run", str(recipe), "--set", "train.epochs=1", "--device", "cpu", "--out", "o", "--smoke",
                 "--nproc", "3"]) == 0
    assert main(["run", "--resume", str(tmp_path / "missing"), "--nproc", "2"]) == 2  # checked before starting
    assert started == [(3, ["run", str(recipe), "--set", "train.epochs=1", "--device", "cpu", "--out", "o",
                            "--smoke"])]
