"""Every deep predictive coding method pccore hosts, side by side on one engine, on the offline digits.

    python benchmarks/methods.py                        # the committed study (53 minutes on a 2-core CPU)
    python benchmarks/methods.py --depths 5 --methods bp,epc --vgg '' --trials 2 --epochs 1 --out /tmp/m.md
    python benchmarks/methods.py --work runs/methods-by-depth    # where the runs live (default); rerun to resume

Depth in MLPs: fully connected networks of L = 5, 10, 20 and 40 layers (L - 1 hidden layers of 128 units,
GELU, orthogonal initialisation as the ePC authors' deep MLPs) on the 8x8 digits, trained with backprop
(BP), standard PC, S+F (spiking precision and forward updates), incremental PC with the spike (S+iPC), error
optimisation (ePC) and muPC's residual parameterisation (resmlp, ReLU, H = L - 1 hidden layers).
Convolutional: VGG5, VGG10 and VGG15 at width 1/8 on the digits resized to 32x32, with BP (BatchNorm), PC,
S+F, D+F and S+iPC with BatchNorm Freezing, and ePC with BatchNorm Freezing.

Every cell is built from pccore's own commands:
1. `pccore tune`: a TPE search (the same number of trials for every method, the first few at random) of the
   weight learning rate and, for the PC methods, the state (or error) learning rate and T, scored on the
   validation top-1 of a stratified 20% split of the training images;
2. `pccore sweep`: the best trial's recipe (best.toml) trained with 3 seeds;
3. `pccore report`: the test top-1 at each seed's best validation epoch, mean ± population std, and the
   figure of top-1 against depth (`--plot`);
and, with seed 0's trained weights on one held-out test batch, each layer's cosine between the method's
weight update and backprop's gradient and the ratio of their norms (near 0 where a layer learns nothing).

Everything lives in `--work`: studies/ (the study files), search/<cell>/ (each study: its SQLite database,
trials, best.toml), seeds/<cell>_best/ (the sweep); a rerun continues every study, skips finished seeds and
resumes interrupted ones, so a study cut short continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from setups import RESULTS, machine, markdown_table

HERE = Path(__file__).resolve().parent
MLP_RECIPE = HERE / "recipes" / "methods_digits_mlp.toml"
VGG_RECIPE = HERE.parent / "recipes" / "quickstart.toml"

SPIKING = {"precision.name": '"spiking"', "precision.peak": "1.0", "precision.base": "0.001"}
REFERENCE_STATES = {"inference.momentum": "0.1", "inference.nesterov": "true"}
"""The S+F reference example's state optimizer (METHOD.md) but for its rate, which is searched."""


def _log(low: float, high: float) -> str:
    return f"{{ low = {low}, high = {high}, log = true }}"


def _steps(*choices: int) -> str | None:
    """T as a searched choice, or None when the choices collapse to one value (then T is fixed)."""
    unique = sorted(set(choices))
    return None if len(unique) == 1 else "{ choices = [" + ", ".join(str(c) for c in unique) + "] }"


@dataclass(frozen=True)
class Method:
    """A row of the study: its label, the recipe keys it sets, and what its search covers."""

    label: str
    fixed: dict[str, str]
    weight_lr: tuple[float, float]
    state_lr: tuple[float, float] | None = None  # inference.lr (the error rate lr_e for ePC); None: BP
    steps: str = "depth"  # T's choices: "depth" = {L, 3L/2}, "errors" = {5, L}, "" = no inference


MLP_METHODS = {
    "bp": Method("BP", {"update.name": '"backprop"', "precision.name": '"constant"'}, (1e-4, 3e-2), steps=""),
    "pc": Method("PC", {"update.name": '"standard"', "precision.name": '"constant"', "inference.momentum": "0.0"},
                 (1e-4, 1e-2), (0.01, 0.5)),
    "sf": Method("S+F", {**SPIKING, "update.name": '"forward"', **REFERENCE_STATES}, (1e-4, 1e-2), (0.1, 0.9)),
    "ipc": Method("S+iPC", {**SPIKING, "update.name": '"standard"', "inference.name": '"incremental"',
                            **REFERENCE_STATES}, (1e-4, 3e-3), (0.1, 0.9)),
    "epc": Method("ePC", {"update.name": '"standard"', "precision.name": '"constant"', "inference.name": '"errors"',
                          "inference.momentum": "0.0"}, (1e-4, 1e-2), (0.01, 0.3), steps="errors"),
    "mupc": Method("muPC (resmlp)", {"model.name": '"resmlp"', "model.width": "128", "model.activation": '"relu"',
                                     "model.parameterization": '"mupc"', "update.name": '"standard"',
                                     "precision.name": '"constant"', "inference.momentum": "0.0",
                                     "optimizer.weight_decay": "0.0"}, (1e-2, 3e-1), (0.002, 0.02)),
}
"""The MLP rows. muPC's ranges hold jpc's Adam rate 0.1 and its state rates 0.5 and 0.25 over the batch of 64
(recipes/base/mupc_digits.toml)."""

VGG_LAYERS = {"vgg5": 5, "vgg10": 10, "vgg15": 15}
VGG_METHODS = {
    "bp": Method("BP", {"update.name": '"backprop"', "precision.name": '"constant"',
                        "normalization.name": '"batchnorm"'}, (1e-4, 1e-2), steps=""),
    "pc": Method("PC BF", {"update.name": '"standard"', "precision.name": '"constant"', "inference.momentum": "0.3"},
                 (1e-4, 1e-2), (0.005, 0.1)),
    "sf": Method("S+F BF", {}, (1e-4, 1e-2), (0.1, 0.9)),
    "df": Method("D+F BF", {"precision.name": '"decaying"', "precision.variant": '"reference"', "precision.k": "1.0",
                            "inference.decay_last_lr": "true"}, (1e-4, 1e-2), (0.1, 0.9)),
    "ipc": Method("S+iPC BF", {"update.name": '"standard"', "inference.name": '"incremental"',
                               "inference.variant": '"batchnorm"'}, (1e-4, 3e-3), (0.1, 0.9)),
    "epc": Method("ePC BF", {"update.name": '"standard"', "precision.name": '"constant"', "inference.name": '"errors"',
                             "inference.momentum": "0.0", "inference.nesterov": "false"}, (1e-4, 1e-2),
                  (3e-4, 3e-2), steps="errors"),
}
"""The VGG rows on 32x32 digits, width 1/8: quickstart.toml's S+F BF (momentum 0.1, Nesterov) and its
siblings; PC takes quickstart_pc.toml's momentum (the PCX configuration), D+F the reference decay
(recipes/base/df.toml), ePC's range holds the authors' CNN rate lr_e = 0.001 (recipes/base/epc.toml)."""


@dataclass(frozen=True)
class Cell:
    name: str
    section: str  # "mlp" or "vgg"
    method: Method
    layers: int
    recipe: Path
    fixed: dict[str, str]
    space: dict[str, str]


def _budget(epochs: int) -> dict[str, str]:
    return {"train.epochs": str(epochs), "optimizer.schedule_epochs": str(epochs), "train.patience": str(epochs),
            "data.validation_fraction": "0.2", "log.tensorboard": "false", "log.every": "1000",
            "run.device": '"cpu"'}


def _space(method: Method, layers: int) -> tuple[dict[str, str], dict[str, str]]:
    """(fixed, searched) keys of a method's search at depth `layers`."""
    space = {"optimizer.lr": _log(*method.weight_lr)}
    fixed = {}
    if method.state_lr is not None:
        space["inference.lr"] = _log(*method.state_lr)
    if method.steps:
        low = 5 if method.steps == "errors" else layers
        steps = _steps(low, layers if method.steps == "errors" else math.ceil(1.5 * layers))
        if steps is None:
            fixed["inference.steps"] = str(low)
        else:
            space["inference.steps"] = steps
    return fixed, space


def mlp_cell(key: str, depth: int, epochs: int) -> Cell:
    method = MLP_METHODS[key]
    shape = ({"model.depth": str(depth - 1)} if key == "mupc" else
             {"model.hidden": "[" + ", ".join(["128"] * (depth - 1)) + "]", "model.init": '"orthogonal"'})
    fixed, space = _space(method, depth)
    return Cell(f"mlp-{key}-d{depth}", "mlp", method, depth, MLP_RECIPE,
                {**shape, **method.fixed, **fixed, **_budget(epochs)}, space)


def vgg_cell(key: str, model: str, epochs: int) -> Cell:
    method = VGG_METHODS[key]
    layers = VGG_LAYERS[model]
    fixed, space = _space(method, layers)
    return Cell(f"{model}-{key}", "vgg", method, layers, VGG_RECIPE,
                {"model.name": f'"{model}"', "data.size": "32", **method.fixed, **fixed, **_budget(epochs)}, space)


def study_text(cell: Cell, trials: int, startup: int) -> str:
    lines = [
        f"# {cell.method.label} at L = {cell.layers}: written by benchmarks/methods.py",
        f'name = "{cell.name}"',
        f'recipe = "{cell.recipe.as_posix()}"',
        f"trials = {trials}",
        'direction = "maximize"',
        'sampler = "tpe"',
        f"startup_trials = {startup}",
        'pruner = "none"',
        "seed = 0",
        "",
        "[set]",
        *(f'"{key}" = {value}' for key, value in cell.fixed.items()),
        "",
        "[space]",
        *(f'"{key}" = {value}' for key, value in cell.space.items()),
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Done:
    """A finished pccore command: its exit status, its standard output, the tail of its stderr, seconds."""

    code: int
    out: str
    tail: str
    seconds: float


def pccore(args: Sequence[str], timeout: float) -> Done:
    """A pccore command in its own process."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pccore", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        code, out, tail = done.returncode, done.stdout, " ".join(done.stderr.strip().splitlines()[-3:])
    except subprocess.TimeoutExpired:
        code, out, tail = 124, "", f"over the {timeout:.0f} s limit"
    return Done(code, out, tail, time.perf_counter() - start)


def search(cell: Cell, work: Path, trials: int, startup: int, workers: int, timeout: float) -> dict:
    """`pccore tune` of the cell (continued when it ran before): the study's summary, plus its seconds."""
    study = work / "studies" / f"{cell.name}.toml"
    study.parent.mkdir(parents=True, exist_ok=True)
    study.write_text(study_text(cell, trials, startup))
    out = work / "search" / cell.name
    clock = out / "methods-wall.json"
    seconds = json.loads(clock.read_text())["seconds"] if clock.is_file() else 0.0
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if summary.get("n_complete", 0) + summary.get("n_pruned", 0) < trials:
        print(f"... {cell.name}: search, {trials} trials", file=sys.stderr, flush=True)
        tune = pccore(["tune", str(study), "--out", str(out), "--workers", str(workers)], timeout)
        seconds += tune.seconds
        out.mkdir(parents=True, exist_ok=True)
        clock.write_text(json.dumps({"seconds": seconds}))
        if not summary_path.is_file():
            return {"error": tune.tail or f"pccore tune exited with {tune.code}", "seconds": seconds}
        summary = json.loads(summary_path.read_text())
    return {**summary, "seconds": seconds}


def diagnostics(run_dir: Path) -> dict:
    """Per-layer cosine to backprop and |update| / |BP gradient| of seed 0's trained weights (the last
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
    dataset = registry.build("dataset", recipe.data.name, recipe.data.params)
    feeder = BatchFeeder(dataset.load(), train=False, batch_size=recipe.data.batch_size, device=device,
                         dtype=torch.float32, channels_last=False)
    x, y = next(iter(feeder.epoch(0, 0)))
    assembly = assemble(recipe, dataset.spec(), device, registry)
    assembly.blocks.load_state_dict(load_checkpoint(run_dir / "seed_0" / "checkpoint.pt")["model"])
    report = diagnose_batch(assembly.engine, x, y)
    return {"cosine_to_bp": report["cosine_to_bp"], "norm_ratio": report["norm_ratio_to_bp"],
            "last_energy": report["energy"][-1] if report["energy"] else None}


def zero_layers(energy: Sequence[float] | None) -> str:
    """The layers whose energy is exactly 0 at the last inference step (the error never reached them), as
    ranges: "1-6", "none"; "-" without inference."""
    if not energy:
        return "-"
    zeros = [index + 1 for index, value in enumerate(energy) if value == 0.0]
    ranges: list[list[int]] = []
    for layer in zeros:
        if ranges and ranges[-1][1] == layer - 1:
            ranges[-1][1] = layer
        else:
            ranges.append([layer, layer])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges) or "none"


def cached_diagnostics(run_dir: Path) -> dict:
    cache = run_dir / "methods-diagnostics.json"
    if not cache.is_file():
        try:
            cache.write_text(json.dumps(diagnostics(run_dir)))
        except Exception as err:  # noqa: BLE001 - a row without diagnostics still has its accuracy
            cache.write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    return json.loads(cache.read_text())


def _layers(values: Sequence[float] | None) -> str:
    if not values:
        return "-"
    return " ".join("nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}" for v in values)


def _shown(params: dict) -> str:
    names = {"optimizer.lr": "lr", "inference.lr": "lr_x", "inference.steps": "T"}
    return ", ".join(f"{names.get(k, k)} {v:.3g}" if isinstance(v, float) else f"{names.get(k, k)} {v}"
                     for k, v in params.items())


def _mean_std(values: Sequence[float]) -> str:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{mean:.4f} ± {std:.4f} ({len(values)})"


def _seed_summaries(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("seed_*/summary.json"))]


def detail_table(outcomes: list[dict]) -> str:
    head = ["method", "L", "chosen by the search (validation)", "val top-1 (best trial)", "test top-1 at best val",
            "seconds (search + seeds)", "layers at zero energy (last step)", "cosine to BP, layer 1..L",
            "|update| / |BP|, layer 1..L"]
    rows = []
    for o in outcomes:
        cell = o["cell"]
        if "error" in o:
            rows.append([cell.method.label, str(cell.layers), "failed", "-", "-", f"{o['seconds']:.0f}", "-",
                         " ".join(o["error"].split())[:400], "-"])
            continue
        d = o["diagnostics"]
        tops = [s["test_top1_at_best_val"] for s in o["seeds"]]
        rows.append([cell.method.label, str(cell.layers), _shown(o["params"]), f"{o['value']:.4f}",
                     _mean_std(tops) if tops else "-", f"{o['seconds']:.0f}",
                     zero_layers(d.get("last_energy")) if cell.method.steps else "-",
                     _layers(d.get("cosine_to_bp")) if "error" not in d else d["error"], _layers(d.get("norm_ratio"))])
    return markdown_table(head, rows)


def by_depth(outcomes: list[dict], section: str) -> str:
    mine = [o for o in outcomes if o["cell"].section == section]
    depths = sorted({o["cell"].layers for o in mine})
    rows = []
    for label in dict.fromkeys(o["cell"].method.label for o in mine):
        row = [label]
        for depth in depths:
            match = [o for o in mine if o["cell"].method.label == label and o["cell"].layers == depth]
            if not match:
                row.append("-")
            elif "error" in match[0] or not match[0]["seeds"]:
                row.append("failed")
            else:
                row.append(_mean_std([s["test_top1_at_best_val"] for s in match[0]["seeds"]]))
        rows.append(row)
    return markdown_table(["method", *(f"L = {d}" for d in depths)], rows)


def _list(text: str, valid: dict, option: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [m for m in text.split(",") if m]
    unknown = [m for m in chosen if m not in valid]
    if unknown:
        parser.error(f"--{option}: unknown {unknown}; choose from {', '.join(valid)}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="5,10,20,40", help="comma-separated MLP depths L (layers)")
    parser.add_argument("--methods", default=",".join(MLP_METHODS), help=f"MLP rows, of {list(MLP_METHODS)}")
    parser.add_argument("--vgg", default=",".join(VGG_METHODS), help=f"VGG rows, of {list(VGG_METHODS)} ('' for none)")
    parser.add_argument("--vgg-models", default=",".join(VGG_LAYERS), help=f"of {list(VGG_LAYERS)}")
    parser.add_argument("--trials", type=int, default=10, help="trials of every cell's search (default 10)")
    parser.add_argument("--startup", type=int, default=4, help="of which drawn at random first (default 4)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every MLP training (default 8)")
    parser.add_argument("--vgg-epochs", type=int, default=4, help="epochs of every VGG training (default 4)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds at the best settings (default 3: 0, 1, 2)")
    parser.add_argument("--workers", type=int, default=2, help="processes of each search and of the sweep")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per pccore command")
    parser.add_argument("--work", type=Path, default=Path("runs") / "methods-by-depth",
                        help="folder of the studies and runs (kept, so that a rerun resumes)")
    parser.add_argument("--out", type=Path, default=RESULTS / "methods-by-depth.md", help="Markdown file; the "
                        "figures are written beside it as <name>-mlp.png and <name>-vgg.png")
    args = parser.parse_args(argv)
    try:
        depths = [int(d) for d in args.depths.split(",") if d]
    except ValueError:
        parser.error(f"--depths: integers separated by commas, not {args.depths!r}")
    if depths and min(depths) < 2:
        parser.error("--depths: each depth >= 2 (a hidden layer and the output)")
    methods = _list(args.methods, MLP_METHODS, "methods", parser)
    vggs = _list(args.vgg, VGG_METHODS, "vgg", parser)
    models = _list(args.vgg_models, VGG_LAYERS, "vgg-models", parser)
    if min(args.epochs, args.vgg_epochs, args.trials, args.startup, args.seeds, args.workers) < 1:
        parser.error("--epochs, --vgg-epochs, --trials, --startup, --seeds and --workers must be at least 1")
    cells = [mlp_cell(m, d, args.epochs) for d in depths for m in methods]
    cells += [vgg_cell(m, model, args.vgg_epochs) for model in models for m in vggs]
    if not cells:
        parser.error("no cell to train: give --methods with --depths, or --vgg with --vgg-models")
    work = args.work.resolve()
    start = time.perf_counter()

    outcomes = []
    for cell in cells:  # 1. the searches
        found = search(cell, work, args.trials, args.startup, args.workers, args.timeout)
        outcome = {"cell": cell, "seconds": found["seconds"], "seeds": []}
        if "error" in found or not found.get("best_recipe"):
            reasons = sorted({t.get("reason", t["state"]) for t in found.get("trials", [])})
            outcome["error"] = found.get("error") or "no trial completed: " + "; ".join(reasons)
        else:
            outcome.update(params=found["best_params"], value=found["best_value"], best=Path(found["best_recipe"]))
        outcomes.append(outcome)

    best = [o["best"] for o in outcomes if "best" in o]  # 2. the seeds at the best settings, one sweep
    seeds_dir = work / "seeds"
    if best:
        print(f"... sweep: {len(best)} recipes x {args.seeds} seeds", file=sys.stderr, flush=True)
        sweep = pccore(["sweep", *map(str, best), "--seeds", f"0-{args.seeds - 1}", "--out", str(seeds_dir),
                        "--workers", str(args.workers), "--timeout", str(args.timeout)],
                       args.timeout * len(best) * args.seeds)
        if sweep.code != 0:
            print(f"pccore sweep exited with {sweep.code}: {sweep.tail}", file=sys.stderr)
    for o in outcomes:
        if "best" not in o:
            continue
        run_dir = seeds_dir / f"{o['cell'].name}_best"
        o["seeds"] = _seed_summaries(run_dir)
        o["seconds"] += sum(s.get("wall_s", 0.0) for s in o["seeds"])
        o["diagnostics"] = cached_diagnostics(run_dir) if (run_dir / "seed_0" / "checkpoint.pt").is_file() else {
            "error": "seed 0 did not finish"}

    sections = []  # 3. the report and the figures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for section, title in (("mlp", "MLPs (width 128, 8x8 digits)"), ("vgg", "VGGs (width 1/8, 32x32 digits)")):
        runs = [str(seeds_dir / f"{o['cell'].name}_best") for o in outcomes
                if o["cell"].section == section and o["seeds"]]
        if not runs:
            continue
        figure = args.out.with_name(f"{args.out.stem}-{section}.png")
        done = pccore(["report", *runs, "--plot", str(figure)], args.timeout)
        report = (f"![top-1 against depth]({figure.name})\n\n`pccore report` of the seeds' run folders:\n\n"
                  + done.out.replace("### ", "#### ") if done.code == 0 else f"(pccore report failed: {done.tail})")
        mine = [o for o in outcomes if o["cell"].section == section]
        sections += [f"## {title}: test top-1 at the best validation epoch", "", by_depth(outcomes, section), "",
                     detail_table(mine), "", report, ""]

    info = machine("cpu")
    total = sum(o["seconds"] for o in outcomes)
    lines = [
        f"# Every deep PC method side by side on digits: {info['cpu']}",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, date {info['date']}",
        f"- command: `python benchmarks/methods.py --depths {args.depths} --methods {args.methods} --vgg "
        f"'{args.vgg}' --vgg-models {args.vgg_models} --trials {args.trials} --startup {args.startup} "
        f"--epochs {args.epochs} --vgg-epochs {args.vgg_epochs} --seeds {args.seeds} --workers {args.workers}`; "
        f"{total:.0f} s of searches and seeds in all (this call: {time.perf_counter() - start:.0f} s)",
        f"- each cell: `pccore tune`, a TPE search of {args.trials} trials ({args.startup} at random first) on a "
        "stratified 20% validation split of the training images; the best trial's recipe trained with "
        f"{args.seeds} seeds by `pccore sweep`; the test top-1 of each seed at its best validation epoch, mean ± "
        "population std (seeds); the figures by `pccore report --plot`. Diagnostics: seed 0's trained weights "
        "(last epoch) on the first test batch.",
        "",
        *sections,
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0 if all("error" not in o and o["seeds"] for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
