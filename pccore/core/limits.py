"""What torch can index and allocate: the limits recipe values and models are checked against, the
size check of a model built on the meta device before any memory is allocated, and the translation of
an allocation failure into a message."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pccore.core.errors import UsageError

INDEX_LIMIT = 2**31 - 1
"""The largest integer a recipe may hold, and the most elements one tensor of a model may have: many torch
kernels index tensors with 32-bit integers."""

FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32; a number above it cannot become a float32 tensor value."""

_LIMIT_TEXT = f"torch indexes at most 2**31-1 = {INDEX_LIMIT:,} elements of one tensor"


def size_text(n_bytes: float) -> str:
    """A byte count for people: `12.3 GiB`."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n_bytes < 1024 or unit == "PiB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device`, or None where that is unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def meta_blocks(build: Callable[[], Sequence[nn.Module]], model: str) -> list[nn.Module] | None:
    """The blocks `build` makes, built on the meta device: shapes only, no memory, no random draws. None
    when the architecture cannot be built there (its real build then shows any error of its own); a layer
    whose size overflows what torch can describe is a UsageError naming the limit."""
    try:
        with torch.device("meta"):
            return list(build())
    except (OverflowError, RuntimeError, TypeError) as err:
        first_line = (str(err).strip().splitlines() or [""])[0]
        if isinstance(err, OverflowError) or "overflow" in first_line.lower():
            raise UsageError(
                f"{model}: a layer is too large to build ({first_line[:200]}); {_LIMIT_TEXT}. "
                "Lower the sizes or width in [model]."
            ) from None
        return None
    except UsageError:
        raise
    except Exception:  # an architecture that needs real tensors to build: checked when it is built
        return None


def check_model_size(blocks: Sequence[nn.Module], model: str, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a model with a tensor of more than INDEX_LIMIT elements, or whose weights and buffers alone
    need more memory than `device` has available (at the run's floating-point `dtype`)."""
    total = 0
    for name, tensor in [*nn.ModuleList(blocks).named_parameters(), *nn.ModuleList(blocks).named_buffers()]:
        count = tensor.numel()
        if count > INDEX_LIMIT:
            block, _, rest = name.partition(".")
            raise UsageError(
                f"{model}: block {int(block) + 1} ({rest}) would hold {count:,} elements (shape "
                f"{list(tensor.shape)}); {_LIMIT_TEXT}. Lower the sizes or width in [model]."
            )
        total += count * (dtype.itemsize if tensor.is_floating_point() else tensor.element_size())
    free = available_memory(device)
    if free is not None and total > free:
        raise UsageError(
            f"{model}: its weights and buffers alone need {size_text(total)}, more than the {size_text(free)} "
            f"of memory available on {device}. Lower the sizes or width in [model], or use a device with "
            "more memory."
        )


def check_table_size(steps: int, layers: int) -> None:
    """Refuse inference.steps that make a precision table (steps + 1 rows of `layers`) too large to index."""
    entries = (steps + 1) * layers
    if entries > INDEX_LIMIT:
        raise UsageError(
            f"inference.steps = {steps} with {layers} layers makes a precision table of {entries:,} entries; "
            f"{_LIMIT_TEXT}. Lower inference.steps."
        )


_CPU_ALLOCATION = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def allocation_failure(err: BaseException) -> str | None:
    """What ran out, when `err` is a failed allocation (Python's, the CPU allocator's, CUDA's, or a size
    too large to compute); None for any other error."""
    if isinstance(err, MemoryError):
        return "Python could not allocate memory"
    if isinstance(err, _OUT_OF_MEMORY):
        return str(err).splitlines()[0].strip()
    if isinstance(err, RuntimeError):
        text = str(err)
        found = _CPU_ALLOCATION.search(text)
        if found:
            return f"a tensor of {size_text(int(found.group(1)))} did not fit in the CPU's memory"
        if "Storage size calculation overflowed" in text:
            return f"a tensor was too large to describe ({_LIMIT_TEXT})"
    return None
