"""Device names in recipes and on the command line (`auto`, `cpu`, `cuda`, `cuda:N`) resolved to torch devices."""

from __future__ import annotations

import torch

from pccore.core.errors import DeviceUnavailable, UsageError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda`/`cuda:N` without such a device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device '{name}' was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                "use --device cpu, or --device auto to pick CUDA only when present"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device '{name}' was requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise UsageError(f"unsupported device '{name}': use auto, cpu, cuda or cuda:N")
    return device
