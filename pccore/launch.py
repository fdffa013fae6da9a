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

from pccore.distributed import launch_environment
from pccore.errors import PccoreError, UsageError

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
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)  # the failure is reported below
    try:
        elastic_launch(config, sys.executable)("-m", "pccore", *argv)
    except ChildFailedError as err:
        return _failure_status(err.failures)
    except SignalException as err:
        raise KeyboardInterrupt from err
    return 0


def _failure_status(failures: dict) -> int:
    """The exit status for processes that failed: the first failure's own status when it has reported
    itself; a PccoreError naming the rank when it was killed or exited without a pccore status."""
    rank, failure = min(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    code = int(failure.exitcode)
    if code in REPORTED_STATUSES:
        return code
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}"
    else:
        how = f"exited with status {code}"
    others = len(failures) - 1
    raise PccoreError(
        f"the training process of rank {rank} (pid {failure.pid}) {how}; the other processes were stopped"
        + (f" ({others} more failed after it)" if others else "")
        + ". If the run made checkpoints, continue it with pccore run --resume RUN_DIR (the run directory "
        "printed at the start)."
    )
