"""`pccore bench`, the benchmark matrix script and the GPU script's logic (tiny sizes, on the CPU)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

from pccore.cli import main
from pccore.core.errors import PccoreError, UsageError
from pccore.core.registry import get_registry
from pccore.inspect import bench
from pccore.inspect.diagnose import first_batch
from pccore.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

TINY_RECIPE = """
[run]
name = "tiny"
device = "cpu"

[data]
name = "synthetic"
channels = 1
size = 4
classes = 3
batch_size = 6

[model]
name = "mlp"
hidden = [5, 4]

[normalization]
name = "none"

[precision]
name = "spiking"

[nudging]
name = "nudge"
beta = 0.5

[update]
name = "forward"

[inference]
steps = 3
lr = 0.1
momentum = 0.1
"""


# Two threads on a shared two-core machine spend most of their time waiting for each other.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE)
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --- pccore bench ----------------------------------------------------------------------------------


def test_bench_json_report(recipe_path, capsys):
    code = main(["bench", str(recipe_path), "--steps", "2", "--warmup", "1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    expected = {
        "recipe": str(recipe_path), "model": "mlp", "layers": 3, "steps": 3, "batch_size": 6,
        "input_shape": [1, 4, 4], "update": "forward", "precision": "spiking", "inference": "states",
        "normalization": "none",
        "device": "cpu", "device_name": "cpu", "torch": torch.__version__, "threads": 1, "compile": False,
        "autocast": "fp32", "timed_steps": 2, "warmup": 1,
        "memory": "peak RSS growth of a separate process per algorithm",
    }
    assert {k: report[k] for k in expected} == expected
    for side in ("pc", "bp"):
        samples = report[f"{side}_samples_s"]
        assert len(samples) == 2 and all(isinstance(s, float) and s > 0 for s in samples)
        assert report[f"{side}_step_s"] == pytest.approx((samples[0] + samples[1]) / 2, rel=1e-12)
        assert isinstance(report[f"{side}_peak_mb"], float) and report[f"{side}_peak_mb"] > 0
    assert report["ratio"] == pytest.approx(report["pc_step_s"] / report["bp_step_s"], rel=1e-12)


def test_bench_human_form(recipe_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "measure_rss", lambda recipe, algorithm: {"pc": 30.0, "bp": 12.0}[algorithm])
    assert main(["bench", str(recipe_path), "--steps", "1", "--warmup", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{recipe_path}: mlp (3 layers), T=3, normalization none, batch 6 of 1x4x4"
    assert lines[1].startswith(f"cpu (cpu), torch {torch.__version__}, 1 threads; median of 1 interleaved")
    assert lines[4] == "                       s/step  peak MB"
    assert re.fullmatch(r"pc \(forward, spiking\)  \d\.\d{4}     30\.0", lines[5])
    assert re.fullmatch(r"backprop               \d\.\d{4}     12\.0", lines[6])
    assert re.fullmatch(r"ratio pc / bp          +\d+\.\d\dx    2\.50x", lines[7])


def test_format_report_exact():
    report = {"recipe": "r.toml", "model": "vgg5", "layers": 5, "steps": 5, "normalization": "frozen",
              "batch_size": 128, "input_shape": [3, 32, 32], "device": "cuda:0", "device_name": "H100",
              "torch": "2.x", "threads": 4, "timed_steps": 10, "warmup": 3, "memory": "m",
              "update": "forward", "precision": "spiking", "pc_step_s": 0.5, "bp_step_s": 0.125,
              "ratio": 4.0, "pc_peak_mb": 1536.0, "bp_peak_mb": None}
    assert bench.format_report(report).splitlines() == [
        "r.toml: vgg5 (5 layers), T=5, normalization frozen, batch 128 of 3x32x32",
        "cuda:0 (H100), torch 2.x, 4 threads; median of 10 interleaved steps after 3 warm-up",
        "memory: m",
        "",
        "                       s/step  peak MB",
        "pc (forward, spiking)  0.5000   1536.0",
        "backprop               0.1250      n/a",
        "ratio pc / bp           4.00x      n/a",
    ]


def test_bench_variants_are_timed_in_the_same_rounds(recipe_path, capsys, monkeypatch):
    """--variant precision.base=0 adds the pure spike, timed with the others; ';' joins two overrides."""
    monkeypatch.setattr(bench, "measure_rss", lambda recipe, algorithm: 10.0 + recipe.precision.params.base)
    assert main(["bench", str(recipe_path), "--steps", "2", "--warmup", "0", "--json",
                 "--variant", "precision.base=0", "--variant", "precision.base=0.5; inference.skip_below=0.6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [v["variant"] for v in report["variants"]] == ["precision.base=0",
                                                          "precision.base=0.5 inference.skip_below=0.6"]
    for row, peak in zip(report["variants"], (10.0, 10.5), strict=True):
        assert len(row["samples_s"]) == 2
        assert row["ratio"] == pytest.approx(row["step_s"] / report["bp_step_s"], rel=1e-12)
        assert row["peak_mb"] == peak and (row["update"], row["precision"]) == ("forward", "spiking")
    assert report["pc_peak_mb"] == 10.001


def test_variant_trainers_start_from_the_recipes_weights(recipe_path):
    registry = get_registry()
    recipe = load_recipe(recipe_path, (), registry)
    (label, variant), = bench.variant_recipes(str(recipe_path), [], ["precision.base=0"], registry)
    assert label == "precision.base=0" and variant.precision.params.base == 0.0
    seen = []

    def record(trainers, *args):
        seen.append([(t.name, copy.deepcopy(t.assembly.blocks.state_dict())) for t in trainers])
        return real(trainers, *args)

    real = bench.time_interleaved
    bench.time_interleaved = record
    try:
        bench.run_bench(recipe, registry, torch.device("cpu"), steps=1, warmup=0, cpu_memory=False,
                        variants=[(label, variant)])
    finally:
        bench.time_interleaved = real
    (pc, pc_state), (name, state), (bp, _) = seen[0]
    assert (pc, name, bp) == ("pc", "variant0", "bp")
    assert state.keys() == pc_state.keys()
    assert all(torch.equal(state[k], pc_state[k]) for k in state)


def test_a_variant_without_overrides_is_refused(recipe_path, capsys):
    assert main(["bench", str(recipe_path), "--variant", " ; "]) == 2
    assert capsys.readouterr().err == (
        "pccore: error: --variant ' ; ': expected KEY=VALUE overrides, e.g. --variant precision.base=0\n"
    )


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--steps", "0", "--steps must be at least 1 (the number of timed steps per algorithm), got 0"),
    ("--warmup", "-1", "--warmup must be 0 or more (untimed steps before timing), got -1"),
])
def test_bad_step_counts_exit_2(recipe_path, capsys, flag, value, message):
    assert main(["bench", str(recipe_path), flag, value]) == 2
    assert capsys.readouterr().err.strip() == f"pccore: error: {message}"


def test_run_bench_checks_steps(recipe_path):
    registry = get_registry()
    recipe = load_recipe(recipe_path, (), registry)
    with pytest.raises(UsageError, match="--steps must be at least 1"):
        bench.run_bench(recipe, registry, torch.device("cpu"), steps=0, warmup=0)


def test_backprop_copy_same_weights_backprop_rule(recipe_path):
    from pccore_plugins.nudging import Clamp, Nudge
    from pccore_plugins.update import Backprop, ForwardUpdate

    registry = get_registry()
    recipe = load_recipe(recipe_path, ["run.dtype=float64"], registry)
    spec, x, y = first_batch(recipe, registry, torch.device("cpu"), smoke=True)
    pc, bp = bench.build_pair(recipe, spec, torch.device("cpu"), registry)
    assert type(pc.assembly.engine.update) is ForwardUpdate
    assert type(bp.assembly.engine.update) is Backprop
    assert type(pc.assembly.engine.nudging) is Nudge and type(bp.assembly.engine.nudging) is Clamp
    assert torch.equal(bp.assembly.table.inference, torch.ones(3, 3, dtype=torch.float64))
    pc_state, bp_state = pc.assembly.blocks.state_dict(), bp.assembly.blocks.state_dict()
    assert list(pc_state) == list(bp_state)
    for key in pc_state:
        assert torch.equal(pc_state[key], bp_state[key])
        assert pc_state[key].data_ptr() != bp_state[key].data_ptr()
    assert isinstance(bp.optimizer, torch.optim.AdamW)
    assert bp.optimizer.defaults["lr"] == recipe.optimizer.lr
    assert bp.optimizer.defaults["weight_decay"] == recipe.optimizer.weight_decay

    # the backprop engine's gradients are those of the output squared error of a plain forward pass
    reference = copy.deepcopy(bp.assembly.blocks)
    h = x
    for block in reference:
        h = block(h)
    target = torch.nn.functional.one_hot(y, 3).to(torch.float64)
    (0.5 * (target - h).square().sum() / x.shape[0]).backward()
    bp.assembly.engine.train_step(x, y)
    for mine, theirs in zip(bp.assembly.blocks.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-12, atol=1e-14)


def test_resident_bytes_counts_what_stays_between_steps(recipe_path):
    registry = get_registry()
    recipe = load_recipe(recipe_path, (), registry)
    spec, x, y = first_batch(recipe, registry, torch.device("cpu"), smoke=True)
    pc, bp = bench.build_pair(recipe, spec, torch.device("cpu"), registry)
    assert pc.resident_bytes("cpu") == bp.resident_bytes("cpu") == 124 * 4
    pc.step(x, y)
    bp.step(x, y)
    # mlp 16 -> 5 -> 4 -> 3: 124 float32 weights, each with a gradient and two AdamW moments; AdamW's
    # six step counters (4 bytes each); pc also keeps inference momentum for x^1 [6, 5] and x^2 [6, 4]
    assert bp.resident_bytes("cpu") == 124 * 4 * 4 + 6 * 4
    assert pc.resident_bytes("cpu") == 124 * 4 * 4 + 6 * 4 + (6 * 5 + 6 * 4) * 4
    assert pc.resident_bytes("cuda") == 0


def test_backprop_copy_keeps_frozen_batchnorm():
    from pccore_plugins.normalization import FreezableBatchNorm2d, FrozenBatchNorm

    registry = get_registry()
    overrides = ["model.width=0.0625", "data.size=16", "data.batch_size=4", "run.device=cpu"]
    recipe = load_recipe(BENCHMARKS / "recipes" / "synthetic.toml", overrides, registry)
    spec, _, _ = first_batch(recipe, registry, torch.device("cpu"), smoke=True)
    pc, bp = bench.build_pair(recipe, spec, torch.device("cpu"), registry)
    for trainer in (pc, bp):
        assert type(trainer.assembly.engine.norm) is FrozenBatchNorm
        norms = [m for m in trainer.assembly.blocks.modules() if isinstance(m, FreezableBatchNorm2d)]
        assert len(norms) == 4
    assert bp.assembly.engine.L == pc.assembly.engine.L == 5


def test_backprop_recipe_without_backprop_plugin(recipe_path):
    recipe = load_recipe(recipe_path)

    class NoBackprop:
        def component(self, kind, name):
            if name == "backprop":
                raise UsageError("unknown update 'backprop'; choose one of: forward, standard")
            return get_registry().component(kind, name)

    with pytest.raises(UsageError) as err:
        bench.backprop_recipe(recipe, NoBackprop())
    assert str(err.value) == (
        "pccore bench compares against backprop and needs the update 'backprop', which no loaded plugin "
        "provides (unknown update 'backprop'; choose one of: forward, standard)"
    )


def test_time_interleaved_order_and_counts():
    calls = []

    @attrs.define
    class Fake:
        name: str

        def step(self, x, y):
            calls.append(self.name)

    timings = bench.time_interleaved([Fake("pc"), Fake("bp")], None, None, steps=3, warmup=2,
                                     device=torch.device("cpu"))
    assert calls == ["pc", "bp"] * 5
    assert [len(timings[n].seconds) for n in ("pc", "bp")] == [3, 3]
    assert timings["pc"].peak_mb is None


def test_timing_median():
    assert bench.Timing([3.0, 1.0, 2.0]).median == 2.0
    assert bench.Timing([4.0, 1.0, 2.0, 10.0]).median == 3.0


def test_memory_worker_ignores_a_large_parent(recipe_path):
    # ru_maxrss of a child covers the parent's image it replaced at exec; the worker must not see it
    ballast = torch.ones(64 * 2**20)  # 256 MB, touched
    recipe = load_recipe(recipe_path)
    peaks = [bench.measure_rss(recipe, algorithm) for algorithm in ("pc", "bp")]
    assert ballast.sum() == 64 * 2**20
    assert all(0 < peak < 64 for peak in peaks), peaks


def test_memory_worker_failure_is_reported(recipe_path):
    recipe = load_recipe(recipe_path, ['run.precision="bf16"'])
    with pytest.raises(PccoreError) as err:
        bench.measure_rss(recipe, "pc")
    message = str(err.value)
    assert message.startswith("the memory worker for 'pc' failed with exit status 2: pccore: error: ")
    assert 'run.precision = "bf16" needs a CUDA device' in message


# --- benchmarks/matrix.py ----------------------------------------------------------------------------


def test_matrix_quick_tiny(tmp_path):
    out = tmp_path / "matrix.md"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "matrix.py"), "--quick", "--models", "vgg5", "--algorithms", "sf",
         "--width", "0.0625", "--batch", "4", "--steps", "1", "--warmup", "0", "--device", "cpu",
         "--out", str(out)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text in done.stdout
    head = "| model | input | batch | width | T | algorithm | pc s/step | bp s/step | ratio | pc MB | bp MB |"
    assert head + " PCX ratio | target ratio | memory ratio |" in text
    rows = [line for line in text.splitlines() if line.startswith("| VGG5")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:6] == ["VGG5", "32x32", "4", "0.0625", "5", "S+F (BF)"]
    assert cells[11] == "2.04"  # 2.37 s / 1.16 s per epoch, the paper's PCX figures
    assert cells[12] == "<= 3"  # issue 5's CPU target for VGG5 S+F
    assert float(cells[13]) == pytest.approx(float(cells[9]) / float(cells[10]), rel=0.01)
    pc, bp, ratio = float(cells[6]), float(cells[7]), float(cells[8])
    assert ratio == pytest.approx(pc / bp, rel=0.02)  # the cells are rounded to 3 digits
    assert float(cells[9]) > 0 and float(cells[10]) > 0
    assert f"{os.cpu_count()} cores" in text and f"torch {torch.__version__}, device cpu, 1 threads" in text


def test_matrix_rejects_unknown_model():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "matrix.py"), "--models", "vgg99"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 2
    assert "--models: unknown or empty ['vgg99']; choose from vgg5, vgg10, vgg15, vgg15s" in done.stderr


# --- benchmarks/gpu.py ------------------------------------------------------------------------------


def test_gpu_script_tiny_on_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--device", "cpu", "--tiny",
         "--variants", "vgg5-sf-eager,vgg15-pc-eager,vgg5-sf0-captured,vgg15-sf-captured-bf16-cl"],
        capture_output=True, text=True, env={**_env(), "OUT": str(tmp_path)}, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["tiny"] is True and (results["steps"], results["warmup"]) == (1, 1)
    vgg5, vgg15, captured, bf16 = results["results"]
    assert [r["variant"] for r in results["results"]] == [
        "vgg5-sf-eager", "vgg15-pc-eager", "vgg5-sf0-captured", "vgg15-sf-captured-bf16-cl"]
    assert vgg5["status"] == vgg15["status"] == "ok"
    assert (vgg5["layers"], vgg5["steps"], vgg15["layers"], vgg15["steps"]) == (5, 5, 15, 15)
    assert (vgg5["update"], vgg5["precision"], vgg5["normalization"]) == ("forward", "spiking", "frozen")
    assert (vgg15["update"], vgg15["precision"]) == ("standard", "constant")
    assert vgg5["pc_epoch_s"] == pytest.approx(vgg5["pc_step_s"] * 391)
    assert vgg15["bp_epoch_s"] == pytest.approx(vgg15["bp_step_s"] * 782)
    assert vgg15["t_times_bp"] == pytest.approx(15 * vgg15["bp_epoch_s"])
    assert (vgg5["pcx_epoch_s"], vgg5["pcx_bp_epoch_s"], vgg5["target_epoch_s"]) == (2.37, 1.16, 2.37)
    assert (vgg15["pcx_epoch_s"], vgg15["pcx_bp_epoch_s"], vgg15["target_epoch_s"]) == (79.61, 9.40, None)
    assert vgg5["pc_peak_mb"] is None and vgg5["compile"] is False and vgg5["cuda_graphs"] is False
    assert captured["status"] == "skipped: CUDA graphs need CUDA"
    assert bf16["status"] == "skipped: bf16 autocast needs CUDA"
    markdown = (tmp_path / "gpu.md").read_text()
    assert markdown in done.stdout
    assert ("| vgg5-sf0-captured | CIFAR-10 | 5 | S+F pure spike (BF) | captured | - | - | - | - | - | - | - | "
            "1.16 | 2.37 | - | - | - | skipped: CUDA graphs need CUDA |") in markdown


def test_gpu_script_out_of_budget(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--device", "cpu", "--tiny", "--budget", "0",
         "--variants", "vgg5-sf-eager", "--out", str(tmp_path)],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    assert done.returncode == 1
    (record,) = json.loads((tmp_path / "gpu.json").read_text())["results"]
    assert record["status"] == "skipped: 0 s of the budget left"


def test_gpu_child_killed_on_timeout(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu

    args = gpu.parse_args(["--device", "cpu", "--tiny", "--variants", "vgg5-sf-eager"])
    assert gpu.run_child(gpu.BY_NAME["vgg5-sf-eager"], args, timeout=0.2) == {
        "status": "timed out after 0 s (budget)"
    }


def test_bench_times_incremental_pc_against_backprop(recipe_path, capsys, monkeypatch):
    """The backprop copy of an iPC recipe infers nothing (inference "states"); the iPC step is named."""
    monkeypatch.setattr(bench, "measure_rss", lambda recipe, algorithm: 1.0)
    assert main(["bench", str(recipe_path), "--steps", "1", "--warmup", "0", "--set", 'update.name="standard"',
                 "--set", 'inference.name="incremental"']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"pc \(standard, spiking, incremental\)  \d\.\d{4}      1\.0", lines[5])
    assert lines[6].startswith("backprop ")


# --- benchmarks/methods.py ---------------------------------------------------------------------------


def test_methods_study_smoke_and_resume(tmp_path):
    """The side-by-side study with tiny budgets: one depth, BP and ePC, two trials of one epoch, two seeds.
    Each cell is a pccore tune study whose best recipe pccore sweep trains with both seeds; the table has
    both rows with the searched values and a cosine and norm ratio per layer, pccore report drew the figure,
    and a second call retrains nothing."""
    out, work = tmp_path / "results" / "methods.md", tmp_path / "work"
    command = [sys.executable, str(BENCHMARKS / "methods.py"), "--depths", "3", "--methods", "bp,epc", "--vgg", "",
               "--trials", "2", "--startup", "1", "--epochs", "1", "--seeds", "2", "--workers", "1",
               "--work", str(work), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    detail = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
              for line in text.splitlines() if line.startswith(("| BP | 3 |", "| ePC | 3 |"))}
    assert set(detail) == {"BP", "ePC"}
    assert re.fullmatch(r"lr \S+", detail["BP"][2])
    assert re.fullmatch(r"lr \S+, lr_x \S+, T [35]", detail["ePC"][2])  # ePC searches T in {3, 5} at L = 3
    mean, _, std, count = detail["ePC"][4].split()
    assert 0.0 <= float(mean) <= 1.0 and float(std) >= 0.0 and count == "(2)"  # seeds 0 and 1
    assert detail["ePC"][6] == "none" and detail["BP"][6] == "-"  # ePC: the error reaches every layer
    assert len(detail["ePC"][7].split()) == 3 and len(detail["ePC"][8].split()) == 3  # per layer
    for cell in ("mlp-bp-d3", "mlp-epc-d3"):
        study = json.loads((work / "search" / cell / "summary.json").read_text())
        assert study["n_complete"] == 2 and study["best_params"]
        assert sorted(p.name for p in (work / "seeds" / f"{cell}_best").glob("seed_*/summary.json")) == [
            "summary.json", "summary.json"]
    assert (out.parent / "methods-mlp.png").read_bytes().startswith(b"\x89PNG")
    assert "| method | digits MLP |" in text  # pccore report's own table
    trained = sorted((p, p.stat().st_mtime) for p in work.rglob("seed_*/summary.json"))
    assert len(trained) == 2 * 2 + 2 * 2  # each cell's two trials (seed 0) and its two swept seeds
    again = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted((p, p.stat().st_mtime) for p in work.rglob("seed_*/summary.json")) == trained  # none retrained
    assert out.read_text().split("## MLPs")[1] == text.split("## MLPs")[1]


def test_methods_study_rejects_an_unknown_method():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "methods.py"), "--methods", "bp,nope"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 2
    assert "unknown ['nope']" in done.stderr
