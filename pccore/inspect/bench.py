"""`pccore bench`: time training steps of a recipe against backprop on the same model, batch and device.

Both models are built from the recipe (same architecture, normalisation policy and initial weights); the
backprop copy swaps in the `backprop` update rule, a `constant` precision table and `clamp` nudging. The
timed steps alternate (pc, bp, pc, ...) on one random batch shaped like the recipe's dataset, so drifts
in the machine's speed hit both alike. Each step is `engine.train_step` plus an AdamW step.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` around each timed step, less the tensors the other
model keeps between steps; on the CPU the peak resident set of a separate process per algorithm
(`python -m pccore.inspect.bench --worker pc|bp ...`), so one model's footprint does not hide the other's.

Under torchrun (`torchrun --nproc-per-node N -m pccore bench RECIPE`) every rank steps its shard of the
batch, `data.batch_size` being the global batch, and sums the weight gradients across ranks as training
does; the report (printed by rank 0, with rank 0's times) adds the time of that all-reduce and its share of
the step, and the bytes it moves. CPU memory is not measured there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from pccore.core.components import DataSpec
from pccore.core.devices import resolve_device
from pccore.core.errors import PccoreError, UsageError
from pccore.core.optim import WeightStepper, make_optimizer
from pccore.inspect.diagnose import first_batch
from pccore.parallel import distributed
from pccore.run.assemble import Assembly, assemble
from pccore.run.graphs import CapturedStep, check_cuda_graphs

ALGORITHMS = ("pc", "bp")
"""The two sides of a benchmark: the recipe as written, and its backprop copy."""

MEMORY_STEPS = 2
"""Steps a memory worker runs: the second already holds the optimizer state and the previous gradients."""

_MB = 2**20


# --- building ------------------------------------------------------------------------------------


def backprop_recipe(recipe: Any, registry: Any) -> Any:
    """The recipe trained with backprop: update `backprop`, precision `constant`, nudging `clamp` and
    inference `states` (an algorithm of its own, iPC or ePC, refuses the backprop update), with default
    parameters; model, normalisation, data and numerics unchanged."""

    def section(name: str, kind: str, replacement: str) -> Any:
        try:
            params = registry.component(kind, replacement).params()
        except UsageError as err:
            raise UsageError(
                f"pccore bench compares against backprop and needs the {kind} {replacement!r}, "
                f"which no loaded plugin provides ({err})"
            ) from None
        return attrs.evolve(getattr(recipe, name), name=replacement, params=params)

    return attrs.evolve(
        recipe,
        update=section("update", "update", "backprop"),
        precision=section("precision", "precision", "constant"),
        nudging=section("nudging", "nudging", "clamp"),
        inference=section("inference", "inference", "states"),
    )


@attrs.define(eq=False)
class Trainer:
    """An assembled engine and its AdamW optimizer; `step` is one training step (replayed as a CUDA graph
    when `captured` holds a CapturedStep). In a data-parallel run `replicas` sums the gradients across
    ranks, `batch_size` is the global batch, and `reduce_seconds` collects the time each step spent in that
    sum."""

    name: str
    assembly: Assembly
    optimizer: torch.optim.Optimizer
    captured: CapturedStep | None = None
    replicas: distributed.ReplicaSync | None = None
    batch_size: int | None = None
    reduce_seconds: list[float] = attrs.Factory(list)

    _stepper: WeightStepper = attrs.field(init=False)

    @_stepper.default
    def _make_stepper(self) -> WeightStepper:
        return WeightStepper(self.optimizer)

    @property
    def device(self) -> torch.device:
        return self.assembly.engine.device

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Inference and weight gradients (summed across ranks in a data-parallel run), then the optimizer
        step."""
        if self.captured is not None:  # never data-parallel: check_cuda_graphs refuses that
            self.captured(x, y)
            return
        self.assembly.engine.train_step(x, y, self.batch_size, weight_step=self._weight_step)

    def _weight_step(self, *, stoppable: bool = False) -> None:
        """The run's weight step (`pccore.core.optim.WeightStepper`, without a schedule), timing the
        gradient sum across ranks."""
        if self.replicas is not None:
            _synchronize(self.device)
            start = time.perf_counter()
            self.replicas.sum_gradients()
            _synchronize(self.device)
            self.reduce_seconds.append(time.perf_counter() - start)
        self._stepper(stoppable=stoppable)

    def resident_bytes(self, device_type: str = "cuda") -> int:
        """Bytes of the tensors on `device_type` that this trainer keeps between steps: parameters,
        buffers, gradients, optimizer state and the engine's momentum buffers."""
        model = self.assembly.blocks
        tensors = [*model.parameters(), *model.buffers()]
        tensors += [p.grad for p in model.parameters() if p.grad is not None]
        tensors += [v for state in self.optimizer.state.values() for v in state.values()
                    if isinstance(v, torch.Tensor)]
        tensors += [b for buffers in self.assembly.engine._buffers.values() for b in buffers]
        storages = {}
        for t in tensors:
            if t.device.type == device_type:
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


def build_trainer(
    name: str, recipe: Any, spec: DataSpec, device: torch.device, registry: Any, world: distributed.World | None = None
) -> Trainer:
    """Assemble `recipe` (seeded with its first seed) and an AdamW optimizer over its trainable weights; in a
    data-parallel `world`, with the gradient sum across its ranks over a global batch of data.batch_size."""
    check_cuda_graphs(recipe, device, world.size if world is not None else 1, registry)
    torch.manual_seed(recipe.run.seeds[0])
    assembly = assemble(recipe, spec, device, registry)
    params = [p for p in assembly.blocks.parameters() if p.requires_grad]
    graphs = bool(recipe.run.cuda_graphs)
    optimizer = make_optimizer(params, recipe.optimizer, for_graphs=graphs)
    trainer = Trainer(name, assembly, optimizer, CapturedStep(assembly.engine, optimizer) if graphs else None)
    if world is not None and world.distributed:
        world.broadcast_module(assembly.blocks)
        trainer.replicas = distributed.ReplicaSync(world, assembly.blocks, assembly.components["normalization"])
        trainer.batch_size = recipe.data.batch_size
    return trainer


def build_pair(
    recipe: Any, spec: DataSpec, device: torch.device, registry: Any, world: distributed.World | None = None
) -> tuple[Trainer, Trainer]:
    """The recipe's trainer and its backprop copy, the copy starting from the same weights and buffers."""
    pc = build_trainer("pc", recipe, spec, device, registry, world)
    bp = build_trainer("bp", backprop_recipe(recipe, registry), spec, device, registry, world)
    bp.assembly.blocks.load_state_dict(pc.assembly.blocks.state_dict())
    return pc, bp


def variant_recipes(path: str, overrides: Sequence[str], variants: Sequence[str], registry: Any) -> list:
    """(label, recipe) for each `--variant`: the recipe file with its --set overrides and then the
    variant's own (';' separates several in one variant)."""
    from pccore.recipe import load_recipe

    out = []
    for variant in variants:
        extra = [v.strip() for v in variant.split(";") if v.strip()]
        if not extra:
            raise UsageError(f"--variant {variant!r}: expected KEY=VALUE overrides, e.g. --variant precision.base=0")
        out.append((" ".join(extra), load_recipe(path, [*overrides, *extra], registry)))
    return out


# --- measuring -----------------------------------------------------------------------------------


@attrs.define
class Timing:
    """Seconds of every timed step, and the peak CUDA memory in MB (None off CUDA); in a data-parallel run
    the seconds of each timed step's gradient all-reduce."""

    seconds: list[float] = attrs.field(factory=list)
    peak_mb: float | None = None
    reduce_seconds: list[float] = attrs.field(factory=list)

    @property
    def median(self) -> float:
        """The median step time: robust to the odd step slowed by the rest of the machine."""
        return statistics.median(self.seconds)

    @property
    def reduce_median(self) -> float | None:
        """The median all-reduce time, or None outside a data-parallel run."""
        return statistics.median(self.reduce_seconds) if self.reduce_seconds else None


def time_interleaved(
    trainers: Sequence[Trainer], x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int,
    device: torch.device,
) -> dict[str, Timing]:
    """`warmup` untimed rounds, then `steps` timed rounds; each round steps every trainer once, in order.

    On CUDA the device is synchronised before and after each timed step, and the peak memory of a step is
    `max_memory_allocated` during it less what the other trainers keep between steps.
    """
    cuda = device.type == "cuda"
    for _ in range(warmup):
        for trainer in trainers:
            trainer.step(x, y)
    timings = {t.name: Timing() for t in trainers}
    for _ in range(steps):
        for trainer in trainers:
            timing = timings[trainer.name]
            if cuda:
                torch.cuda.synchronize(device)
                others = sum(t.resident_bytes(device.type) for t in trainers if t is not trainer)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            trainer.step(x, y)
            if cuda:
                torch.cuda.synchronize(device)
            timing.seconds.append(time.perf_counter() - start)
            if cuda:
                peak = (torch.cuda.max_memory_allocated(device) - others) / _MB
                timing.peak_mb = peak if timing.peak_mb is None else max(timing.peak_mb, peak)
    return timings


def _rss_now() -> int:
    """The current resident set size in bytes (Linux), or the peak so far where /proc is missing."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _rss_peak()


def _reset_rss_peak() -> None:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0), so that what importing and
    loading left behind does not count; a no-op where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _rss_peak() -> int:
    """The peak RSS in bytes: VmHWM (Linux), which `_reset_rss_peak` resets, else `ru_maxrss`.

    On Linux `ru_maxrss` also covers the image the process replaced at exec, a copy of its parent's
    memory, so a worker started by a large parent would report the parent's size; VmHWM does not.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure_rss(recipe: Any, algorithm: str, steps: int = MEMORY_STEPS) -> float:
    """Peak RSS growth in MB of a fresh CPU process that builds `recipe` (or its backprop copy) and runs
    `steps` training steps with this process's thread count; the resolved recipe travels as a TOML file."""
    from pccore.recipe import recipe_to_toml

    with tempfile.TemporaryDirectory(prefix="pccore-bench-") as folder:
        path = Path(folder) / "recipe.toml"
        path.write_text(recipe_to_toml(recipe))
        command = [sys.executable, "-m", "pccore.inspect.bench", "--worker", algorithm, "--steps", str(steps),
                   str(path)]
        threads = str(torch.get_num_threads())
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " ".join(done.stderr.strip().splitlines()[-3:]) or "no error output"
        raise PccoreError(f"the memory worker for '{algorithm}' failed with exit status {done.returncode}: "
                          f"{tail}")
    return float(json.loads(lines[-1])["peak_mb"])


def worker_main(argv: Sequence[str] | None = None) -> int:
    """`python -m pccore.inspect.bench --worker pc|bp --steps N RECIPE`: print {"peak_mb": ...} as JSON."""
    parser = argparse.ArgumentParser(prog="python -m pccore.inspect.bench",
                                     description="memory worker of `pccore bench` (CPU only)")
    parser.add_argument("--worker", choices=ALGORITHMS, required=True, help="which side to run")
    parser.add_argument("--steps", type=int, default=MEMORY_STEPS, help="training steps to run")
    parser.add_argument("recipe", help="a resolved TOML recipe")
    args = parser.parse_args(argv)
    try:
        print(json.dumps({"peak_mb": _worker(args.recipe, args.worker, args.steps)}))
    except PccoreError as err:
        print(f"pccore: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def _load_lazy_modules() -> None:
    """Pay for what PyTorch imports on first use (the optimizer machinery alone is ~150 MB of RSS), so
    that it does not count as the model's memory."""
    weight = torch.nn.Parameter(torch.ones(2, 1, 3, 3))
    torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), weight).sum().backward()
    torch.optim.AdamW([weight]).step()


def _worker(path: str, algorithm: str, steps: int) -> float:
    from pccore.core.registry import get_registry
    from pccore.recipe import load_recipe

    if steps < 1:
        raise UsageError(f"the memory worker needs at least one step, got {steps}")
    registry = get_registry()
    recipe = load_recipe(path, (), registry)
    if algorithm == "bp":
        recipe = backprop_recipe(recipe, registry)
    device = torch.device("cpu")
    spec, x, y = first_batch(recipe, registry, device, smoke=True)
    _load_lazy_modules()
    before = _rss_now()
    _reset_rss_peak()
    trainer = build_trainer(algorithm, recipe, spec, device, registry)
    for _ in range(steps):
        trainer.step(x, y)
    return (_rss_peak() - before) / _MB


# --- the benchmark -------------------------------------------------------------------------------


def check_counts(steps: int, warmup: int) -> None:
    """Reject a benchmark without timed steps or with a negative warm-up, before anything is built."""
    if steps < 1:
        raise UsageError(f"--steps must be at least 1 (the number of timed steps per algorithm), got {steps}")
    if warmup < 0:
        raise UsageError(f"--warmup must be 0 or more (untimed steps before timing), got {warmup}")


def run_bench(
    recipe: Any, registry: Any, device: torch.device, *, steps: int, warmup: int, label: str = "",
    cpu_memory: bool = True, variants: Sequence[tuple[str, Any]] = (), world: distributed.World | None = None,
) -> dict[str, Any]:
    """Time `recipe` against its backprop copy and measure both peaks; the report `pccore bench --json`
    prints. `cpu_memory=False` skips the CPU memory workers (the peaks are then None off CUDA). Each of
    `variants` ((label, recipe) pairs) is timed in the same rounds, from the same weights. In a
    data-parallel `world`, each rank steps its shard of the batch and the report adds the all-reduce."""
    check_counts(steps, warmup)
    world = world or distributed.current()
    spec, x, y = first_batch(recipe, registry, device, smoke=True)
    lo, hi = world.shard(0, int(x.shape[0]))
    x, y = x[lo:hi], y[lo:hi]
    pc, bp = build_pair(recipe, spec, device, registry, world)
    others = []
    for index, (_, variant) in enumerate(variants):
        trainer = build_trainer(f"variant{index}", variant, spec, device, registry, world)
        trainer.assembly.blocks.load_state_dict(pc.assembly.blocks.state_dict())
        others.append(trainer)
    gradient_bytes = {t.name: sum(p.numel() * p.element_size() for p in t.assembly.blocks.parameters()
                                  if p.requires_grad) for t in (pc, bp)}
    timings = time_interleaved([pc, *others, bp], x, y, steps, warmup, device)
    for trainer in (pc, bp):  # the all-reduces of the timed steps, the last `steps` ones
        timings[trainer.name].reduce_seconds = trainer.reduce_seconds[len(trainer.reduce_seconds) - steps:]
    layers = pc.assembly.engine.L
    del pc, bp, others
    if device.type == "cuda":
        memory = "torch.cuda.max_memory_allocated per step, less the other models' resident tensors"
        peaks = {name: t.peak_mb for name, t in timings.items()}
    elif cpu_memory and not world.distributed:
        memory = "peak RSS growth of a separate process per algorithm"
        peaks = {"pc": measure_rss(recipe, "pc"), "bp": measure_rss(recipe, "bp")}
        peaks |= {f"variant{i}": measure_rss(v, "pc") for i, (_, v) in enumerate(variants)}
    else:
        memory = "not measured"
        peaks = dict.fromkeys(timings)
    pc_mb, bp_mb = peaks["pc"], peaks["bp"]
    pc_s, bp_s = timings["pc"].median, timings["bp"].median
    rows = []
    for index, (name, variant) in enumerate(variants):
        timing, peak = timings[f"variant{index}"], peaks[f"variant{index}"]
        rows.append({"variant": name, "update": variant.update.name, "precision": variant.precision.name,
                     "step_s": timing.median, "ratio": timing.median / bp_s, "peak_mb": peak,
                     "samples_s": timing.seconds})
    return {
        "recipe": label or recipe.run.name,
        "model": recipe.model.name,
        "layers": layers,
        "steps": recipe.inference.steps,
        "batch_size": recipe.data.batch_size,
        "input_shape": list(spec.input_shape),
        "update": recipe.update.name,
        "precision": recipe.precision.name,
        "inference": recipe.inference.name,
        "normalization": recipe.normalization.name,
        "device": str(device),
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "compile": bool(recipe.run.compile),
        "cuda_graphs": bool(recipe.run.cuda_graphs),
        "autocast": recipe.run.precision,
        "timed_steps": steps,
        "warmup": warmup,
        "pc_step_s": pc_s,
        "bp_step_s": bp_s,
        "ratio": pc_s / bp_s,
        "pc_peak_mb": pc_mb,
        "bp_peak_mb": bp_mb,
        "memory": memory,
        "pc_samples_s": timings["pc"].seconds,
        "bp_samples_s": timings["bp"].seconds,
        "variants": rows,
        "world_size": world.size,
        **_allreduce_fields(timings, gradient_bytes, world),
    }


def _allreduce_fields(timings: dict[str, Timing], gradient_bytes: dict[str, int], world: distributed.World
                      ) -> dict[str, Any]:
    """The gradient all-reduce of a data-parallel run: bytes summed per step, bytes each rank sends in a
    ring all-reduce, median seconds and share of the step per algorithm (None outside such a run)."""
    fields: dict[str, Any] = {
        "gradient_mb": gradient_bytes["pc"] / _MB,
        "ring_mb_per_rank": distributed.ring_allreduce_bytes(gradient_bytes["pc"], world.size) / _MB,
    }
    for name in ALGORITHMS:
        reduce_s = timings[name].reduce_median
        fields[f"{name}_allreduce_s"] = reduce_s
        fields[f"{name}_allreduce_share"] = None if reduce_s is None else reduce_s / timings[name].median
    return fields


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def format_report(report: dict[str, Any]) -> str:
    """The human form: a header and a short aligned table of time per step and peak memory."""
    shape = "x".join(str(d) for d in report["input_shape"])
    inference = report.get("inference", "states")  # state-based inference goes without saying
    algorithm = "" if inference == "states" else f", {inference}"
    pc_label = f"pc ({report['update']}, {report['precision']}{algorithm})"
    rows = [
        (pc_label, f"{report['pc_step_s']:.4f}", _mb(report["pc_peak_mb"])),
        ("backprop", f"{report['bp_step_s']:.4f}", _mb(report["bp_peak_mb"])),
        ("ratio pc / bp", f"{report['ratio']:.2f}x", _ratio(report["pc_peak_mb"], report["bp_peak_mb"])),
    ]
    for row in report.get("variants", []):
        rows += [
            (f"with {row['variant']}", f"{row['step_s']:.4f}", _mb(row["peak_mb"])),
            ("  ratio to bp", f"{row['ratio']:.2f}x", _ratio(row["peak_mb"], report["bp_peak_mb"])),
        ]
    head = ("", "s/step", "peak MB")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = [
        f"{report['recipe']}: {report['model']} ({report['layers']} layers), T={report['steps']}, "
        f"normalization {report['normalization']}, batch {report['batch_size']} of {shape}"
        + (f" over {report['world_size']} processes" if report.get("world_size", 1) > 1 else ""),
        f"{report['device']} ({report['device_name']}), torch {report['torch']}, "
        f"{report['threads']} threads; "
        f"median of {report['timed_steps']} interleaved steps after {report['warmup']} warm-up",
        f"memory: {report['memory']}",
        "",
    ]
    for row in [head, *rows]:
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}".rstrip())
    if report.get("pc_allreduce_s") is not None:
        lines.append("")
        lines.append(
            f"gradient all-reduce over {report['world_size']} process{'es' if report['world_size'] != 1 else ''}: "
            f"{report['gradient_mb']:.1f} MB of "
            f"gradients per step, {report['ring_mb_per_rank']:.1f} MB sent by each rank in a ring; "
            f"pc {report['pc_allreduce_s']:.4f} s ({100 * report['pc_allreduce_share']:.1f}% of its step), "
            f"backprop {report['bp_allreduce_s']:.4f} s ({100 * report['bp_allreduce_share']:.1f}%); rank 0's times"
        )
    return "\n".join(lines)


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _ratio(pc: float | None, bp: float | None) -> str:
    return "n/a" if pc is None or bp is None or bp <= 0 else f"{pc / bp:.2f}x"


def bench_command(args: argparse.Namespace) -> int:
    """`pccore bench RECIPE [--set ...] [--variant ...] [--steps N] [--warmup W] [--device D] [--json]`."""
    from pccore.core.registry import get_registry
    from pccore.recipe import load_recipe

    check_counts(args.steps, args.warmup)
    registry = get_registry()
    recipe = load_recipe(args.recipe, args.overrides, registry)
    variants = variant_recipes(args.recipe, args.overrides, getattr(args, "variants", []), registry)
    with distributed.session() as world:
        device = world.place(resolve_device(args.device or recipe.run.device))
        world.check_batches(recipe.data.batch_size, recipe.data.batch_size, 0)
        report = run_bench(recipe, registry, device, steps=args.steps, warmup=args.warmup, label=args.recipe,
                           variants=variants, world=world)
    if world.is_zero:
        print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
