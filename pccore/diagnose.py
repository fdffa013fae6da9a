"""`pccore schedule` and `pccore diagnose`: look inside a recipe without training it."""

from __future__ import annotations

import json
import math

import torch

from pccore.assemble import DTYPES, assemble, preflight, resolve_device
from pccore.components import DataSpec, PrecisionTable


def _load(args):
    from pccore.plugins import get_registry
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


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _print_grid(title: str, row_label: str, rows: list[list[float]], layers: int) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    width = max([len(c) for row in cells for c in row] + [len(f"l={layers}")])
    print(title)
    print(" " * 8 + " ".join(f"l={l}".rjust(width) for l in range(1, layers + 1)))
    for label, row in zip(row_label, cells, strict=True):
        print(f"{label:<8}" + " ".join(c.rjust(width) for c in row))


def schedule_command(args) -> int:
    recipe, registry = _load(args)
    table = precision_table(recipe, registry)
    inference = table.inference.tolist()
    learning = table.learning.tolist()
    if args.json:
        print(json.dumps({"layers": table.layers, "steps": table.steps, "inference": inference,
                          "learning": learning}))
        return 0
    labels = [f"t={t}" for t in range(table.steps)] + ["learn"]
    _print_grid(
        f"precision pi[t][l] of '{recipe.precision.name}': {table.layers} layers, {table.steps} inference steps",
        labels, inference + [learning], table.layers,
    )
    return 0


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else math.nan


def diagnose_batch(assembly, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-step, per-layer energies (averaged over the batch) of one batch's inference, and the cosine
    between each layer's recipe update and the backprop gradient of the output loss, same weights and batch."""
    engine = assembly.engine
    model = assembly.blocks
    model.train()
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    trace = engine.infer(x, y, record=True)
    loss = engine.learning_loss(trace)
    pc_grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    model.load_state_dict(saved)

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

    for block in model:
        params = list(block.parameters())
        cosines.append(_cosine(flat(pc_grads, params), flat(bp_grads, params)))
    energies = trace.energies if trace.energies is not None else torch.zeros(0, engine.L)
    return {
        "layers": engine.L,
        "steps": engine.T,
        "energy": (energies / x.shape[0]).tolist(),
        "cosine_to_bp": cosines,
        "loss": float(loss.detach()),
        "bp_loss": float(bp_loss.detach()),
    }


def first_batch(recipe, registry, device: torch.device, *, smoke: bool) -> tuple[DataSpec, torch.Tensor, torch.Tensor]:
    """The first training batch of `data.batch_size` (random data shaped like the dataset with `smoke`,
    nothing read from disk), on `device` in the recipe's dtype and memory format; a model too large, or
    one that cannot train on a batch of that size, is refused (UsageError) before it is built."""
    from pccore.data import BatchFeeder, smoke_data

    dataset = registry.build("dataset", recipe.data.name, recipe.data.params)
    spec = dataset.spec()
    seed = recipe.run.seeds[0]
    data = smoke_data(spec, 1, recipe.data.batch_size, seed) if smoke else dataset.load()
    feeder = BatchFeeder(data, train=True, batch_size=recipe.data.batch_size, device=device,
                         dtype=DTYPES[recipe.run.dtype], channels_last=recipe.run.channels_last)
    x, y = next(iter(feeder.epoch(seed, 0)))
    preflight(recipe, spec, device, registry, train_size=int(x.shape[0]))  # a batch the model cannot take
    return spec, x, y


def diagnose_command(args) -> int:
    recipe, registry = _load(args)
    device = resolve_device(args.device or recipe.run.device)
    spec, x, y = first_batch(recipe, registry, device, smoke=args.smoke)
    torch.manual_seed(recipe.run.seeds[0])
    assembly = assemble(recipe, spec, device, registry)
    report = diagnose_batch(assembly, x, y)
    if args.json:
        print(json.dumps(report))
        return 0
    L, T = report["layers"], report["steps"]
    _print_grid(f"energy per layer at each inference step (batch mean), {L} layers, {T} steps",
                [f"t={t}" for t in range(T)], report["energy"], L)
    print()
    _print_grid("cosine of each layer's weight update to the backprop gradient", ["cos"],
                [report["cosine_to_bp"]], L)
    return 0
