"""Progress of a run on stdout: a tqdm bar per epoch on a terminal, plain log lines otherwise.

A log file (stdout not a terminal) receives plain lines only, with no carriage return or escape code: one
per log point, one per epoch and the final table. Under torchrun only rank 0 prints: the training loop
hands this class rank 0's stream and the other ranks a stream that discards what it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm


class Progress:
    """What a run prints as it trains: notes, log points, epoch lines and the final table."""

    REFRESH_S = 0.2
    """Least time between two redraws of the bar."""

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)()) if tty is None else tty
        self.loss: float | None = None
        self.top1: float | None = None
        self._bar: tqdm | None = None

    def note(self, text: str) -> None:
        """A line of its own (above the bar, which is redrawn below it)."""
        if self._bar is not None:
            self._bar.clear()
        print(text, file=self.stream, flush=True)
        if self._bar is not None:
            self._bar.refresh()

    def tick(self, seed: int, epoch: int, epochs: int, batch: int, batches: int, rate: float) -> None:
        """A batch finished: move the bar (terminal only; tqdm redraws at most every REFRESH_S seconds)."""
        if self.tty:
            self._advance(seed, epoch, epochs, batch, batches, rate)

    def log_point(
        self, seed: int, epoch: int, epochs: int, batch: int, batches: int, loss: float, lr: float,
        rate: float,
    ) -> None:
        """A log point: the mean loss since the previous one is known."""
        self.loss = loss
        if self.tty:
            self._advance(seed, epoch, epochs, batch, batches, rate, redraw=True)
            return
        print(
            f"seed {seed} epoch {epoch}/{epochs} batch {batch}/{batches} loss {loss:.4g} lr {lr:.3g} "
            f"{rate:.0f} samples/s",
            file=self.stream,
            flush=True,
        )

    def epoch_end(
        self, seed: int, epoch: int, epochs: int, loss: float, top1: float, top5: float, state: Any,
        seconds: float, val_top1: float | None = None,
    ) -> None:
        """The epoch's line (replacing its bar): loss, test accuracy (and validation accuracy), best so far,
        time. `state` is the seed's `SeedState`."""
        self.top1 = top1
        if val_top1 is None:
            best = f"best {state.best_top1:.4f} (epoch {state.best_epoch})"
        else:
            best = f"val_top1 {val_top1:.4f} best val {state.best_val_top1:.4f} (epoch {state.best_val_epoch})"
        self._close_bar()
        print(
            f"seed {seed} epoch {epoch}/{epochs} loss {loss:.4g} top1 {top1:.4f} top5 {top5:.4f} {best} "
            f"{seconds:.1f}s",
            file=self.stream,
            flush=True,
        )

    def abort(self) -> None:
        """Take a half-drawn bar off the terminal (interruption, failure)."""
        self._close_bar()

    def final(self, summary: dict[str, Any]) -> None:
        """A table of the seeds and the mean ± population std line."""
        self._close_bar()
        validated = "best_val_top1_mean" in summary
        header = ("seed", "best_top1", "best_top5", "final_top1", "epochs", "wall_s")
        header += ("best_val", "test@val") if validated else ()
        widths = {"seed": 6, "epochs": 6, "wall_s": 8}
        lines = [" ".join(f"{h:>{widths.get(h, 10)}}" for h in header)]
        for s in summary["seeds"]:
            line = (
                f"{s['seed']:>6} {s['best_top1']:>10.4f} {s['best_top5']:>10.4f} {s['final_top1']:>10.4f} "
                f"{s['epochs']:>6} {s['wall_s']:>8.1f}"
            )
            if validated:
                line += f" {s['best_val_top1']:>10.4f} {s['test_top1_at_best_val']:>10.4f}"
            lines.append(line)
        n = len(summary["seeds"])
        at_val = (
            f", test top-1 at the best validation epoch {summary['test_top1_at_best_val_mean']:.4f} ± "
            f"{summary['test_top1_at_best_val_std']:.4f}" if validated else ""
        )
        lines.append(
            f"top-1 {summary['top1_mean']:.4f} ± {summary['top1_std']:.4f}, "
            f"top-5 {summary['top5_mean']:.4f} ± {summary['top5_std']:.4f}{at_val} "
            f"(mean ± population std over {n} seed{'s' if n != 1 else ''}); summary: "
            f"{Path(summary['run_dir']) / 'summary.json'}"
        )
        print("\n".join(lines), file=self.stream, flush=True)

    def _advance(self, seed: int, epoch: int, epochs: int, batch: int, batches: int, rate: float,
                 redraw: bool = False) -> None:
        bar = self._bar
        if bar is None or bar.total != batches or batch < bar.n:
            self._close_bar()
            bar = self._bar = tqdm(
                total=batches, desc=f"seed {seed} epoch {epoch}/{epochs}", file=self.stream, leave=False,
                mininterval=self.REFRESH_S, dynamic_ncols=True, bar_format="{desc} {bar} {n_fmt}/{total_fmt} {postfix}",
            )
        loss = f"{self.loss:.4g}" if self.loss is not None else "-"
        top1 = f"{self.top1:.4f}" if self.top1 is not None else "-"
        bar.set_postfix_str(f"loss {loss} last top1 {top1} {rate:.0f} samples/s", refresh=False)
        bar.update(batch - bar.n)
        if redraw:
            bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
