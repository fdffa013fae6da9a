"""Data-parallel checks that need each rank's own view, run by torchrun from tests/test_distributed.py:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py RECIPES OUT

Every rank writes what it saw into OUT/rank<r>.json (and its models into OUT/<scenario>_rank<r>.pt); rank 0
also writes the scenarios' run directories under OUT. The test compares them with single-process runs.
Commands run through `pccore.cli.main` exactly as `torchrun ... -m pccore ...` runs them (the group joined
here stays joined across them); one launch for all the scenarios keeps the tests' start-up cost down.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pccore.cli import main as pccore_main
from pccore.core.errors import DivergenceError, PccoreError, UsageError
from pccore.parallel import distributed
from pccore.recipe import load_recipe
from pccore.run import seeds, training
from pccore_plugins.normalization import FreezableBatchNorm2d


def command(*argv: str) -> dict[str, Any]:
    """`pccore ARGV...` in this process: its exit status and what it printed on stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = pccore_main(list(argv))
    return {"status": status, "stdout": out.getvalue()}


def train_capturing(recipe_path: Path, out: Path) -> list[Any]:
    """Train a recipe in `out` and return the assemblies it built (one per seed), for their rank-local state."""
    built: list[Any] = []
    real = seeds.assemble

    def capture(*args: Any, **kwargs: Any) -> Any:
        built.append(real(*args, **kwargs))
        return built[-1]

    seeds.assemble = capture
    try:
        training.train(load_recipe(recipe_path), out)
    finally:
        seeds.assemble = real
    return built


def diverge_on_rank_one(recipe_path: Path, out: Path, world: distributed.World) -> dict[str, Any]:
    """Rank 1 alone sees a non-finite loss in the second batch; every rank must stop with the same message."""
    real = seeds.assemble

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        asm = real(*args, **kwargs)
        step = asm.engine.train_step
        count = [0]

        def train_step(x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            out = step(x, y, *args, **kwargs)
            count[0] += 1
            if world.rank == 1 and count[0] == 2:
                return out._replace(loss=torch.full_like(out.loss, float("nan")))
            return out

        asm.engine.train_step = train_step
        return asm

    seeds.assemble = poisoned
    try:
        training.train(load_recipe(recipe_path), out)
    except DivergenceError as err:
        return {"message": str(err), "shared": bool(getattr(err, "pccore_shared", False))}
    finally:
        seeds.assemble = real
    return {"message": None}


def errors_between_ranks(world: distributed.World) -> dict[str, Any]:
    """An error on rank 0 inside from_rank_zero reaches every rank; agree() names the rank that failed."""
    seen: dict[str, Any] = {}

    def only_rank_zero_fails() -> None:
        raise UsageError("rank 0 cannot do this")

    try:
        world.from_rank_zero(only_rank_zero_fails, "testing")
    except UsageError as err:
        seen["from_rank_zero"] = [type(err).__name__, str(err), bool(getattr(err, "pccore_shared", False))]
    try:
        world.agree(UsageError("rank 1 failed on its own") if world.rank == 1 else None, "testing agreement")
    except PccoreError as err:
        seen["agree"] = [type(err).__name__, str(err), bool(getattr(err, "pccore_shared", False))]
    seen["from_rank_zero_value"] = world.from_rank_zero(lambda: {"made by": world.rank}, "sending a value")
    return seen


def synchronised_batch_norm(world: distributed.World) -> dict[str, float]:
    """Synchronised BatchNorm on shards of 3 and 2 samples against F.batch_norm on the whole batch of 5:
    outputs, input gradients, summed weight gradients and running statistics (float64)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) * 2 + 1
    upstream = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(3, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    lo, hi = world.shard(0, 5)

    layer = FreezableBatchNorm2d(3).double()
    layer.sync = True
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    shard = x[lo:hi].clone().requires_grad_(True)
    y = layer(shard)
    (y * upstream[lo:hi]).sum().backward()
    weight_grad = world.sum(layer.weight.grad.clone())
    bias_grad = world.sum(layer.bias.grad.clone())

    whole = x.clone().requires_grad_(True)
    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    reference = F.batch_norm(whole, mean, var, w, b, True, 0.1, layer.eps)
    (reference * upstream).sum().backward()

    frozen = FreezableBatchNorm2d(3).double()
    frozen.sync, frozen.update_stats = True, False
    frozen_out = frozen(x[lo:hi])
    return {
        "shard": hi - lo,
        "output": float((y - reference[lo:hi]).abs().max()),
        "input_grad": float((shard.grad - whole.grad[lo:hi]).abs().max()),
        "weight_grad": float((weight_grad - w.grad).abs().max()),
        "bias_grad": float((bias_grad - b.grad).abs().max()),
        "running_mean": float((layer.running_mean - mean).abs().max()),
        "running_var": float((layer.running_var - var).abs().max()),
        "tracked": int(layer.num_batches_tracked),
        "frozen_output": float((frozen_out - F.batch_norm(x, None, None, None, None, True, 0.0, frozen.eps)[lo:hi])
                               .abs().max()),
        "frozen_untouched": bool(torch.equal(frozen.running_mean, torch.zeros(3, dtype=torch.float64))
                                 and torch.equal(frozen.running_var, torch.ones(3, dtype=torch.float64))
                                 and int(frozen.num_batches_tracked) == 0),
    }


def main(recipes: Path, out: Path) -> None:
    world = distributed.join()
    results: dict[str, Any] = {"rank": world.rank, "size": world.size}
    results["sf"] = command("run", str(recipes / "sf.toml"), "--out", str(out / "sf"))
    for name in ("bf", "bf_sync", "pc", "ipc"):
        built = train_capturing(recipes / f"{name}.toml", out / name)
        torch.save([asm.blocks.state_dict() for asm in built], out / f"{name}_rank{world.rank}.pt")
    results["divergence"] = diverge_on_rank_one(recipes / "pc.toml", out / "diverged", world)
    results["errors"] = errors_between_ranks(world)
    results["batch_norm"] = synchronised_batch_norm(world)
    results["bench"] = command("bench", str(recipes / "sf.toml"), "--json", "--steps", "2", "--warmup", "1")
    results["resume"] = command("run", "--resume", str(recipes.parent / "cut"))
    (out / f"rank{world.rank}.json").write_text(json.dumps(results))
    # the group is left at exit, as a script that uses the API leaves it


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
