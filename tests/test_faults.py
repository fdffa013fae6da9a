"""Faults a user can run into, each generated here and driven through `pccore.cli.main`: the exit status,
one message on stderr and no traceback, and no half-written run left behind.

The classes: the top-level guard itself; file-system trouble around run folders, dataset roots and
checkpoints (files in the way, folders that cannot be written, a full disk); numbers and sizes beyond what
torch can index or the machine can hold; third-party components that raise while being built or in the
middle of a run.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pccore.core.limits
from pccore.cli import main
from pccore.core import registry as plugins
from pccore.core.registry import reset_registry
from pccore.run import training
from pccore.run.checkpoint import load_checkpoint
from tests.fakedist import make_dist
from tests.test_training import write_recipe

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    """Run `pccore ARGV`, returning (status, stdout, stderr); stderr never holds a traceback."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def error_line(err: str) -> str:
    """The one `pccore: error:` line of stderr."""
    lines = [line for line in err.splitlines() if line.startswith("pccore: error: ")]
    assert len(lines) == 1, err
    return lines[0].removeprefix("pccore: error: ")


def run_info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


# --- the guard -----------------------------------------------------------------------------------


def _raise_key_error(args):
    raise KeyError("boom")


def test_an_unexpected_error_in_pccore_is_one_paragraph_naming_the_command(monkeypatch, capsys):
    monkeypatch.setattr(plugins, "plugins_command", _raise_key_error)
    code, out, err = run_cli(capsys, "plugins", "--json")
    assert code == 1
    assert out == ""
    line = re.escape(str(_dispatch_line()))
    assert re.fullmatch(
        rf"pccore: error: `pccore plugins --json` failed with an unexpected error in pccore \(pccore\.cli\."
        rf"_dispatch, line {line}\): KeyError: 'boom'\. This is a bug in pccore: please report it with the "
        r"traceback; run again with --debug \(or PCCORE_DEBUG=1\) to see the traceback\.\n",
        err,
    ), err


def _dispatch_line() -> int:
    """The line of pccore.cli._dispatch that calls plugins_command."""
    import inspect

    import pccore.cli

    source, first = inspect.getsourcelines(pccore.cli._dispatch)
    return first + next(i for i, text in enumerate(source) if "return plugins_command(args)" in text)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_prints_the_traceback_and_keeps_the_exit_status(monkeypatch, capsys, how):
    monkeypatch.setattr(plugins, "plugins_command", _raise_key_error)
    argv = ["--debug", "plugins"] if how == "flag" else ["plugins"]
    if how == "env":
        monkeypatch.setenv("PCCORE_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert "KeyError: 'boom'\n" in err
    assert err.endswith("This is a bug in pccore: please report it with the traceback; the traceback is printed "
                        "above.\n")


def test_debug_shows_the_traceback_of_a_pccore_error_too(tmp_path, capsys):
    assert main(["--debug", "recipe", "check", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.endswith(f"pccore: error: recipe file not found: {tmp_path / 'missing.toml'}\n")


def test_an_allocation_failure_says_what_ran_out(monkeypatch, tmp_path, capsys):
    recipe = write_recipe(tmp_path)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
            "to allocate 71880000000000 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(training, "smoke_data", out_of_memory)
    code, _, err = run_cli(capsys, "run", recipe, "--smoke")
    assert code == 1
    assert error_line(err) == (
        f"`pccore run {recipe} --smoke` ran out of memory: a tensor of 65.4 TiB did not fit in the CPU's memory. "
        "Lower data.batch_size or data.eval_batch_size, the sizes or width in [model] or the dataset's image "
        "size, or use a device with more memory; run again with --debug (or PCCORE_DEBUG=1) to see the "
        "traceback."
    )
    assert not (tmp_path / "runs").exists()  # it failed before the run directory was made


def test_python_running_out_of_memory_is_reported_as_such(monkeypatch, tmp_path, capsys):
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(training, "smoke_data", no_memory)
    code, _, err = run_cli(capsys, "run", write_recipe(tmp_path), "--smoke")
    assert code == 1
    assert "ran out of memory: Python could not allocate memory. Lower data.batch_size" in error_line(err)


# --- file-system trouble -------------------------------------------------------------------------


def test_out_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("mine")
    for out in (blocker, blocker / "sub"):
        code, _, err = run_cli(capsys, "run", write_recipe(tmp_path), "--smoke", "--out", out)
        assert code == 2
        assert error_line(err) == f"cannot create the run directory (--out) {out}: {blocker} exists and is not a folder"
    assert blocker.read_text() == "mine"


def test_run_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "run", write_recipe(tmp_path, run_out_dir=str(blocker)))
    assert code == 2
    assert error_line(err) == (
        f"cannot create the runs folder (run.out_dir) {blocker / 'tiny'}: {blocker} exists and is not a folder"
    )


def test_a_path_the_system_cannot_name_is_bad_input(tmp_path, capsys):
    out = tmp_path / ("b" * 300)  # longer than any file system's longest name (255 bytes)
    code, _, err = run_cli(capsys, "run", write_recipe(tmp_path), "--smoke", "--out", out)
    assert code == 2
    assert error_line(err) == f"cannot create the run directory (--out) {out}: File name too long"


def test_a_device_the_schema_does_not_know_is_bad_input(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", write_recipe(tmp_path), "--smoke", "--device", "meta")
    assert code == 2
    assert error_line(err) == '--device meta: expected "auto", "cpu", "cuda" or "cuda:N"'


@pytest.mark.parametrize("dataset", ["cifar10", "tinyimagenet"])
def test_a_dataset_root_that_is_a_file_is_refused(tmp_path, capsys, dataset):
    blocker = tmp_path / "data"
    blocker.write_text("")
    data = {"name": dataset, "root": str(blocker / "inside"), "download": False}
    recipe = write_recipe(tmp_path, data=data, model={"name": "mlp", "hidden": [4]})
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    assert code == 2
    assert error_line(err) == (
        f"data.root = '{blocker / 'inside'}': {blocker} exists and is not a folder; set data.root to the folder "
        "that holds (or will hold) the dataset"
    )
    assert not (tmp_path / "out").exists()


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder unwritable: chmod, and (as root, whom chmod does not stop) refuse os.open for writing
    and os.mkdir inside it, as the kernel would."""

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        if os.geteuid() == 0:
            inside = str(folder.resolve()) + os.sep
            real_open, real_mkdir = os.open, os.mkdir

            def guarded_open(path, flags, *args, **kwargs):
                if str(Path(path).resolve()).startswith(inside) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real_open(path, flags, *args, **kwargs)

            def guarded_mkdir(path, *args, **kwargs):
                if str(Path(path).resolve()).startswith(inside):
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real_mkdir(path, *args, **kwargs)

            monkeypatch.setattr(os, "open", guarded_open)
            monkeypatch.setattr(os, "mkdir", guarded_mkdir)
        return folder

    made: list[Path] = []

    def locked(folder: Path) -> Path:
        made.append(make(folder))
        return folder

    yield locked
    for folder in made:
        folder.chmod(0o755)


def test_an_out_folder_that_cannot_be_written_is_reported_and_stays_empty(tmp_path, capsys, read_only):
    out = read_only(tmp_path / "locked")
    code, _, err = run_cli(capsys, "run", write_recipe(tmp_path), "--smoke", "--out", out)
    assert code == 1
    assert error_line(err) == (
        f"cannot write {out / 'run.json'}: Permission denied: no permission to write there (nothing was written)"
    )
    assert list(out.iterdir()) == []


def test_a_run_directory_that_cannot_be_created_is_reported(tmp_path, capsys, read_only):
    parent = read_only(tmp_path / "locked")
    code, _, err = run_cli(capsys, "run", write_recipe(tmp_path), "--smoke", "--out", parent / "run")
    assert code == 1
    assert error_line(err) == (
        f"cannot create the run directory (--out) {parent / 'run'}: Permission denied: no permission to write there"
    )
    assert list(parent.iterdir()) == []


def test_a_run_whose_recipe_cannot_be_written_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("recipe.toml"):
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    code, _, err = run_cli(capsys, "run", write_recipe(tmp_path), "--smoke")
    assert code == 1
    run_dir = tmp_path / "runs" / "smoke" / "tiny" / "version_0"
    assert error_line(err) == f"cannot write {run_dir / 'recipe.toml'}: Input/output error (nothing was written)"
    assert list((tmp_path / "runs" / "smoke" / "tiny").iterdir()) == []


def _disk_fills_at_checkpoint(monkeypatch, number: int) -> None:
    """Make the `number`-th write of a checkpoint.pt (1-based, counting every seed) fail with ENOSPC."""
    real_fsync = os.fsync
    seen = {"count": 0}

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if Path(target).name.startswith(".checkpoint.pt."):
            seen["count"] += 1
            if seen["count"] == number:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the file being written via /proc")
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_can_be_resumed(
    tmp_path, capsys, monkeypatch
):
    recipe = write_recipe(tmp_path, epochs=3, tensorboard=False)
    assert main(["run", str(recipe), "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()

    _disk_fills_at_checkpoint(monkeypatch, number=2)
    out = tmp_path / "full"
    code, _, err = run_cli(capsys, "run", recipe, "--out", out)
    assert code == 1
    checkpoint = out / "seed_0" / "checkpoint.pt"
    message = (
        f"cannot write {checkpoint}: No space left on device: the disk is full (its earlier version is unchanged)"
    )
    assert error_line(err) == message
    assert f"pccore: continue this run with: pccore run --resume {out}\n" in err
    assert load_checkpoint(checkpoint)["state"]["epochs_done"] == 1
    assert sorted(p.name for p in (out / "seed_0").iterdir()) == ["best.pt", "checkpoint.pt"]
    assert run_info(out)["status"] == "failed"
    assert run_info(out)["error"] == message

    monkeypatch.undo()
    code, stdout, _ = run_cli(capsys, "run", "--resume", out)
    assert code == 0
    assert "seed 0: resuming after epoch 1" in stdout
    assert run_info(out)["status"] == "finished"
    assert "error" not in run_info(out)
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed = json.loads((out / "summary.json").read_text())
    assert [h["top1"] for h in resumed["seeds"][0]["history"]] == [h["top1"] for h in whole["seeds"][0]["history"]]


# --- run status ----------------------------------------------------------------------------------


def test_run_json_records_a_finished_run(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, "run", write_recipe(tmp_path, epochs=1, tensorboard=False), "--out", out)
    assert code == 0
    assert run_info(out) == {"smoke": False, "pccore_version": "0.2.0", "status": "finished"}


def test_run_json_records_a_diverged_run_without_suggesting_a_resume(tmp_path, capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, inference_lr=1e38, tensorboard=False)
    code, _, err = run_cli(capsys, "run", recipe, "--out", out)
    assert code == 1
    assert error_line(err).startswith("training diverged in epoch 1, batch ")
    assert "--resume" not in err
    assert run_info(out)["status"] == "failed"
    assert run_info(out)["error"] == error_line(err)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("late", ["SIGTERM", "SIGINT"])
def test_a_signal_while_a_failure_is_recorded_does_not_cut_the_record_short(tmp_path, capsys, monkeypatch, late):
    """Under a launcher, another process's failure brings SIGTERM a moment after this process's own error
    (a second Ctrl-C likewise): it arrives here in the middle of recording the failure."""
    from pccore.run.progress import Progress

    abort = Progress.abort

    def abort_then_signalled(self):
        os.kill(os.getpid(), getattr(signal, late))
        abort(self)

    monkeypatch.setattr(Progress, "abort", abort_then_signalled)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", write_recipe(tmp_path, inference_lr=1e38, tensorboard=False), "--out", out)
    assert code == 1
    assert error_line(err).startswith("training diverged in epoch 1, batch ")
    assert run_info(out)["status"] == "failed"
    assert run_info(out)["error"] == error_line(err)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after the record


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_a_signal_while_an_error_is_reported_ends_in_the_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    import pccore.core.failures as failures

    describe = failures.describe_failure

    def signalled_then_described(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return describe(*args, **kwargs)

    monkeypatch.setattr(failures, "describe_failure", signalled_then_described)
    try:
        code, _, err = run_cli(capsys, "run", tmp_path / "missing.toml")
    except KeyboardInterrupt:  # (caught here, so that a regression fails this test rather than stop the session)
        pytest.fail("the signal escaped the error report as KeyboardInterrupt: a traceback for the user")
    assert code == 2
    assert error_line(err) == f"recipe file not found: {tmp_path / 'missing.toml'}"


# --- sizes beyond what torch indexes or the machine holds ----------------------------------------

LIMIT = "torch indexes at most 2**31-1 = 2,147,483,647 elements of one tensor"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.hidden=[100000, 100000]"],
         "model 'mlp': block 2 (0.weight) would hold 10,000,000,000 elements (shape [100000, 100000]); "
         f"{LIMIT}. Lower the sizes or width in [model]."),
        (["model.hidden=[2147483647, 2147483647]"],
         "model 'mlp': a layer is too large to build (Storage size calculation overflowed with "
         f"sizes=[2147483647, 2147483647]); {LIMIT}. Lower the sizes or width in [model]."),
        (["model.name=vgg5", "model.width=1e30", "data.size=32"],
         "model 'vgg5': a layer is too large to build (empty(): argument 'size' failed to unpack the object at "
         "pos 1 with error \"Overflow when unpacking long long); "
         f"{LIMIT}. Lower the sizes or width in [model]."),
        (["inference.steps=2000000000"],
         "inference.steps = 2000000000 with 2 layers makes a precision table of 4,000,000,002 entries; "
         f"{LIMIT}. Lower inference.steps."),
    ],
    ids=["tensor", "overflow", "width", "steps"],
)
@pytest.mark.parametrize("command", ["run", "schedule", "diagnose"])
@pytest.mark.timeout(120)  # without the checks, a precision table of 4e9 entries is built in Python
def test_sizes_beyond_what_torch_indexes_are_refused_before_any_allocation(
    tmp_path, capsys, overrides, expected, command
):
    recipe = write_recipe(tmp_path)
    extra = ["--out", str(tmp_path / "out")] if command == "run" else []
    code, _, err = run_cli(capsys, command, recipe, *[a for o in overrides for a in ("--set", o)], *extra)
    assert code == 2
    assert error_line(err) == expected
    assert not (tmp_path / "out").exists()


def test_a_model_larger_than_the_free_memory_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pccore.core.limits, "available_memory", lambda device: 2**20)
    code, _, err = run_cli(capsys, "run", write_recipe(tmp_path), "--set", "model.hidden=[512, 512]",
                           "--out", tmp_path / "out")
    assert code == 2
    # 64*512 + 512 + 512*512 + 512 + 512*10 + 10 float32 values (8x8 single-channel digits)
    size = (64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10) * 4
    assert round(size / 2**20, 1) == 1.1
    assert error_line(err) == (
        "model 'mlp': its weights and buffers alone need 1.1 MiB, more than the 1.0 MiB of memory available on "
        "cpu. Lower the sizes or width in [model], or use a device with more memory."
    )
    assert not (tmp_path / "out").exists()


BATCH_NORM_ONE = "ValueError: Expected more than 1 value per channel when training, got input size torch.Size([1, 32])"


def test_a_last_batch_the_model_cannot_train_on_is_refused_before_the_run_starts(tmp_path, capsys):
    # 1437 digits train (1797 less 360 test) = 359 * 4 + 1: the last batch would be one image for BatchNorm
    recipe = write_recipe(tmp_path, normalization="frozen", data_batch_size=4, max_batches=0)
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    assert code == 2
    assert error_line(err) == (
        "model 'mlp' cannot train on the last batch of each epoch, which holds 1 of the 1437 training images "
        f"with data.batch_size = 4 ({BATCH_NORM_ONE}); choose a data.batch_size that does not leave 1 over"
    )
    assert not (tmp_path / "out").exists()
    # cut to full batches by train.max_batches, the same batch size trains
    code, _, _ = run_cli(capsys, "run", write_recipe(tmp_path, normalization="frozen", data_batch_size=4,
                                                      tensorboard=False), "--out", tmp_path / "cut")
    assert code == 0


@pytest.mark.parametrize("command", ["run", "diagnose", "bench"])
def test_a_batch_of_one_for_batchnorm_is_refused(tmp_path, capsys, command):
    recipe = write_recipe(tmp_path, normalization="batchnorm", data_batch_size=1)
    extra = {"run": ["--out", str(tmp_path / "out")], "diagnose": [], "bench": ["--steps", "1"]}[command]
    code, _, err = run_cli(capsys, command, recipe, "--smoke" if command != "bench" else "--warmup=0", *extra)
    assert code == 2
    assert error_line(err) == f"model 'mlp' cannot train on a batch of 1 ({BATCH_NORM_ONE}); raise data.batch_size"


# --- third-party components that raise -----------------------------------------------------------

FACTORY_RAISES = """
    import attrs
    import pccore

    @attrs.define(frozen=True)
    class KaboomParams:
        strength: float = 1.0

    def make_kaboom(params):
        return params.strength / 0

    @pccore.hookimpl
    def pccore_register_precision():
        return [pccore.Component("kaboom", make_kaboom, KaboomParams, "a factory that raises")]
"""

METHOD_RAISES = """
    import pccore
    from pccore.core.components import NoParams


    def _check_batch(calls):
        if calls == 2:
            raise ValueError("the target went missing")


    class Flaky:
        def __init__(self, params):
            self.calls = 0

        def begin_epoch(self, seed, epoch):
            pass

        def output_node(self, prediction, target):
            self.calls += 1
            _check_batch(self.calls)
            return target, 1.0


    @pccore.hookimpl
    def pccore_register_nudging():
        return [pccore.Component("flaky", Flaky, NoParams, "fails on the second batch")]
"""


BLOCK_RAISES = """
    import math

    from torch import nn

    import pccore
    from pccore.core.components import NoParams


    class Glitch(nn.Module):
        def __init__(self, features, classes):
            super().__init__()
            self.linear = nn.Linear(features, classes)
            self.calls = 0

        def forward(self, x):
            if not x.is_meta:
                self.calls += 1
                if self.calls == 5:
                    raise RuntimeError("glitch in the block")
            return self.linear(x.flatten(1))


    class Glitchy:
        def __init__(self, params):
            pass

        def build(self, input_shape, num_classes, norm):
            return [Glitch(math.prod(input_shape), num_classes)]


    @pccore.hookimpl
    def pccore_register_architecture():
        return [pccore.Component("glitchy", Glitchy, NoParams, "a block that fails on its fifth call")]
"""


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Install a fake distribution (on sys.path) and reload the process-wide registry with it."""
    made: list[str] = []

    def install(name: str, module: str, source: str) -> None:
        root = make_dist(tmp_path / f"site-{name}", name, "1.0", {name: module}, {module: source})
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        made.append(module)
        reset_registry()

    monkeypatch.setenv(plugins.STRICT_ENV, "0")
    monkeypatch.setenv(plugins.DISABLE_ENV, "")
    yield install
    for module in made:
        sys.modules.pop(module, None)
    reset_registry()


def test_a_component_whose_factory_raises_is_named_at_build_time(tmp_path, capsys, fake_dist):
    fake_dist("pccore-kaboom", "kaboom_precision", FACTORY_RAISES)
    recipe = write_recipe(tmp_path)
    for command, extra in (("schedule", []), ("run", ["--out", str(tmp_path / "out")])):
        code, _, err = run_cli(capsys, command, recipe, "--set", "precision.name=kaboom", *extra)
        assert code == 1
        assert error_line(err) == (
            "precision 'kaboom' from distribution 'pccore-kaboom' 1.0 failed to build: "
            "ZeroDivisionError: float division by zero"
        )
    assert not (tmp_path / "out").exists()


def _line_of(source: str, text: str) -> int:
    import textwrap

    return next(i for i, line in enumerate(textwrap.dedent(source).splitlines(), 1) if text in line)


def test_a_component_whose_method_raises_mid_run_is_named_and_the_run_marked_failed(tmp_path, capsys, fake_dist):
    fake_dist("pccore-flaky", "flaky_nudging", METHOD_RAISES)
    recipe = write_recipe(tmp_path, tensorboard=False)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", recipe, "--set", "nudging.name=flaky", "--out", out)
    assert code == 1
    line = _line_of(METHOD_RAISES, 'raise ValueError("the target went missing")')
    assert error_line(err) == (
        f"`pccore run {recipe} --set nudging.name=flaky --out {out}` failed in nudging 'flaky' (from "
        f"distribution 'pccore-flaky' 1.0, in flaky_nudging._check_batch, line {line}): ValueError: the target "
        "went missing. This is most likely a bug in that plugin: report it to its authors with the traceback; "
        "run again with --debug (or PCCORE_DEBUG=1) to see the traceback."
    )
    assert f"pccore: continue this run with: pccore run --resume {out}\n" in err
    assert run_info(out)["status"] == "failed"
    assert run_info(out)["error"] == "ValueError: the target went missing"


def test_a_block_an_architecture_built_that_raises_mid_run_names_the_architecture(tmp_path, capsys, fake_dist):
    fake_dist("pccore-glitchy", "glitchy_arch", BLOCK_RAISES)
    recipe = write_recipe(tmp_path, model={"name": "glitchy"}, tensorboard=False)
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    assert code == 1
    line = _line_of(BLOCK_RAISES, 'raise RuntimeError("glitch in the block")')
    assert (
        f"failed in architecture 'glitchy' (from distribution 'pccore-glitchy' 1.0, in glitchy_arch.Glitch.forward, "
        f"line {line}): RuntimeError: glitch in the block. This is most likely a bug in that plugin"
    ) in error_line(err)


def test_the_guard_finds_the_component_without_wrapping_the_training_step(fake_dist):
    """The hot loop calls a built component directly: the registry hands out the plugin's own object."""
    fake_dist("pccore-flaky", "flaky_nudging", METHOD_RAISES)
    from pccore.core.components import NoParams

    built = plugins.get_registry().build("nudging", "flaky", NoParams())
    assert type(built).__module__ == "flaky_nudging"
    assert type(built).__name__ == "Flaky"


# --- resuming and stopping -----------------------------------------------------------------------


def test_resuming_with_an_edited_recipe_names_the_checkpoint_mismatch(tmp_path, capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, epochs=1, tensorboard=False)
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    (out / "seed_0" / "summary.json").unlink()
    saved = out / "recipe.toml"
    saved.write_text(saved.read_text().replace("hidden = [\n    32,\n]", "hidden = [\n    33,\n]"))
    capsys.readouterr()
    code, _, err = run_cli(capsys, "run", "--resume", out)
    assert code == 1
    checkpoint = out / "seed_0" / "checkpoint.pt"
    message = error_line(err)
    assert message.startswith(
        f"the checkpoint {checkpoint} does not fit this run's recipe (RuntimeError: Error(s) in loading "
        "state_dict for ModuleList: size mismatch for 0.1.weight: copying a param with shape torch.Size([32, 64]) "
        "from checkpoint, the shape in current model is torch.Size([33, 64])."
    )
    assert message.endswith(f"; if {saved} was edited, restore it, or delete {checkpoint} to restart seed 0 "
                            "from scratch")
    assert "--resume" not in err
    assert run_info(out)["status"] == "failed"


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
@pytest.mark.timeout(180)
def test_sigterm_marks_the_run_interrupted_and_says_how_to_resume(tmp_path, capsys):
    recipe = write_recipe(tmp_path, epochs=200, max_batches=0, tensorboard=False)
    out = tmp_path / "out"
    code = "import sys; from pccore.cli import main; sys.exit(main())"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "run", str(recipe), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        for line in process.stdout:
            if line.startswith("seed 0 epoch 1/200 loss "):  # the first epoch is done: a checkpoint exists
                break
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143
    assert err.endswith(f"pccore: continue this run with: pccore run --resume {out}\npccore: terminated\n")
    assert run_info(out)["status"] == "interrupted"
    assert load_checkpoint(out / "seed_0" / "checkpoint.pt")["state"]["epochs_done"] >= 1


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def test_an_exception_whose_message_cannot_be_rendered_still_gives_one_line(monkeypatch, capsys):
    def raise_unprintable(args):
        raise _Unprintable

    monkeypatch.setattr(plugins, "plugins_command", raise_unprintable)
    code, out, err = run_cli(capsys, "plugins")
    assert (code, out, err) == (1, "", "pccore: error: _Unprintable (its message could not be shown)\n")
