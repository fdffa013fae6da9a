"""Error optimisation (ePC, BEYOND.md B) against a slow loop written straight from its definition:
float64, the states rebuilt from the errors by hand, autograd on the hand-written energy E(e),
torch.optim.SGD for the errors, the local energy at the detached rebuilt states for the weights. Then the
defining property (ePC and state-based PC converged on the same batch give the same weight gradient), the
combinations it refuses, and ePC through real runs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pccore
from pccore.core.errors import UsageError
from tests.test_incremental import WIDTHS, _blocks, _energy, _reference_block


def _reference_states(blocks, x, errors, update_stats=False):
    """s^0 = x, s^l = f_l(s^{l-1}) + e^l; returns the states and y_hat = f_L(s^{L-1})."""
    states = [x]
    for block, e in zip(blocks[:-1], errors, strict=True):
        states.append(_reference_block(block, states[-1], update_stats) + e)
    return states, _reference_block(blocks[-1], states[-1], update_stats)


def _reference_batch(blocks, x, y, *, steps, lr, momentum, ce, beta=None):
    """One ePC batch from BEYOND.md B: the weights' gradients (into .grad), the settled states, E(e_T) and
    the local energy at the settled states (both summed over the batch)."""
    L, B = len(blocks), x.shape[0]
    params = [p for b in blocks for p in b.parameters()]
    target = F.one_hot(y, WIDTHS[-1]).to(x.dtype)
    with torch.no_grad():
        states, y_hat = _reference_states(blocks, x, [0.0] * (L - 1))
    if beta is not None:  # nudge: the output node mu_0 + beta (y - mu_0) stands in for the target
        target = y_hat + beta * (target - y_hat)
    errors = [torch.zeros_like(s, requires_grad=True) for s in states[1:]]
    sgd = torch.optim.SGD(errors, lr=lr, momentum=momentum, nesterov=momentum > 0)

    def error_energy():
        states, y_hat = _reference_states(blocks, x, errors)
        return sum(0.5 * e.square().sum() for e in errors) + _energy(L, L, target, y_hat, ce), states

    for _ in range(steps):
        energy, _ = error_energy()
        for e, g in zip(errors, torch.autograd.grad(energy, errors), strict=True):
            e.grad = g
        sgd.step()
    with torch.no_grad():
        settled_energy, states = error_energy()
    states = [s.detach() for s in states]
    local = sum(
        _energy(l, L, states[l] if l < L else target, _reference_block(blocks[l - 1], states[l - 1], True), ce)
        for l in range(1, L + 1)
    )
    loss = local / B / min(1.0, lr * steps)
    for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
        p.grad = g
    return states, settled_energy, local.detach()


CASES = {
    "se": dict(ce=False, batchnorm=False, nudging="clamp"),
    "ce": dict(ce=True, batchnorm=False, nudging="clamp"),
    "frozen-batchnorm": dict(ce=False, batchnorm=True, nudging="clamp"),
    "nudge": dict(ce=False, batchnorm=False, nudging={"name": "nudge", "beta": 0.3}),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("steps", "lr", "momentum"), [(5, 0.1, 0.0), (7, 0.3, 0.0), (4, 0.05, 0.6)])
def test_an_epc_batch_equals_the_slow_loop(case: str, steps: int, lr: float, momentum: float) -> None:
    c = CASES[case]
    ours = [b.double() for b in _blocks(c["batchnorm"])]
    theirs = copy.deepcopy(ours)
    engine = pccore.make_engine(
        ours, num_classes=WIDTHS[-1], update="standard", nudging=c["nudging"],
        normalization="frozen" if c["batchnorm"] else "none", inference="errors", steps=steps, lr=lr,
        momentum=momentum, output_energy="ce" if c["ce"] else "se",
    )
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, WIDTHS[0], generator=generator, dtype=torch.float64)
    y = torch.randint(0, WIDTHS[-1], (16,), generator=generator)
    trace = engine.settle(x, y)
    out = engine.train_step(x, y)
    beta = c["nudging"]["beta"] if isinstance(c["nudging"], dict) else None
    states, settled_energy, local = _reference_batch(theirs, x, y, steps=steps, lr=lr, momentum=momentum,
                                                     ce=c["ce"], beta=beta)
    for a, b in zip(trace.states[1:-1], states[1:], strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert not torch.allclose(trace.states[1], trace.initial[1], atol=1e-6)  # the errors moved
    energy_scale = min(1.0, lr * steps)
    assert out.loss.item() == pytest.approx(local.item() / 16 / energy_scale, rel=1e-12)
    assert out.energy.sum().item() == pytest.approx(settled_energy.item() / 16, rel=1e-12)
    for a, b in zip((p for m in ours for p in m.parameters()), (p for m in theirs for p in m.parameters()),
                    strict=True):
        assert a.grad is not None and torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12)
    mine, ref = nn.ModuleList(ours).state_dict(), nn.ModuleList(theirs).state_dict()
    for name in mine:
        if "running" in name:  # the learning pass alone moved them (BatchNorm Freezing)
            assert torch.allclose(mine[name], ref[name], rtol=0, atol=1e-12), name


@pytest.mark.parametrize("ce", [False, True])
def test_the_local_energy_equals_the_error_energy_in_value(ce: bool) -> None:
    blocks = [b.double() for b in _blocks(False)]
    engine = pccore.make_engine(blocks, num_classes=3, inference="errors", steps=6, lr=0.2,
                                output_energy="ce" if ce else "se")
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
    trace = engine.settle(x, y, record=True)
    local = engine.learning_loss(trace) * 10 * min(1.0, 0.2 * 6)
    assert local.item() == pytest.approx(trace.final_energy.sum().item(), rel=1e-12)
    # per layer: the error terms 1/2 ||e^l||^2, then the output loss
    for l in range(1, 4):
        mu = blocks[l - 1](trace.states[l - 1])
        assert engine.layer_energy(l, trace.states[l], mu).item() == pytest.approx(trace.final_energy[l - 1].item(),
                                                                                 rel=1e-12)
    # the energy falls from step to step (plain SGD on E(e), small steps)
    totals = trace.energies.sum(dim=1)
    assert bool((totals[1:] < totals[:-1]).all())
    assert trace.final_energy.sum() < totals[-1]


def _mlp(seed: int = 3) -> list[nn.Module]:
    torch.manual_seed(seed)
    widths = [5, 7, 6, 6, 3]
    pairs = zip(widths[:-2], widths[1:-1], strict=True)
    blocks: list[nn.Module] = [nn.Sequential(nn.Linear(a, b), nn.Tanh()) for a, b in pairs]
    return [*(b.double() for b in blocks), nn.Linear(widths[-2], widths[-1]).double()]


def _converged_gradients(inference: str, lr: float, steps: int, x, y) -> list[torch.Tensor]:
    blocks = _mlp()
    engine = pccore.make_engine(blocks, num_classes=3, inference=inference, precision="constant", steps=steps,
                                lr=lr, momentum=0.0)
    engine.train_step(x, y)
    return [p.grad.clone() for b in blocks for p in b.parameters()]


def test_epc_and_state_based_pc_converged_give_the_same_weight_gradient() -> None:
    """The same energy and the same minimum in other variables: at convergence the weight gradients agree
    (the tolerance reached here is about 1e-13; 1e-10 leaves room across platforms). A few steps do not
    converge, and then they differ; backprop's gradient differs too."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=generator)
    epc = _converged_gradients("errors", 0.2, 1500, x, y)
    states = _converged_gradients("states", 0.2, 1500, x, y)
    worst = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(epc, states, strict=True))
    assert worst < 1e-10
    few = _converged_gradients("errors", 0.2, 5, x, y)  # energy_scale 1 as well: only the steps differ
    assert max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(few, states, strict=True)) > 1e-3
    blocks = _mlp()
    bp = pccore.make_engine(blocks, num_classes=3, update="backprop", steps=1)
    bp.train_step(x, y)
    backprop = [p.grad for b in blocks for p in b.parameters()]
    assert max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(backprop, states, strict=True)) > 1e-3


def test_plain_batchnorm_updates_its_running_statistics_at_every_pass() -> None:
    """T inference passes, the rebuild, and the learning pass: T + 2 updates per batch with plain
    BatchNorm; once per batch with BatchNorm Freezing."""
    for normalization, count in (("batchnorm", 4 + 2), ("frozen", 1)):
        blocks = _blocks(True)
        engine = pccore.make_engine(blocks, num_classes=3, normalization=normalization, inference="errors",
                                    steps=4, lr=0.1)
        engine.train_step(torch.randn(8, 6), torch.randint(0, 3, (8,)))
        assert int(blocks[0].bn.num_batches_tracked) == count, normalization


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(update="backprop"), "runs no inference"),
        (dict(update="forward"), "forward update"),
        (dict(precision="spiking"), "precision \"constant\""),
        (dict(precision={"name": "constant", "learning": "table"}, steps=0), "steps >= 1"),
        (dict(decay_last_lr=True), "decay_last_lr"),
    ],
)
def test_combinations_ePC_cannot_train_are_refused(changes, message) -> None:
    options = {**dict(num_classes=3, inference="errors", steps=3, lr=0.1), **changes}
    with pytest.raises(UsageError, match=message):
        pccore.make_engine(_blocks(False), **options)


def test_multi_part_layers_are_refused() -> None:
    from pccore_plugins.resnet import ResNet, ResNetParams  # noqa: PLC0415

    params = ResNetParams(blocks=[1], width=1 / 16, aux=True)
    blocks = ResNet([1], params).build((1, 8, 8), 3, _no_normalization())
    with pytest.raises(UsageError, match="aux = false"):
        pccore.make_engine(blocks, num_classes=3, inference="errors", steps=3, lr=0.1)


def _no_normalization():
    from pccore.plugin import NoParams  # noqa: PLC0415
    from pccore_plugins.normalization import NoNormalization  # noqa: PLC0415

    return NoNormalization(NoParams())


def test_data_parallel_shards_add_up_to_the_whole_batch() -> None:
    """Each sample's errors settle on their own (no BatchNorm), so two shards, each averaging over the
    global batch, give gradients that add up to the whole batch's: what the replicas' sum relies on."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(16, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=generator)
    grads = []
    for shards in ((slice(0, 16),), (slice(0, 7), slice(7, 16))):
        blocks = _mlp()
        engine = pccore.make_engine(blocks, num_classes=3, inference="errors", steps=6, lr=0.1)
        total = None
        for part in shards:
            engine.train_step(x[part], y[part], batch_size=16)
            g = [p.grad.clone() for b in blocks for p in b.parameters()]
            total = g if total is None else [a + b for a, b in zip(total, g, strict=True)]
        grads.append(total)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)


def test_diagnose_sees_every_layer_reached_at_the_first_step_and_near_backprop_updates() -> None:
    """ePC's promise: after one step every error has its signal (no wavefront); with lr_e * T small the
    errors are small and the update is close to backprop's (the reference's energy_scale restores its size)."""
    from pccore.inspect.diagnose import diagnose_batch  # noqa: PLC0415

    blocks = _mlp()
    engine = pccore.make_engine(blocks, num_classes=3, inference="errors", steps=5, lr=0.001)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    report = diagnose_batch(engine, x, y)
    energy = torch.tensor(report["energy"])
    assert energy.shape == (5, 4)
    assert bool((energy[0, :3] == 0).all()) and energy[0, 3] > 0  # zero errors at step 0: only the output
    assert bool((energy[1:, :3] > 0).all())  # from the first step on, every layer
    assert min(report["cosine_to_bp"]) > 0.999
    # the weight loss is E_local / (B * energy_scale), energy_scale = min(1, 0.001 * 5): at nearly zero
    # errors E_local is nearly the output loss
    assert report["loss"] * 0.005 == pytest.approx(report["bp_loss"], rel=0.01)
    state = _mlp()  # the weights are left as they were
    for a, b in zip(blocks, state, strict=True):
        assert torch.equal(a[0].weight if isinstance(a, nn.Sequential) else a.weight,
                           b[0].weight if isinstance(b, nn.Sequential) else b.weight)


def _epc_recipe(tmp_path, **changes):
    from tests.test_training import write_recipe  # noqa: PLC0415

    inference = {"name": "errors", "steps": 4, "lr": 0.05, "momentum": 0.0, **changes.pop("inference", {})}
    return write_recipe(tmp_path, inference=inference, update={"name": "standard"},
                        precision={"name": "constant"}, **changes)


def test_an_epc_run_resumes_exactly(tmp_path, monkeypatch) -> None:
    from tests.test_resume import _weights, resumes_exactly  # noqa: PLC0415

    recipe = _epc_recipe(tmp_path, epochs=3, max_batches=3, normalization="frozen")
    cut = resumes_exactly(recipe, tmp_path, monkeypatch)
    assert any("running_mean" in k for k in _weights(cut, 0))


def test_a_refused_combination_in_a_recipe_exits_2_with_the_message(tmp_path, capsys) -> None:
    from pccore.cli import main  # noqa: PLC0415

    recipe = _epc_recipe(tmp_path)
    out = tmp_path / "o"
    assert main(["run", str(recipe), "--out", str(out), "--set", "precision.name=spiking"]) == 2
    assert 'precision "constant"' in capsys.readouterr().err
    assert main(["diagnose", str(recipe), "--set", "update.name=forward"]) == 2
    assert "forward update" in capsys.readouterr().err


def test_bench_times_epc_against_backprop(tmp_path, capsys, monkeypatch) -> None:
    """The backprop side swaps ePC for state-based inference (ePC refuses the backprop update); the row
    names the algorithm."""
    import json  # noqa: PLC0415

    from pccore.cli import main  # noqa: PLC0415
    from pccore.inspect import bench  # noqa: PLC0415

    monkeypatch.setattr(bench, "measure_rss", lambda recipe, algorithm: {"pc": 30.0, "bp": 12.0}[algorithm])
    recipe = _epc_recipe(tmp_path)
    assert main(["bench", str(recipe), "--steps", "2", "--warmup", "1", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["inference"], report["update"], report["precision"]) == ("errors", "standard", "constant")
    assert report["pc_step_s"] > 0 and report["bp_step_s"] > 0
    assert bench.format_report(report).splitlines()[5].startswith("pc (standard, constant, errors)  ")


def test_tune_searches_the_error_rate_and_sweep_runs_epc_seeds(tmp_path, capsys) -> None:
    """`pccore tune` with inference.name fixed to "errors" searches lr_e and T; `pccore sweep` runs the seeds."""
    import json  # noqa: PLC0415

    from pccore.cli import main  # noqa: PLC0415
    from tests.test_tune import write_study  # noqa: PLC0415

    space = {"inference.lr": {"low": 0.01, "high": 0.3, "log": True}, "inference.steps": {"choices": [2, 4]}}
    fixed = {"inference.name": "errors", "inference.momentum": 0.0, "precision.name": "constant",
             "update.name": "standard"}
    study = write_study(tmp_path, trials=2, space=space, fixed=fixed)
    out = tmp_path / "tuned"
    assert main(["tune", str(study), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_complete"] == 2
    from pccore.recipe import load_recipe  # noqa: PLC0415

    best = load_recipe(out / "best.toml")
    assert best.inference.name == "errors" and best.inference.lr == summary["best_params"]["inference.lr"]
    swept = tmp_path / "swept"
    assert main(["sweep", str(out / "best.toml"), "--seeds", "0-1", "--out", str(swept)]) == 0
    capsys.readouterr()
    assert main(["report", str(swept), "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert [c["row"] for c in cells] == ["ePC"] and cells[0]["n"] == 2
