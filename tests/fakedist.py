"""Build fake installed distributions on disk, so tests exercise real entry-point loading without pip.

A fake distribution is a `<name>-<version>.dist-info` folder (METADATA and entry_points.txt) plus the
module files it points at, written into one directory that the test puts on sys.path.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path


def make_dist(
    root: Path,
    name: str,
    version: str = "1.0",
    entry_points: dict[str, str] | None = None,
    modules: dict[str, str] | None = None,
    group: str = "pccore",
) -> Path:
    """Write a distribution `name` with `entry_points` (name -> `module[:attr]`) in `group` and the
    `modules` (module name -> source, dedented) into `root`; return `root` for sys.path."""
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{re.sub(r'[-.]+', '_', name)}-{version}.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{group}]"] + [f"{ep} = {value}" for ep, value in (entry_points or {}).items()]
    (folder / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root
