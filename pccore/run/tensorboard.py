"""TensorBoard logging of one training run (one seed): scalars, the precision table, recipe, HParams.

Every scalar uses the global optimizer step as its x axis (epoch metrics at the step that ends the epoch),
so that a resumed run can purge the events an interrupted epoch left behind with one `purge_step`.
The hyperparameters go into the run's own event file (not `add_hparams`, which makes a sub-run), so the
HParams tab lists the run next to its scalars.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from pccore.core.components import PrecisionTable

CELL_PIXELS = 16
"""Each entry of the precision table becomes a CELL_PIXELS x CELL_PIXELS square in the image."""

BEST_TOP1_TAG = "hparams/best_top1"
"""The scalar the HParams tab shows as the run's metric."""


def energy_tag(layer: int) -> str:
    """The tag of layer `layer`'s (1-based) end-of-inference energy: energy/layer_01, energy/layer_02..."""
    return f"energy/layer_{layer:02d}"


def precision_image(table: PrecisionTable, cell: int = CELL_PIXELS) -> torch.Tensor:
    """The inference table pi[t][l] as a greyscale [1, T*cell, L*cell] image in [0, 1] (rows t, columns l).

    Values are scaled linearly from the table's minimum (black) to its maximum (white); a constant table
    is all white. Each entry is enlarged to a cell x cell square so that small tables are visible.
    """
    values = table.inference.detach().to(torch.float64).cpu()
    if values.numel() == 0:  # no inference steps (backprop): an empty [1, 0, L*cell] image
        scaled = values
    else:
        low, high = values.min(), values.max()
        scaled = torch.ones_like(values) if high == low else (values - low) / (high - low)
    image = scaled.repeat_interleave(cell, dim=0).repeat_interleave(cell, dim=1)
    return image.unsqueeze(0).to(torch.float32)


def precision_markdown(table: PrecisionTable) -> str:
    """The precision table's exact values as a markdown table (rows t, then the learning row)."""
    layers = table.layers
    header = "| t | " + " | ".join(f"l={layer}" for layer in range(1, layers + 1)) + " |"
    rule = "|---" * (layers + 1) + "|"
    rows = [
        f"| {t} | " + " | ".join(f"{v:.6g}" for v in row) + " |"
        for t, row in enumerate(table.inference.tolist())
    ]
    rows.append("| learning | " + " | ".join(f"{v:.6g}" for v in table.learning.tolist()) + " |")
    return "\n".join([header, rule, *rows])


def _wait_for_a_later_second(log_dir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with its creation second
    followed by a process-wide counter that does not sort as a number. A resumed run's file must sort after
    the interrupted run's for its purge to apply, so wait until the clock is past their newest second."""
    seconds = [
        int(m.group(1))
        for p in log_dir.glob("events.out.tfevents.*")
        if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", p.name))
    ]
    if seconds:
        delay = max(seconds) + 1 - time.time()
        if delay > 0:
            time.sleep(delay)


def _hparam_value(value: object) -> bool | int | float | str:
    """HParams take booleans, numbers and strings; anything else (None, a list) is shown as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "none" if value is None else str(value)


class RunLogger:
    """Writes one seed's TensorBoard events into `log_dir`; every method does nothing when disabled."""

    def __init__(self, log_dir: Path, *, enabled: bool = True, purge_step: int | None = None) -> None:
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            if purge_step is not None:
                _wait_for_a_later_second(Path(log_dir))
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log_start(self, recipe_toml: str, table: PrecisionTable) -> None:
        """The resolved recipe as text; the precision table as values and, given inference steps, an image."""
        if self.writer is None:
            return
        preformatted = "\n".join("    " + line for line in recipe_toml.splitlines())
        self.writer.add_text("recipe", preformatted, global_step=0)
        if table.steps > 0:
            self.writer.add_image("precision/table", precision_image(table), global_step=0, dataformats="CHW")
        self.writer.add_text("precision/values", precision_markdown(table), global_step=0)

    def log_train(self, step: int, loss: float, lr: float) -> None:
        """The mean training loss since the previous log point and the current learning rate."""
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("lr", lr, step)

    def log_epoch(
        self, step: int, *, epoch: int, loss: float, top1: float, top5: float, energy: Sequence[float],
        val_top1: float | None = None, val_top5: float | None = None,
    ) -> None:
        """End-of-epoch metrics: test (and validation) accuracy, the epoch's mean loss and per-layer
        energies."""
        if self.writer is None:
            return
        self.writer.add_scalar("epoch", epoch, step)
        self.writer.add_scalar("train/epoch_loss", loss, step)
        self.writer.add_scalar("test/top1", top1, step)
        self.writer.add_scalar("test/top5", top5, step)
        if val_top1 is not None:
            self.writer.add_scalar("val/top1", val_top1, step)
        if val_top5 is not None:
            self.writer.add_scalar("val/top5", val_top5, step)
        for layer, value in enumerate(energy, start=1):
            self.writer.add_scalar(energy_tag(layer), value, step)
        self.writer.flush()

    def log_hparams(self, hparams: Mapping[str, object], best_top1: float, step: int) -> None:
        """The flattened recipe in the HParams tab of this run, with the best top-1 as its metric."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        values = {key: _hparam_value(value) for key, value in hparams.items()}
        experiment, session_start, session_end = hparams_summaries(values, {BEST_TOP1_TAG: best_top1})
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_scalar(BEST_TOP1_TAG, best_top1, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
