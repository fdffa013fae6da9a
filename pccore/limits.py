"""What torch can index and allocate: the limits recipe values and models are checked against."""

from __future__ import annotations

INDEX_LIMIT = 2**31 - 1
"""The largest integer a recipe may hold, and the most elements one tensor of a model may have: many torch
kernels index tensors with 32-bit integers."""

FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32; a number above it cannot become a float32 tensor value."""
