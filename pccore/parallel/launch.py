"""`pccore run --nproc N`: start N training processes on this machine through torch's own launcher.

The processes are started exactly as `torchrun --standalone --nproc-per-node N -m pccore run ...` starts
them (torch.distributed.launcher.api.elastic_launch, the function behind torchrun, with a c10d rendezvous
on a free local port), so the two ways of starting a run behave alike; this module only turns the
launcher's failures into pccore messages.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence

from pccore.core.errors import PccoreError, UsageError
from pccore.parallel.distributed import launch_environment

REPORTED_STATUSES = (1, 2, 130, 143)
"""Exit statuses of a pccore process that has printed its own message (error, bad input, interrupted)."""


def launch_local(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m pccore ARGV...` in `nproc` processes on this machine; the exit status for the user.

    A process killed by a signal is a PccoreError naming its rank; a process that failed with a message of
    its own has printed it, and its status is returned."""
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1 (the number of training processes), got {nproc}")
    if launch_environment() is not None:
        raise UsageError("--nproc starts the training processes itself; under torchrun leave it out "
                         "(torchrun --nproc-per-node N -m pccore run RECIPE)")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"  # as torchrun does: N processes must not each take every core
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        start_method="spawn",
    )
    logging.disable(logging.ERROR)  # the launcher's own log lines: a failure is reported below instead
    try:
        elastic_launch(config, sys.executable)("-m", "pccore", *argv)
    except ChildFailedError as err:
        return _failure_status(err.failures)
    except SignalException as err:
        raise KeyboardInterrupt from err
    finally:
        logging.disable(logging.NOTSET)
    return 0


def _failure_status(failures: dict) -> int:
    """The exit status for processes that failed: the root cause's own status when it has reported
    itself; a PccoreError naming its rank when it was killed or exited without a pccore status."""
    rank, failure = min(failures.items(), key=lambda item: (_blame_order(item[1].exitcode), item[1].timestamp,
                                                             item[0]))
    code = int(failure.exitcode)
    if code in REPORTED_STATUSES:
        return code
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with status {code} without a pccore message (its own output above says why)"
    raise PccoreError(
        f"the training process of rank {rank} (pid {failure.pid}) {how}; the other processes were stopped. If "
        "the run made checkpoints, continue it with pccore run --resume RUN_DIR (the run directory printed at the "
        "start)."
    )


def _blame_order(exitcode: int) -> int:
    """How likely a process that ended with `exitcode` is the root cause (lower is likelier): killed by a
    signal of its own, then crashed, then stopped with a pccore message, then stopped by the launcher
    (SIGTERM, interrupted), which is what happens to the others once one process fails."""
    stopped = (-signal.SIGTERM, -signal.SIGINT, 130, 143)
    if exitcode in stopped:
        return 3
    if exitcode < 0:
        return 0
    return 2 if exitcode in REPORTED_STATUSES else 1
