"""`pccore schedule` and `pccore diagnose`: look inside a recipe without training it.

`schedule_report` and `diagnose_report` make the data both commands print (and `pccore.precision_schedule`
and `pccore.diagnose_recipe` return); `--plot FILE.png` draws it with `pccore.inspect.figures`.
"""

from __future__ import annotations

import json
import math
import sys

import torch

from pccore.core.components import DataSpec, PrecisionTable
from pccore.core.devices import resolve_device
from pccore.core.engine import PCEngine
from pccore.run.assemble import DTYPES, assemble, preflight


def _load(args):
    from pccore.core.registry import get_registry
    from pccore.recipe import load_recipe

    registry = get_registry()
    return load_recipe(args.recipe, args.overrides, registry=registry), registry


def _data_spec(recipe, registry) -> DataSpec:
    return registry.build("dataset", recipe.data.name, recipe.data.params).spec()


def precision_table(recipe, registry) -> PrecisionTable:
    """The table the recipe will use; the layer count comes from building the model on the meta device
    (on the CPU for an architecture that cannot be built there)."""
    spec = _data_spec(recipe, registry)
    layers = preflight(recipe, spec, torch.device("cpu"), registry)
    if layers is None:
        layers = len(assemble(recipe, spec, torch.device("cpu"), registry).blocks)
    schedule = registry.build("precision", recipe.precision.name, recipe.precision.params)
    return schedule.table(layers, recipe.inference.steps)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _print_grid(title: str, row_label: str, rows: list[list[float]], layers: int) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    width = max([len(c) for row in cells for c in row] + [len(f"l={layers}")])
    print(title)
    print(" " * 8 + " ".join(f"l={l}".rjust(width) for l in range(1, layers + 1)))
    for label, row in zip(row_label, cells, strict=True):
        print(f"{label:<8}" + " ".join(c.rjust(width) for c in row))


def schedule_report(recipe, registry) -> dict:
    """The precision table as plain data: `layers`, `steps`, `inference[t][l]` and `learning[l]`."""
    table = precision_table(recipe, registry)
    return {"layers": table.layers, "steps": table.steps, "inference": table.inference.tolist(),
            "learning": table.learning.tolist()}


def _plot_target(args):
    """The checked `--plot` path (before any work is done), or None without --plot."""
    if not getattr(args, "plot", None):
        return None
    from pccore.inspect.figures import check_png_path

    return check_png_path(args.plot)


def _save_plot(figure, target) -> None:
    from pccore.inspect.figures import save_png

    save_png(figure, target)
    print(f"figure written to {target}", file=sys.stderr)


def schedule_command(args) -> int:
    """`pccore schedule RECIPE [--set ...] [--json] [--plot FILE.png]`."""
    target = _plot_target(args)
    recipe, registry = _load(args)
    report = schedule_report(recipe, registry)
    layers, steps = report["layers"], report["steps"]
    if args.json:
        print(json.dumps(report))
    else:
        labels = [f"t={t}" for t in range(steps)] + ["learn"]
        _print_grid(
            f"precision pi[t][l] of '{recipe.precision.name}': {layers} layers, {steps} inference steps",
            labels, report["inference"] + [report["learning"]], layers,
        )
    if target is not None:
        from pccore.inspect.figures import plot_schedule

        title = f"{recipe.run.name}: precision '{recipe.precision.name}', {layers} layers, T = {steps}"
        _save_plot(plot_schedule(report, title=title), target)
    return 0


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else math.nan


def diagnose_batch(engine: PCEngine, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One batch through `engine`, as data: the energy of every layer at every inference step (batch mean,
    `energy[t][l]`, zero below the wavefront) and the cosine between each block's weight update and the
    backprop gradient of the output loss on the same weights and batch (`cosine_to_bp[l]`; NaN for a
    block without gradient; for an algorithm that steps the weights during inference, the sum of the
    batch's weight updates, taken at the initial weights) and the ratio of their norms
    (`norm_ratio_to_bp[l]`), plus `layers`, `steps`, `loss` and `bp_loss`; for a model with multi-part
    layers also `energy_parts[part][t][l]` (None where a layer has no such part). The weights, BatchNorm
    statistics and gradients are left as they were."""
    model = engine.model
    model.train()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    saved_grads = [p.grad for p in params]

    engine.prepare_batch()
    # An algorithm that steps the weights during inference (incremental PC) hands its per-step gradients to
    # this weight step, which adds them up and steps nothing: the update compared is the sum of the batch's
    # weight updates at the initial weights.
    summed: dict[int, torch.Tensor] = {}

    def add_up(*, stoppable: bool = False) -> None:
        for i, p in enumerate(params):
            if p.grad is not None:
                summed[i] = summed[i] + p.grad if i in summed else p.grad.clone()
                p.grad = None

    trace = engine.settle(x, y, record=True, weight_step=add_up)
    if trace.learn:
        loss = engine.learning_loss(trace)
        learnt = torch.autograd.grad(loss, params, allow_unused=True)
    else:
        loss = trace.final_energy.sum() / x.shape[0]
        learnt = (None,) * len(params)
    pc_grads = [g if i not in summed else (summed[i] if g is None else summed[i] + g) for i, g in enumerate(learnt)]
    model.load_state_dict(saved)
    for p, g in zip(params, saved_grads, strict=True):
        p.grad = g

    engine.norm.set_phase(model, "forward")
    h = x
    for block in engine.blocks:
        h = block(h)
    bp_loss = engine.layer_energy(engine.L, engine.one_hot(y), h) / x.shape[0]
    bp_grads = torch.autograd.grad(bp_loss, list(model.parameters()), allow_unused=True)
    model.load_state_dict(saved)

    index = {id(p): i for i, p in enumerate(model.parameters())}
    cosines = []
    def flat(grads, params) -> torch.Tensor:
        """One block's gradients as one vector (a parameter without a gradient counts as zeros)."""
        parts = [grads[index[id(p)]] for p in params]
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                          for g, p in zip(parts, params, strict=True)]).double()

    ratios = []
    for block in model:
        params = list(block.parameters())
        update, gradient = flat(pc_grads, params), flat(bp_grads, params)
        cosines.append(_cosine(update, gradient))
        ratios.append(float(update.norm() / gradient.norm()) if gradient.norm() > 0 else math.nan)
    energies = trace.energies if trace.energies is not None else torch.zeros(0, engine.L)
    report = {
        "layers": engine.L,
        "steps": engine.T,
        "energy": (energies / x.shape[0]).tolist(),
        "cosine_to_bp": cosines,
        "norm_ratio_to_bp": ratios,
        "loss": float(loss.detach()),
        "bp_loss": float(bp_loss.detach()),
    }
    if trace.part_energies is not None:
        # [part][t][l]: each part's weighted energy (batch mean); None where a layer has no such part.
        counts = [1 if w is None else len(w) for w in engine.part_weights[1:]]
        per_part = (trace.part_energies / x.shape[0]).permute(2, 0, 1).tolist()
        report["energy_parts"] = [
            [[v if p < counts[l] else None for l, v in enumerate(row)] for row in rows]
            for p, rows in enumerate(per_part)
        ]
    return report


def first_batch(recipe, registry, device: torch.device, *, smoke: bool) -> tuple[DataSpec, torch.Tensor, torch.Tensor]:
    """The first training batch of `data.batch_size` (random data shaped like the dataset with `smoke`,
    nothing read from disk), on `device` in the recipe's dtype and memory format; a model too large, or
    one that cannot train on a batch of that size, is refused (UsageError) before it is built."""
    from pccore.run.data import BatchFeeder, smoke_data

    dataset = registry.build("dataset", recipe.data.name, recipe.data.params)
    spec = dataset.spec()
    seed = recipe.run.seeds[0]
    data = smoke_data(spec, 1, recipe.data.batch_size, seed) if smoke else dataset.load()
    feeder = BatchFeeder(data, train=True, batch_size=recipe.data.batch_size, device=device,
                         dtype=DTYPES[recipe.run.dtype], channels_last=recipe.run.channels_last)
    x, y = next(iter(feeder.epoch(seed, 0)))
    preflight(recipe, spec, device, registry, train_size=int(x.shape[0]))  # a batch the model cannot take
    return spec, x, y


def diagnose_report(recipe, registry, device: torch.device, *, smoke: bool) -> dict:
    """`diagnose_batch` on the recipe's first training batch, with the model initialised from the first
    seed (random data shaped like the dataset with `smoke`)."""
    spec, x, y = first_batch(recipe, registry, device, smoke=smoke)
    torch.manual_seed(recipe.run.seeds[0])
    assembly = assemble(recipe, spec, device, registry)
    return diagnose_batch(assembly.engine, x, y)


def diagnose_command(args) -> int:
    """`pccore diagnose RECIPE [--set ...] [--smoke] [--device D] [--json] [--plot FILE.png]`."""
    target = _plot_target(args)
    recipe, registry = _load(args)
    device = resolve_device(args.device or recipe.run.device)
    report = diagnose_report(recipe, registry, device, smoke=args.smoke)
    L, T = report["layers"], report["steps"]
    if args.json:
        print(json.dumps(report))
    else:
        _print_grid(f"energy per layer at each inference step (batch mean), {L} layers, {T} steps",
                    [f"t={t}" for t in range(T)], report["energy"], L)
        for part, rows in enumerate(report.get("energy_parts", [])[1:], start=1):
            print()
            _print_grid(f"of which part {part} (the auxiliary neurons of multi-part layers; - where a layer has "
                        "none)", [f"t={t}" for t in range(T)], rows, L)
        print()
        _print_grid("cosine of each layer's weight update to the backprop gradient", ["cos"],
                    [report["cosine_to_bp"]], L)
    if target is not None:
        from pccore.inspect.figures import plot_diagnosis

        title = (f"{recipe.run.name}: {recipe.precision.name} precision, {recipe.update.name} update, "
                 f"{recipe.normalization.name} normalization{' (smoke data)' if args.smoke else ''}")
        _save_plot(plot_diagnosis(report, title=title), target)
    return 0
