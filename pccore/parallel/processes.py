"""Local worker processes (`pccore tune --workers`, `pccore sweep --workers`): devices handed out
round-robin, the CPU cores shared out so that N workers do not oversubscribe them, and a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess

from pccore.core.errors import UsageError

STOP_WAIT_S = 30
"""How long a worker process gets to stop after SIGTERM before it is killed."""

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def parse_devices(text: str | None) -> list[str]:
    """`--devices cuda:0,cuda:1` as a list (empty when not given), each device checked to exist here."""
    if text is None:
        return []
    from pccore.core.devices import resolve_device

    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise UsageError(f"--devices {text!r}: expected a comma-separated list such as cuda:0,cuda:1")
    for device in devices:
        if not _DEVICE.fullmatch(device):
            raise UsageError(f"--devices {text}: {device!r} is not a device; use auto, cpu, cuda or cuda:N")
        resolve_device(device)
    return devices


def device_for(devices: list[str], worker: int) -> str | None:
    """The device of worker `worker` (0-based): round-robin over `devices`; None leaves run.device."""
    return devices[worker % len(devices)] if devices else None


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of `workers` local processes: the usable cores shared out, at least 1."""
    return max(1, usable_cores() // max(1, workers))


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker process: this one's, with its thread count for OpenMP and MKL (read
    when torch starts, before the worker's own torch.set_num_threads)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def check_workers(workers: int) -> None:
    if workers < 1:
        raise UsageError(f"--workers {workers}: expected at least 1")


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop worker processes: SIGTERM (a pccore command then records where it stopped), then SIGKILL
    after STOP_WAIT_S seconds."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
