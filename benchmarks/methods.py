"""Every deep predictive coding method pccore hosts, side by side on one engine, on the offline digits.

    python benchmarks/methods.py                        # the committed table (2-core CPU: see the README)
    python benchmarks/methods.py --depths 5,10 --methods bp,epc --epochs 1 --out /tmp/m.md   # a quick look
    python benchmarks/methods.py --work runs/methods    # where the runs live (default); rerun to resume

Depth in MLPs: fully connected networks of L = 5, 10 and 20 layers (L - 1 hidden layers of 128 units, GELU,
orthogonal initialisation as the ePC authors' deep MLPs) on the 8x8 digits, trained with backprop (BP),
standard PC, S+F with BatchNorm Freezing, incremental PC (S+iPC), error optimisation (ePC), and muPC's
residual parameterisation (resmlp, ReLU: muPC's own network at the same depth, H = L - 1 hidden layers).
The PC methods take T = L inference steps. Convolutional: the thin ResNet10 of
recipes/quickstart_resnet.toml (16x16 digits) with auxiliary neurons (S+F BF, iPC) and without (ePC; BP).

Every cell trains each of its candidate weight learning rates once (seed 0) with 20% of the training images
held out, keeps the candidate with the best validation top-1, trains it with seeds 1 and 2 as well, and
reports the test top-1 at each seed's best validation epoch (mean and std), the wall time of all its runs,
and, on one held-out test batch with seed 0's trained weights, each layer's cosine between the method's
weight update and backprop's gradient and the ratio of their norms (|update| / |BP gradient|: near 0 where
a layer learns nothing). Each training is a `pccore run` in its own process, in `--work`/<cell>-<candidate>
(-seed<N>); a finished one is read back, an interrupted one is resumed (`pccore run --resume`), so the
script continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from setups import RESULTS, machine, markdown_table, slug

HERE = Path(__file__).resolve().parent
MLP_RECIPE = HERE / "recipes" / "methods_digits_mlp.toml"
RESNET_RECIPE = HERE.parent / "recipes" / "quickstart_resnet.toml"
VALIDATION = ["data.validation_fraction=0.2"]

SPIKING = ["precision.name=spiking", "precision.peak=1.0", "precision.base=0.001"]
REFERENCE_STATES = ["inference.lr=0.8", "inference.momentum=0.1", "inference.nesterov=true"]
"""The S+F reference example's state optimizer (METHOD.md), for S+F and S+iPC."""

MLP_METHODS: dict[str, tuple[str, list[str], list[str], str, list[str]]] = {
    # name: (label, overrides, candidate weight rates, the state rate's key, candidate state rates)
    "bp": ("BP", ["update.name=backprop", "precision.name=constant"], ["3e-4", "1e-3", "3e-3", "1e-2"], "", []),
    "pc": ("PC", ["update.name=standard", "precision.name=constant", "inference.momentum=0.0"],
           ["1e-3", "3e-3"], "lr_x", ["0.1", "0.03"]),
    "sf": ("S+F BF", [*SPIKING, "update.name=forward", "normalization.name=frozen", *REFERENCE_STATES],
           ["1e-3", "3e-3"], "lr_x", ["0.8", "0.3"]),
    "ipc": ("S+iPC", [*SPIKING, "update.name=standard", "inference.name=incremental", *REFERENCE_STATES],
            ["3e-4", "1e-3"], "lr_x", ["0.8", "0.3"]),
    "epc": ("ePC", ["update.name=standard", "precision.name=constant", "inference.name=errors",
                    "inference.momentum=0.0"], ["1e-3", "3e-3"], "lr_e", ["0.1", "0.03"]),
    "mupc": ("muPC (resmlp)", ["model.name=resmlp", "model.width=128", "model.activation=relu",
                               "model.parameterization=mupc", "update.name=standard", "precision.name=constant",
                               "inference.momentum=0.0", "optimizer.weight_decay=0.0"],
             ["1e-1", "1e-2"], "lr_x", ["0.0078125", "0.00390625"]),
}
"""The MLP rows, four candidates each: the weight rates times the state (error) rates, or four weight rates
for BP. muPC's state rates are jpc's 0.5 and 0.25 over the batch of 64 (recipes/base/mupc_digits.toml)."""

RESNET_METHODS: dict[str, tuple[str, list[str], list[str]]] = {
    "bp": ("BP", ["update.name=backprop", "precision.name=constant", "normalization.name=batchnorm",
                  "inference.steps=0"], ["1e-3"]),
    "sf-aux": ("S+F BF, aux", [], ["1e-3"]),
    "ipc-aux": ("S+iPC BF, aux", ["update.name=standard", "inference.name=incremental",
                                  "inference.variant=batchnorm"], ["3e-4"]),
    "epc": ("ePC BF, no aux", ["model.aux=false", "update.name=standard", "precision.name=constant",
                               "inference.name=errors", "inference.steps=5", "inference.lr=0.001",
                               "inference.momentum=0.0", "inference.nesterov=false"], ["1e-3"]),
}
"""The ResNet10 rows (quickstart_resnet.toml's S+F BF with aux, narrowed to ResNet10: N = 10 layers with
auxiliary neurons, 6 without). ePC takes the authors' published convolutional setting (T = 5, lr_e =
0.001, recipes/base/epc.toml)."""


VGG_RECIPE = HERE.parent / "recipes" / "quickstart.toml"
VGG_LAYERS = {"vgg5": 5, "vgg10": 10, "vgg15": 15}
VGG_METHODS: dict[str, tuple[str, list[str], list[str]]] = {
    "bp": ("BP", ["update.name=backprop", "precision.name=constant", "normalization.name=batchnorm"],
           ["1e-3", "3e-3"]),
    "pc": ("PC BF", ["update.name=standard", "precision.name=constant", "inference.lr=0.0235",
                     "inference.momentum=0.3"], ["1e-3", "3e-3"]),
    "sf": ("S+F BF", [], ["1e-3", "3e-3"]),
    "df": ("D+F BF", ["precision.name=decaying", 'precision.variant="reference"', "precision.k=1.0",
                      "inference.decay_last_lr=true"], ["1e-3", "3e-3"]),
    "ipc": ("S+iPC BF", ["update.name=standard", "inference.name=incremental", "inference.variant=batchnorm"],
            ["3e-4", "1e-3"]),
    "epc": ("ePC BF", ["update.name=standard", "precision.name=constant", "inference.name=errors",
                       "inference.lr=0.001", "inference.momentum=0.0", "inference.nesterov=false"], ["1e-3", "3e-3"]),
}
"""The VGG rows on 32x32 digits, width 1/8: quickstart.toml's S+F BF (lr_x 0.8, momentum 0.1, Nesterov)
and its siblings, T = L; PC takes quickstart_pc.toml's state optimizer (the PCX configuration), D+F the
reference decay (recipes/base/df.toml), ePC the authors' CNN setting with T = 5 at every depth."""


@dataclass(frozen=True)
class Cell:
    name: str
    section: str
    label: str
    layers: int
    recipe: Path
    overrides: list[str]
    candidates: dict[str, list[str]] = field(default_factory=dict)


def mlp_cell(method: str, depth: int, epochs: int) -> Cell:
    label, overrides, rates, key, states = MLP_METHODS[method]
    candidates = {f"lr {r}": [f"optimizer.lr={r}"] for r in rates} if not states else {
        f"lr {r}, {key} {x}": [f"optimizer.lr={r}", f"inference.lr={x}"] for r in rates for x in states}
    shape = ([f"model.depth={depth - 1}"] if method == "mupc"
             else [f"model.hidden=[{', '.join(['128'] * (depth - 1))}]", 'model.init="orthogonal"'])
    steps = [] if method == "bp" else [f"inference.steps={depth}"]
    budget = [f"train.epochs={epochs}", f"optimizer.schedule_epochs={epochs}", f"train.patience={epochs}"]
    return Cell(f"mlp-{method}-d{depth}", "mlp", label, depth, MLP_RECIPE, [*shape, *steps, *overrides, *budget],
                candidates)


def vgg_cell(method: str, model: str, epochs: int) -> Cell:
    label, overrides, rates = VGG_METHODS[method]
    layers = VGG_LAYERS[model]
    steps = "inference.steps=5" if method == "epc" else f"inference.steps={layers}"
    base = [f"model.name={model}", "data.size=32", steps, f"train.epochs={epochs}",
            f"optimizer.schedule_epochs={epochs}", f"train.patience={epochs}"]
    return Cell(f"{model}-{method}", model, label, layers, VGG_RECIPE, [*base, *overrides],
                {f"lr {r}": [f"optimizer.lr={r}"] for r in rates})


def resnet_cell(method: str, epochs: int) -> Cell:
    label, overrides, rates = RESNET_METHODS[method]
    base = ["model.name=resnet10", "inference.steps=10", f"train.epochs={epochs}",
            f"optimizer.schedule_epochs={epochs}", f"train.patience={epochs}"]
    layers = 6 if "model.aux=false" in overrides else 10
    return Cell(f"resnet10-{method}", "resnet", label, layers, RESNET_RECIPE, [*base, *overrides],
                {f"lr {r}": [f"optimizer.lr={r}"] for r in rates})


def train(recipe: Path, overrides: Sequence[str], out: Path, timeout: float) -> dict:
    """`pccore run` in a fresh process (or `--resume` of an interrupted one); the seed summary."""
    summary = out / "summary.json"
    if summary.is_file():  # finished in an earlier call
        return {**json.loads(summary.read_text())["seeds"][0], "reused": True}
    if (out / "run.json").is_file():
        command = [sys.executable, "-m", "pccore.cli", "run", "--resume", str(out)]
    else:
        command = [sys.executable, "-m", "pccore.cli", "run", str(recipe), "--device", "cpu", "--out", str(out)]
        for override in overrides:
            command += ["--set", override]
    failed = out / "methods-error.json"
    if failed.is_file():  # failed in an earlier call: not retried
        return json.loads(failed.read_text())
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        error = None if done.returncode == 0 else (
            " ".join(done.stderr.strip().splitlines()[-2:]) or f"exit {done.returncode}")
    except subprocess.TimeoutExpired:
        error = f"over the {timeout:.0f} s limit"
    out.mkdir(parents=True, exist_ok=True)
    (out / "methods-wall.json").write_text(json.dumps({"wall_s": time.perf_counter() - start}))
    if error is not None:
        failed.write_text(json.dumps({"error": error}))
        return {"error": error}
    return json.loads(summary.read_text())["seeds"][0]


def wall(out: Path) -> float:
    path = out / "methods-wall.json"
    return json.loads(path.read_text())["wall_s"] if path.is_file() else math.nan


def diagnostics(run_dir: Path) -> dict:
    """Per-layer cosine to backprop and |update| / |BP gradient| of the trained weights (the last
    checkpoint) on the first test batch, and each layer's energy at the last inference step."""
    import torch

    from pccore.core.registry import get_registry
    from pccore.inspect.diagnose import diagnose_batch
    from pccore.recipe import load_recipe
    from pccore.run.assemble import assemble
    from pccore.run.checkpoint import load_checkpoint
    from pccore.run.data import BatchFeeder

    registry = get_registry()
    recipe = load_recipe(run_dir / "recipe.toml")
    device = torch.device("cpu")
    data = registry.build("dataset", recipe.data.name, recipe.data.params).load()
    feeder = BatchFeeder(data, train=False, batch_size=recipe.data.batch_size, device=device,
                         dtype=torch.float32, channels_last=False)
    x, y = next(iter(feeder.epoch(0, 0)))
    spec = registry.build("dataset", recipe.data.name, recipe.data.params).spec()
    assembly = assemble(recipe, spec, device, registry)
    assembly.blocks.load_state_dict(load_checkpoint(run_dir / "seed_0" / "checkpoint.pt")["model"])
    engine = assembly.engine
    report = diagnose_batch(engine, x, y)
    last = report["energy"][-1] if report["energy"] else []
    return {"cosine_to_bp": report["cosine_to_bp"], "norm_ratio": report["norm_ratio_to_bp"], "last_energy": last}


def run_cell(cell: Cell, work: Path, timeout: float, seeds: int = 1) -> dict:
    results, outs = {}, {}
    for name, overrides in cell.candidates.items():
        print(f"... {cell.name}: {name}", file=sys.stderr, flush=True)
        outs[name] = work / f"{cell.name}-{slug(name)}"
        results[name] = train(cell.recipe, [*VALIDATION, *cell.overrides, *overrides], outs[name], timeout)
    finished = {k: v for k, v in results.items() if "error" not in v}
    outcome = {"cell": cell, "results": results, "chosen": None, "seconds": sum(wall(o) for o in outs.values())}
    if finished:
        chosen = max(finished, key=lambda k: finished[k]["best_val_top1"])
        outcome["chosen"] = chosen
        cache = outs[chosen] / "methods-diagnostics.json"
        if not cache.is_file():
            try:
                cache.write_text(json.dumps(diagnostics(outs[chosen])))
            except Exception as err:  # noqa: BLE001 - a row without diagnostics still has its accuracy
                cache.write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        outcome["diagnostics"] = json.loads(cache.read_text())
        # more seeds at the chosen rate (seed 0 is the candidate's own run)
        tops = [finished[chosen]["test_top1_at_best_val"]]
        for seed in range(1, seeds):
            print(f"... {cell.name}: {chosen}, seed {seed}", file=sys.stderr, flush=True)
            out = work / f"{cell.name}-{slug(chosen)}-seed{seed}"
            done = train(cell.recipe, [*VALIDATION, *cell.overrides, *cell.candidates[chosen],
                                       f"run.seeds=[{seed}]"], out, timeout)
            outcome["seconds"] += wall(out)
            if "error" in done:
                outcome["seed_errors"] = outcome.get("seed_errors", []) + [done["error"]]
            else:
                tops.append(done["test_top1_at_best_val"])
        outcome["tops"] = tops
    return outcome


def _mean_std(values: Sequence[float]) -> str:
    """mean ± population std (n), as pccore's run summaries."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{mean:.4f} ± {std:.4f} ({len(values)})"


def _layers(values: Sequence[float] | None) -> str:
    if not values:
        return "-"
    return " ".join("nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}" for v in values)


def table(outcomes: list[dict]) -> str:
    head = ["method", "layers", "chosen on validation", "val top-1 (seed 0)", "test top-1 at best val (seeds)",
            "seconds",
            "cosine to BP, layer 1..L", "|update| / |BP|, layer 1..L"]
    rows = []
    for o in outcomes:
        cell = o["cell"]
        if o["chosen"] is None:
            errors = "; ".join(v.get("error", "") for v in o["results"].values())
            rows.append([cell.label, str(cell.layers), "failed", "-", "-", "-", errors, "-"])
            continue
        best = o["results"][o["chosen"]]
        d = o.get("diagnostics", {})
        rows.append([cell.label, str(cell.layers), o["chosen"], f"{best['best_val_top1']:.4f}",
                     _mean_std(o["tops"]), f"{o['seconds']:.0f}",
                     _layers(d.get("cosine_to_bp")) if "error" not in d else d["error"],
                     _layers(d.get("norm_ratio"))])
    return markdown_table(head, rows)


def summary(outcomes: list[dict], depths: list[int], sections: tuple[str, ...] = ("mlp",)) -> str:
    """Test top-1 by method (rows) and depth (columns), for the MLP or the VGG section."""
    mine = [o for o in outcomes if o["cell"].section in sections]
    methods = list(dict.fromkeys(o["cell"].label for o in mine))
    rows = []
    for label in methods:
        row = [label]
        for depth in depths:
            match = [o for o in mine if o["cell"].label == label and o["cell"].layers == depth]
            if not match or match[0]["chosen"] is None:
                row.append("-" if not match else "failed")
            else:
                row.append(_mean_std(match[0]["tops"]))
        rows.append(row)
    return markdown_table(["method", *(f"L = {d}" for d in depths)], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="5,10,20", help="comma-separated MLP depths L (layers)")
    parser.add_argument("--methods", default=",".join(MLP_METHODS), help=f"MLP methods, of {list(MLP_METHODS)}")
    parser.add_argument("--resnet", default=",".join(RESNET_METHODS),
                        help=f"ResNet10 rows, of {list(RESNET_METHODS)} ('' for none)")
    parser.add_argument("--vgg", default="", help=f"VGG rows, of {list(VGG_METHODS)} (default none)")
    parser.add_argument("--vgg-models", default="vgg5,vgg10,vgg15", help=f"of {list(VGG_LAYERS)}")
    parser.add_argument("--vgg-epochs", type=int, default=3, help="epochs of the VGG rows (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every MLP training (default 10)")
    parser.add_argument("--resnet-epochs", type=int, default=3, help="epochs of the ResNet10 rows (default 3)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds at the chosen rate, seed 0 (the candidate's run) included (default 3)")
    parser.add_argument("--max-candidates", type=int, default=0,
                        help="train only the first N candidate rates of each cell (0 = all; for smoke runs)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per training")
    parser.add_argument("--work", type=Path, default=Path("runs") / "methods-by-depth",
                        help="folder of the run directories (kept, so that a rerun resumes)")
    parser.add_argument("--out", type=Path, default=RESULTS / "methods-by-depth.md", help="Markdown file")
    args = parser.parse_args(argv)
    try:
        depths = [int(d) for d in args.depths.split(",") if d]
    except ValueError:
        parser.error(f"--depths: integers separated by commas, not {args.depths!r}")
    if not depths or min(depths) < 2:
        parser.error("--depths: at least one depth, each >= 2 (a hidden layer and the output)")
    methods = [m for m in args.methods.split(",") if m]
    resnets = [m for m in args.resnet.split(",") if m]
    vggs = [m for m in args.vgg.split(",") if m]
    vgg_models = [m for m in args.vgg_models.split(",") if m]
    for option, chosen, valid in (("methods", methods, MLP_METHODS), ("resnet", resnets, RESNET_METHODS),
                                  ("vgg", vggs, VGG_METHODS), ("vgg-models", vgg_models, VGG_LAYERS)):
        unknown = [m for m in chosen if m not in valid]
        if unknown:
            parser.error(f"--{option}: unknown {unknown}; choose from {', '.join(valid)}")
    if min(args.epochs, args.resnet_epochs, args.vgg_epochs) < 1:
        parser.error("--epochs, --resnet-epochs and --vgg-epochs must be at least 1")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.max_candidates < 0:
        parser.error("--max-candidates must be 0 (all) or more")
    cells = [mlp_cell(m, d, args.epochs) for d in depths for m in methods]
    cells += [vgg_cell(m, model, args.vgg_epochs) for model in vgg_models for m in vggs]
    cells += [resnet_cell(m, args.resnet_epochs) for m in resnets]
    if args.max_candidates:
        cells = [replace(c, candidates=dict(list(c.candidates.items())[: args.max_candidates])) for c in cells]
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    outcomes = [run_cell(cell, args.work, args.timeout, args.seeds) for cell in cells]
    info = machine("cpu")
    mlp = [o for o in outcomes if o["cell"].section == "mlp"]
    resnet = [o for o in outcomes if o["cell"].section == "resnet"]
    total = sum(o["seconds"] for o in outcomes if not math.isnan(o["seconds"]))
    lines = [
        f"# Every deep PC method side by side on digits: {info['cpu']}",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, date {info['date']}",
        f"- command: `python benchmarks/methods.py --depths {args.depths} --methods {args.methods} "
        f"--resnet '{args.resnet}' --vgg '{args.vgg}' --vgg-models {args.vgg_models} --epochs {args.epochs} "
        f"--resnet-epochs {args.resnet_epochs} --vgg-epochs {args.vgg_epochs} --seeds {args.seeds}`; "
        f"{total:.0f} s of training in all (this call: {time.perf_counter() - start:.0f} s)",
        "- each cell: every candidate weight rate trained once (seed 0) with 20% of the training images held "
        "out; the candidate with the best validation top-1 is kept and trained with more seeds; the test top-1 "
        "of each seed at its best validation epoch: mean ± population std (seeds). Diagnostics: seed 0's "
        "trained weights (last epoch) on the first test batch.",
        "",
    ]
    if mlp:
        lines += ["## MLPs (width 128, 8x8 digits): test top-1 at the best validation epoch", "",
                  summary(outcomes, depths), "", table(mlp), ""]
    vgg = [o for o in outcomes if o["cell"].section in VGG_LAYERS]
    if vgg:
        lines += ["## VGGs (width 1/8, 32x32 digits): test top-1 at the best validation epoch", "",
                  summary(outcomes, [VGG_LAYERS[m] for m in vgg_models], sections=tuple(VGG_LAYERS)), "",
                  table(vgg), ""]
    if resnet:
        lines += ["## ResNet10 (width 1/8, 16x16 digits)", "", table(resnet), ""]
    lines += ["Candidates (validation top-1 of seed 0, or why the run failed):", ""]
    for o in outcomes:
        parts = []
        for name, result in o["results"].items():
            if "error" in result:
                reason = result["error"].split(": error: ")[-1].split(";")[0]
                parts.append(f"{name} (failed: {reason})")
            else:
                parts.append(f"{name} ({result['best_val_top1']:.4f})")
        lines.append(f"- {o['cell'].name}: " + ", ".join(parts))
    lines.append("")
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0 if all(o["chosen"] is not None for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
