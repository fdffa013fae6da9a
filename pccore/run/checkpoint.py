"""Checkpoints of a training run: atomic writes, random-number-generator states, and reading them back.

A checkpoint is a plain dict of tensors and Python scalars saved with `torch.save`; it loads with
`weights_only=True`, so opening one never runs pickled code. It is written atomically (`pccore.run.files`), so
a crash or a full disk leaves the previous checkpoint in place, never a torn one.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pccore.core.errors import PccoreError
from pccore.run.files import atomic_write_bytes

FORMAT_VERSION = 1
"""Stored in every checkpoint under "format"; bumped when the layout changes."""


class CheckpointError(PccoreError):
    """A checkpoint that is missing, unreadable or from an incompatible version."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a checkpoint dict atomically, stamped with the format version."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; a missing, torn or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run cannot be resumed from there.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(
            f"cannot read the checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "delete it to restart that seed from scratch."
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"the checkpoint {path} has format {found!r}, this pccore writes format {FORMAT_VERSION}; "
            "resume it with the pccore version that wrote it, or delete it to restart that seed."
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a run draws from: torch (CPU and CUDA), numpy, Python."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back to a state taken by `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
