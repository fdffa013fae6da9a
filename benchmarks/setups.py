"""What the benchmark scripts share: the model setups, the algorithms, the paper's PCX timings, and a
description of the machine.

Every benchmark runs the base recipe `recipes/synthetic.toml` (random data, nothing downloaded) with
`--set` overrides for the model, input size, classes, batch, width, T and algorithm.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BASE_RECIPE = HERE / "recipes" / "synthetic.toml"
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Setup:
    """A model on inputs of one size: `epoch_steps` batches of 128 make one epoch of its dataset."""

    model: str
    size: int
    classes: int
    batch: int
    width: float
    steps: int
    dataset: str
    epoch_steps: int

    def overrides(self) -> list[str]:
        """`--set` arguments that turn the base recipe into this setup."""
        return [
            f"model.name={self.model}",
            f"model.width={float(self.width)!r}",
            f"data.size={self.size}",
            f"data.classes={self.classes}",
            f"data.batch_size={self.batch}",
            f"inference.steps={self.steps}",
        ]

    def with_(self, **changes: object) -> Setup:
        """A copy with some fields changed (`None` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


ALGORITHMS: dict[str, tuple[str, list[str]]] = {
    "sf": ("S+F (BF)", ["precision.name=spiking", "update.name=forward", "normalization.name=frozen"]),
    "pc": ("PC (BF)", ["precision.name=constant", "update.name=standard", "normalization.name=frozen"]),
    "sf0": ("S+F pure spike (BF)", ["precision.name=spiking", "precision.base=0.0", "update.name=forward",
                                    "normalization.name=frozen"]),
    "ipc": ("iPC (BF)", ["precision.name=constant", "update.name=standard", "normalization.name=frozen",
                         "inference.name=incremental", "inference.variant=batchnorm"]),
    "ipc0": ("S+iPC pure spike (BF)", ["precision.name=spiking", "precision.base=0.0", "update.name=standard",
                                       "normalization.name=frozen", "inference.name=incremental",
                                       "inference.variant=batchnorm"]),
    "epc": ("ePC (BF)", ["precision.name=constant", "update.name=standard", "normalization.name=frozen",
                         "inference.name=errors", "inference.lr=0.001", "inference.momentum=0.0"]),
}
"""Short name -> (display name, `--set` arguments). Backprop is measured by `pccore bench` in every row."""

PAPER_EPOCH_S: dict[str, dict[str, float]] = {
    "vgg5": {"bp": 1.16, "pc": 2.59, "sf": 2.37},
    "vgg7": {"bp": 1.29, "pc": 3.75, "sf": 3.58},
    "vgg10": {"bp": 2.03, "pc": 10.38, "sf": 10.88},
    "vgg15": {"bp": 9.40, "pc": 79.61, "sf": 77.58},
}
"""The paper's training time per epoch on one H100 with PCX (seconds): VGG5/VGG7 on CIFAR-10 (T = 5, 7),
VGG10 on CIFAR-100 (T = 10), VGG15 on Tiny ImageNet (T = 15)."""


def paper_ratio(model: str, algorithm: str) -> float | None:
    """The paper's PCX time ratio of `algorithm` over backprop for `model`, if it reports one."""
    row = PAPER_EPOCH_S.get(model)
    if row is None or algorithm not in row:
        return None
    return row[algorithm] / row["bp"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(device: str) -> dict[str, object]:
    """What the numbers were measured on: CPU, cores, GPU (for a CUDA device), torch, threads, date."""
    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def slug(text: str) -> str:
    """`Intel(R) Xeon(R) Platinum 8481C` -> `intel-xeon-platinum-8481c` (a file-name-safe label)."""
    text = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", " ", text.lower())
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-.") or "machine"


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with right-aligned numeric columns."""
    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(head))]
    rule = ["---:" if n else "---" for n in numeric]
    lines = [head, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x"))
    except ValueError:
        return text in ("", "-", "n/a")
    return True


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with `digits` significant digits, or `n/a`."""
    return "n/a" if value is None else f"{value:.{digits}g}"
