"""Several processes at once: torch.distributed data parallelism, the local launcher (`--nproc`) and
local worker processes (devices and CPU cores for `tune` and `sweep` workers). Imports the core."""
