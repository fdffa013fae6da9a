"""Data-parallel training on torch.distributed: the one place that owns the process group.

A process started by torchrun (or by `pccore run --nproc N`, which uses torch's own launcher) finds its
place in the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, ...);
`join()` makes the process group from it (NCCL for CUDA tensors, gloo for CPU tensors) and every helper
here is a no-op in a process that was not started that way, so single-process code paths stay as they were.

What pccore keeps equal across ranks, and how (inference needs no communication: every sample's states are
its own, unless a normalisation policy synchronises batch statistics):

- weight gradients: each rank's loss is its share of the mean over the *global* batch, so summing the
  ranks' gradients (`ReplicaSync.sum_gradients`, a few flattened all-reduces) gives exactly the gradient
  of one process training on the whole batch;
- statistics that a normalisation policy updates from each rank's own batch: averaged after every
  training step (`ReplicaSync.average_buffers`; the policy names them through its optional
  `shared_buffers` hook);
- everything read from or written to the run directory: rank 0 alone touches the files, and what it reads
  (a checkpoint, a finished seed's summary) reaches the other ranks through `World.from_rank_zero`, which
  also carries rank 0's errors to them, so that no rank waits for a partner that has given up.

A collective that fails (a peer died, the network broke) or waits longer than `PCCORE_DIST_TIMEOUT`
seconds (default 1800, torch's own default) raises `PeerLost`, a pccore error with a one-line message.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import gc
import io
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import torch
import torch.distributed as dist
from torch import nn

from pccore.core.errors import DeviceUnavailable, PccoreError, UsageError
from pccore.core.replicas import set_current_replicas

T = TypeVar("T")

TIMEOUT_ENV = "PCCORE_DIST_TIMEOUT"
"""Seconds a rank waits for the others (to form the group, in any collective) before it gives up."""
DEFAULT_TIMEOUT_S = 1800.0
"""torch's own default process-group timeout; long enough for rank 0 to download a dataset."""
BUCKET_BYTES = 25 * 2**20
"""Gradients are summed in flattened buckets of about this size (DistributedDataParallel's default)."""


class PeerLost(PccoreError):
    """A collective failed or timed out: another process of the run stopped or cannot be reached."""


class PeerFailed(PccoreError):
    """Another rank failed with an error of its own, which that rank reports."""


# --- the launch environment ----------------------------------------------------------------------


@attrs.frozen
class Launch:
    """Where torchrun placed this process: its global and local rank, the sizes, the rendezvous."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str | None
    master_port: int | None
    run_id: str | None = None
    max_restarts: int = 0


def launch_environment(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch torchrun describes in `environ` (default: this process's environment), or None when the
    process was not started by torchrun (no RANK and WORLD_SIZE). A malformed value is a UsageError."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None

    def number(name: str, default: int | None = None, minimum: int = 0) -> int:
        text = env.get(name)
        if text is None or text == "":
            if default is None:
                raise UsageError(f"{name} is not set, but RANK and WORLD_SIZE are: start the processes with "
                                 "torchrun (or pccore run --nproc N), which sets them all.")
            return default
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise UsageError(f"the environment variable {name}={text!r} is not a whole number >= {minimum}; "
                             "torchrun sets it for each process it starts.")
        return value

    world_size = number("WORLD_SIZE", minimum=1)
    rank = number("RANK")
    if rank >= world_size:
        raise UsageError(f"RANK={rank} is not below WORLD_SIZE={world_size}.")
    port = env.get("MASTER_PORT")
    return Launch(
        rank=rank,
        world_size=world_size,
        local_rank=number("LOCAL_RANK", default=0),
        local_world_size=number("LOCAL_WORLD_SIZE", default=1, minimum=1),
        master_addr=env.get("MASTER_ADDR") or None,
        master_port=number("MASTER_PORT", minimum=0) if port else None,
        run_id=env.get("TORCHELASTIC_RUN_ID") or None,
        max_restarts=number("TORCHELASTIC_MAX_RESTARTS", default=0),
    )


def timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """PCCORE_DIST_TIMEOUT in seconds (DEFAULT_TIMEOUT_S when unset); not a positive number: UsageError."""
    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds above 0, e.g. {TIMEOUT_ENV}=600")
    return value


def shard_bounds(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """The part of positions start..stop-1 that `rank` of `world_size` takes: contiguous, in rank order,
    sizes differing by at most one (the first `(stop - start) % world_size` ranks take one more)."""
    count = stop - start
    base, extra = divmod(count, world_size)
    lo = start + rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


# --- the world -------------------------------------------------------------------------------------


class World:
    """This process's place in the run: rank `rank` of `size` (rank 0 of 1 without torchrun).

    Every collective helper is a no-op (or returns its input) unless `distributed`, i.e. unless the
    process group has been joined; under torchrun that is so even for a world of one process, so that a
    one-GPU torchrun run exercises the same code as a larger one.
    """

    def __init__(self, launch: Launch | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.launch = launch
        self.timeout = timeout
        self.broken = False
        """Whether a collective has failed (the other processes are gone or unreachable)."""
        self.rank = launch.rank if launch else 0
        self.size = launch.world_size if launch else 1
        self.local_rank = launch.local_rank if launch else 0
        self.local_size = launch.local_world_size if launch else 1

    @property
    def distributed(self) -> bool:
        """Whether this process belongs to a process group (it was started by torchrun)."""
        return self.launch is not None

    def differentiable_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, differentiably (for statistics shared by every rank's batch, such
        as synchronised BatchNorm's); `tensor` itself without a process group."""
        if not self.distributed:
            return tensor
        return _SumOverRanks.apply(tensor)

    @property
    def is_zero(self) -> bool:
        """Whether this is rank 0, the rank that writes files and prints."""
        return self.rank == 0

    @property
    def launch_id(self) -> str | None:
        """The id torchrun gives this launch (its --rdzv-id; a fresh one with --standalone), the same in a
        restarted attempt; None without torchrun or without a usable id (torchrun's default "none")."""
        run_id = self.launch.run_id if self.launch else None
        return run_id if run_id and run_id != "none" else None

    @property
    def restarts(self) -> int:
        """How many times torchrun may restart the processes after a failure (--max-restarts)."""
        return self.launch.max_restarts if self.launch else 0

    def describe(self) -> str:
        """"rank 1 of 4" (what a message calls this process)."""
        return f"rank {self.rank} of {self.size}"

    # --- placing work ---------------------------------------------------------------------------

    def place(self, device: torch.device) -> torch.device:
        """The device this rank trains on: `cuda` (as `auto` resolves on a CUDA machine) becomes
        cuda:LOCAL_RANK, so that each process on a machine has a GPU of its own."""
        if not self.distributed or device.type != "cuda":
            return device
        if device.index is not None and self.local_size > 1:
            raise UsageError(
                f"--device {device} would put all {self.local_size} processes of this machine on one GPU; under "
                "torchrun each process uses cuda:LOCAL_RANK: give --device cuda (or auto), and choose the GPUs "
                "with CUDA_VISIBLE_DEVICES"
            )
        index = self.local_rank if device.index is None else device.index
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceUnavailable(
                f"{self.describe()} (local rank {self.local_rank}) needs cuda:{index}, but this machine has {count} "
                f"CUDA device(s); start at most {count} processes per machine (torchrun --nproc-per-node {count})"
            )
        torch.cuda.set_device(index)
        return torch.device("cuda", index)

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's part of positions start..stop-1 (the whole range without torchrun)."""
        return shard_bounds(start, stop, self.rank, self.size)

    def check_batches(self, batch_size: int, train_size: int, max_batches: int) -> None:
        """Refuse (UsageError) a global batch that leaves some rank without a sample: the rank's loss is a
        share of the batch mean, and a rank with nothing to train on has no share."""
        if self.size == 1:
            return
        batches = -(-train_size // batch_size)
        first = min(batch_size, train_size)
        last = train_size - (batches - 1) * batch_size
        served_last = max_batches == 0 or max_batches >= batches
        if first < self.size:
            raise UsageError(
                f"data.batch_size = {batch_size} cannot be split over {self.size} processes: each process needs "
                f"at least one sample of every batch (data.batch_size is the global batch); raise data.batch_size "
                f"to {self.size} or more"
            )
        if served_last and last < self.size:
            raise UsageError(
                f"the last batch of each epoch holds {last} of the {train_size} training images with data.batch_size "
                f"= {batch_size}, fewer than the {self.size} processes, each of which needs at least one; choose a "
                f"data.batch_size that leaves at least {self.size} over (or none), or set train.max_batches"
            )

    # --- talking ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """Turn a failed or timed-out collective into PeerLost, one line naming this rank and the step."""
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as err:  # torch.distributed.DistError and gloo's errors are RuntimeErrors
            self.broken = True
            raise PeerLost(
                f"{self.describe()} lost contact with the other processes while {what}: another process of the "
                f"run stopped or cannot be reached ({_first_line(err)}); the launcher (torchrun) names the process "
                f"that failed. A process that waits more than {self.timeout:g} s gives up ({TIMEOUT_ENV})."
            ) from err

    def sum(self, tensor: torch.Tensor, what: str = "summing values") -> torch.Tensor:
        """`tensor` summed over the ranks (in place where possible; the tensor itself without torchrun)."""
        if not self.distributed:
            return tensor
        out = tensor.contiguous()
        with self._talking(what):
            dist.all_reduce(out)
        return out

    def sum_counts(self, counts: Sequence[int], what: str = "adding up counts") -> list[int]:
        """Whole numbers summed over the ranks, exactly (int64 on the CPU)."""
        if not self.distributed:
            return [int(c) for c in counts]
        return [int(c) for c in self.sum(torch.tensor([int(c) for c in counts], dtype=torch.int64), what)]

    def average_(self, tensors: Sequence[torch.Tensor], what: str = "averaging statistics") -> None:
        """Replace every tensor by its mean over the ranks, in place, one all-reduce per dtype and device."""
        self._flat_in_place(tensors, what, dist.all_reduce, divide_by=self.size)

    def broadcast_(self, tensors: Sequence[torch.Tensor], what: str = "copying rank 0's model") -> None:
        """Overwrite every tensor with rank 0's values, in place, one broadcast per dtype and device."""
        self._flat_in_place(tensors, what, functools.partial(dist.broadcast, src=0))

    def _flat_in_place(self, tensors: Sequence[torch.Tensor], what: str,
                       collective: Callable[[torch.Tensor], Any], divide_by: int = 1) -> None:
        """Run `collective` on the tensors flattened into one buffer per dtype and device (one call each,
        not one per tensor), optionally divide, and copy the result back in place."""
        if not self.distributed or not tensors:
            return
        for group in _by_kind(tensors):
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            with self._talking(what):
                collective(flat)
            if divide_by != 1:
                flat.div_(divide_by)
            _unflatten(flat, group)

    def broadcast_module(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (as DistributedDataParallel does at the start)."""
        self.broadcast_(list(module.parameters()) + list(module.buffers()))

    def from_rank_zero(self, fn: Callable[[], T], what: str) -> T:
        """`fn()` run on rank 0 alone, its result on every rank (sent as a pickle: keep it small, or at least
        rare). An error on rank 0 is raised there and, as the same pccore error or as PeerFailed, on every
        other rank (marked so that only rank 0 reports it): no rank waits for an answer that never comes."""
        if not self.distributed:
            return fn()
        box: list[Any] = [None]
        failure: BaseException | None = None
        if self.is_zero:
            try:
                box = [("ok", fn())]
            except Exception as err:
                failure = err
                box = [("error", _portable(err, f"rank 0 failed while {what}"))]
        with self._talking(what):
            dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        if failure is not None:
            raise self.shared(failure)
        kind, value = box[0]
        if kind == "error":
            raise self.shared(value)
        return value

    def local_zero_first(self, fn: Callable[[], T], what: str) -> T:
        """`fn()` on every rank, local rank 0 of each machine first (so that one process per machine
        downloads a dataset while the others wait, then read the files it left). A failure on any rank
        stops every rank: the failing ones raise their own error, the others PeerFailed."""
        if not self.distributed:
            return fn()
        result: Any = None
        for turn in (self.local_rank == 0, self.local_rank != 0):
            failure = None
            if turn:
                try:
                    result = fn()
                except Exception as err:
                    failure = err
            self.agree(failure, what)
        return result

    def agree(self, failure: BaseException | None, what: str) -> None:
        """Every rank says whether `what` failed on it; if it failed anywhere, raise on every rank: the
        failure itself where it happened, a PeerFailed naming the failed rank elsewhere."""
        if not self.distributed:
            if failure is not None:
                raise failure
            return
        flag = torch.tensor([self.rank + 1 if failure is not None else 0], dtype=torch.int64)
        with self._talking(what):
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if failure is not None:
            failure.pccore_together = True  # type: ignore[attr-defined]
            raise failure
        failed = int(flag) - 1
        if failed >= 0:
            raise self.shared(PeerFailed(f"rank {failed} failed while {what} (its message says why)."))

    # --- rank zero -------------------------------------------------------------------------------

    def shared(self, err: BaseException) -> BaseException:
        """Mark `err` as raised alike on every rank at the same point, so that only rank 0 reports it;
        returns `err`."""
        if self.distributed:
            err.pccore_shared = True  # type: ignore[attr-defined]
            err.pccore_together = True  # type: ignore[attr-defined]
        return err

    def rank_zero_stream(self, stream: Any) -> Any:
        """`stream` on rank 0; elsewhere a stream that discards what is written (progress is rank 0's)."""
        return stream if self.is_zero else _Discard()

_SINGLE = World()
_current: World = _SINGLE


def current() -> World:
    """The world this process belongs to (rank 0 of 1 until `join` makes a process group)."""
    return _current


def join() -> World:
    """Join the process group torchrun's environment describes (once; later calls return it), or stay a
    single process when there is none. NCCL serves CUDA tensors and gloo CPU tensors; every rank waits at
    most PCCORE_DIST_TIMEOUT seconds for the others. A group that cannot form is a PeerLost error naming
    the rendezvous address."""
    global _current
    if _current.distributed:
        return _current
    launch = launch_environment()
    if launch is None:
        return _current
    timeout = timeout_seconds()
    cuda = torch.cuda.is_available()
    if cuda and launch.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(launch.local_rank)
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    where = f"{launch.master_addr or '(MASTER_ADDR unset)'}:{launch.master_port or '(MASTER_PORT unset)'}"
    try:
        with _native_log_held_back():
            dist.init_process_group(backend=backend, init_method="env://", rank=launch.rank,
                                    world_size=launch.world_size, timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError, OSError) as err:
        raise PeerLost(
            f"rank {launch.rank} of {launch.world_size} could not join the process group at {where} within "
            f"{timeout:g} s ({_first_line(err)}); check that every process was started with the same rendezvous "
            f"address and that it can be reached (raise {TIMEOUT_ENV} to wait longer)."
        ) from err
    _current = World(launch, timeout)
    set_current_replicas(_current)
    atexit.register(_leave_at_exit)
    return _current


@contextlib.contextmanager
def session() -> Iterator[World]:
    """`join()` for the length of a command: the group is left at the end (also after an error) if this
    block joined it; one joined before (a script that calls the API under torchrun) stays joined. The ranks
    wait for each other before leaving when the block ended normally or with an error raised on every rank
    at the same point (`World.shared`, `World.agree`), not after an error of this rank alone."""
    joined_before = current().distributed
    try:
        yield join()
    except BaseException as err:
        if not joined_before:
            leave(together=bool(getattr(err, "pccore_together", False)))
        raise
    if not joined_before:
        leave()


@contextlib.contextmanager
def _native_log_held_back() -> Iterator[None]:
    """Hold back what torch's C++ side writes to stderr meanwhile (file descriptor 2): while it waits for
    the other processes, the rendezvous logs every retry with a C++ backtrace. The log is shown after all
    when the block fails and PCCORE_DEBUG asks for details; otherwise the error message says what failed."""
    import tempfile

    from pccore.core.failures import debug_from_env

    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed and debug_from_env():
                held.seek(0)
                sys.stderr.write(held.read().decode("utf-8", "replace"))
                sys.stderr.flush()


def _leave_at_exit() -> None:
    """A script that trained through the API under torchrun leaves the group when it ends: together with
    the others if it ended normally, at once if an exception ended it (the others may be anywhere)."""
    leave(together=not hasattr(sys, "last_value"))


def leave(together: bool = True) -> None:
    """Leave the process group, if this process joined one (also after a failure: a group left to the
    interpreter's exit can abort the process). With `together` (every rank is leaving at the same point of
    the program) the ranks first wait for each other, so that no rank tears its connections down while
    another still exchanges its last messages over them, which makes gloo abort the process."""
    global _current
    world = _current
    if not world.distributed:
        return
    _current = _SINGLE
    set_current_replicas(None)
    if dist.is_initialized():
        if together and not world.broken:
            with contextlib.suppress(RuntimeError):
                dist.barrier()
        gc.collect()  # pending work objects kept alive by reference cycles, freed while the group exists
        dist.destroy_process_group()


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorate `fn` to run on rank 0 alone (other ranks get None), as Lightning's rank_zero_only."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if current().is_zero else None

    return wrapped


def quiet_here(err: BaseException) -> bool:
    """Whether this process should not report `err`: it is rank 1 or above and `err` was raised alike on
    every rank (rank 0 reports it), or it is an interruption (rank 0 says so)."""
    launch = current().launch or _safe_launch()
    if launch is None or launch.rank == 0:
        return False
    return isinstance(err, KeyboardInterrupt) or bool(getattr(err, "pccore_shared", False))


def rank_label() -> str:
    """" (rank 3)" for a process of rank 1 or above started by torchrun, "" otherwise (rank 0 speaks for
    the run), for messages."""
    launch = current().launch or _safe_launch()
    return f" (rank {launch.rank})" if launch is not None and launch.rank > 0 else ""


def _safe_launch() -> Launch | None:
    try:
        return launch_environment()
    except UsageError:
        return None


# --- keeping replicas equal -------------------------------------------------------------------------


class ReplicaSync:
    """Keeps one model's copies on every rank equal: sums the weight gradients after each backward pass and
    averages the normalisation policy's `shared_buffers` after each optimizer step."""

    def __init__(self, world: World, model: nn.Module, norm: Any, bucket_bytes: int = BUCKET_BYTES) -> None:
        self.world = world
        self.params = [p for p in model.parameters() if p.requires_grad]
        hook = getattr(norm, "shared_buffers", None)
        self.buffers = list(hook(model)) if hook is not None and world.distributed else []
        self.buckets = _buckets(self.params, bucket_bytes)

    def sum_gradients(self) -> None:
        """Replace every weight gradient by its sum over the ranks: one all-reduce per bucket, all in flight
        at once. Each rank's loss is its share of the global batch mean, so the sum is the gradient of that
        mean. A parameter without a gradient takes part with zeros (the bucket layout must match)."""
        if not self.world.distributed:
            return
        what = "summing the weight gradients"
        pending = []
        for bucket in self.buckets:
            grads = []
            for p in bucket:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
            flat = torch.cat([g.reshape(-1) for g in grads])
            with self.world._talking(what):
                pending.append((dist.all_reduce(flat, async_op=True), flat, grads))
        for work, flat, grads in pending:
            with self.world._talking(what):
                work.wait()
            _unflatten(flat, grads)

    def average_buffers(self) -> None:
        """Average the policy's shared buffers (running statistics) over the ranks."""
        if self.buffers:
            self.world.average_(self.buffers, "averaging the normalisation statistics")


class _SumOverRanks(torch.autograd.Function):
    """An all-reduce (sum) that autograd can go through: the gradient of a sum shared by every rank is
    the sum of every rank's upstream gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        with current()._talking("synchronising batch statistics"):
            dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        with current()._talking("synchronising the gradients of batch statistics"):
            dist.all_reduce(out)
        return out


def ring_allreduce_bytes(gradient_bytes: int, world_size: int) -> float:
    """Bytes each rank sends (and receives) in a ring all-reduce of `gradient_bytes`: 2 (N - 1) / N of them."""
    return 2.0 * (world_size - 1) / world_size * gradient_bytes


# --- helpers ---------------------------------------------------------------------------------------


class _Discard(io.TextIOBase):
    """A text stream that keeps nothing (the progress output of ranks other than 0)."""

    def write(self, text: str) -> int:
        return len(text)


def _first_line(err: BaseException, limit: int = 240) -> str:
    """The first sentence of an exception's message, on one line, without the source position gloo puts in
    front (gloo's advice to read the other process's log follows in sentences of its own)."""
    text = " ".join(str(err).split())
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    text = re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".") or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _portable(err: BaseException, context: str) -> BaseException:
    """`err` if it is a pccore error that survives pickling (the other ranks raise the same), else a
    PeerFailed that says what happened."""
    if isinstance(err, PccoreError):
        with contextlib.suppress(Exception):
            copy = pickle.loads(pickle.dumps(err))
            if type(copy) is type(err) and str(copy) == str(err):
                return err
    return PeerFailed(f"{context} ({type(err).__name__}: {_first_line(err)}).")


def _by_kind(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Tensors grouped by (device, dtype), in their order, so that each group flattens into one tensor."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def _buckets(params: Sequence[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Parameters in order, grouped by device and dtype, cut into buckets of about `bucket_bytes` each."""
    buckets: list[list[torch.Tensor]] = []
    for group in _by_kind(params):
        bucket: list[torch.Tensor] = []
        size = 0
        for p in group:
            nbytes = p.numel() * p.element_size()
            if bucket and size + nbytes > bucket_bytes:
                buckets.append(bucket)
                bucket, size = [], 0
            bucket.append(p)
            size += nbytes
        if bucket:
            buckets.append(bucket)
    return buckets


def _unflatten(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy consecutive pieces of `flat` back into `tensors` (which keep their own memory layout)."""
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view(t.shape))
            offset += n
