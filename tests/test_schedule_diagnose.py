"""`pccore schedule` and `pccore diagnose` end to end through the command line."""

import json
import math

import pytest

from pccore.cli import main

RECIPE = """
[run]
seeds = [3]
[data]
name = "synthetic"
size = 16
batch_size = 16
[model]
name = "vgg5"
width = 0.0625
[normalization]
name = "frozen"
[precision]
name = "spiking"
[update]
name = "forward"
[inference]
steps = 7
lr = 0.8
momentum = 0.1
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "sf.toml"
    path.write_text(RECIPE)
    return str(path)


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_schedule_json_is_the_spiking_table(capsys, recipe):
    out = _json(capsys, ["schedule", recipe, "--json"])
    b = 0.001
    expected = [[1.0 if t == 5 - l else b for l in range(1, 6)] for t in range(7)]
    assert out == {"layers": 5, "steps": 7, "inference": expected, "learning": [1.0] * 5}


def test_schedule_honours_overrides_and_prints_a_table(capsys, recipe):
    overrides = ["--set", "precision.base=0.5", "--set", "inference.steps=2"]
    out = _json(capsys, ["schedule", recipe, *overrides, "--json"])
    assert out["inference"] == [[0.5, 0.5, 0.5, 0.5, 1.0], [0.5, 0.5, 0.5, 1.0, 0.5]]
    assert main(["schedule", recipe, *overrides]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "precision pi[t][l] of 'spiking': 5 layers, 2 inference steps",
        "        l=1 l=2 l=3 l=4 l=5",
        "t=0     0.5 0.5 0.5 0.5   1",
        "t=1     0.5 0.5 0.5   1 0.5",
        "learn     1   1   1   1   1",
    ]


def _output_energy_by_hand(recipe_path):
    """1/2 ||y - f_L(...f_1(x^0))||^2 / B of the first smoke batch: the model diagnose builds (seeded with
    the recipe's first seed), evaluated by a plain forward pass with BatchNorm on the batch's statistics."""
    import torch

    from pccore.core.registry import get_registry
    from pccore.inspect.diagnose import first_batch
    from pccore.recipe import load_recipe
    from pccore.run.assemble import assemble

    registry = get_registry()
    loaded = load_recipe(recipe_path, ["run.dtype='float64'"], registry=registry)
    spec, x, y = first_batch(loaded, registry, torch.device("cpu"), smoke=True)
    torch.manual_seed(3)
    blocks = assemble(loaded, spec, torch.device("cpu"), registry).blocks.train()
    with torch.no_grad():
        h = x
        for block in blocks:
            h = block(h)
    target = torch.nn.functional.one_hot(y, spec.num_classes).double()
    return float(0.5 * ((target - h) ** 2).sum() / x.shape[0])


def test_diagnose_smoke_reports_energy_per_step_and_alignment(capsys, recipe):
    out = _json(capsys, ["diagnose", recipe, "--smoke", "--json", "--set", "run.dtype='float64'"])
    assert len(out["energy"]) == 7 and all(len(row) == 5 for row in out["energy"])
    # the wavefront: at step t only layers l >= L - t carry energy
    for t, row in enumerate(out["energy"]):
        assert all(v == 0.0 for v in row[: max(0, 5 - t - 1)])
        assert row[4] > 0
    # at t = 0 only the output carries energy: the loss of the initial forward pass, which is bp_loss
    expected = _output_energy_by_hand(recipe)
    assert out["energy"][0][:4] == [0.0] * 4
    assert out["energy"][0][4] == pytest.approx(expected, rel=1e-12)
    assert out["bp_loss"] == pytest.approx(expected, rel=1e-12)
    assert len(out["cosine_to_bp"]) == 5
    assert min(out["cosine_to_bp"]) > 0.99
    # the output block's forward update is the gradient of 1/2 ||y - f_L(x^{L-1}_0)||^2 / B: backprop's
    assert out["cosine_to_bp"][4] == pytest.approx(1.0, abs=1e-12)
    # ... and so of the same size: the norm ratio of that block is 1, the others' finite and positive
    assert out["norm_ratio_to_bp"][4] == pytest.approx(1.0, abs=1e-12)
    assert len(out["norm_ratio_to_bp"]) == 5 and all(0 < r < math.inf for r in out["norm_ratio_to_bp"])
    pc = _json(capsys, ["diagnose", recipe, "--smoke", "--json", "--set", "run.dtype='float64'",
                        "--set", "update.name=standard"])
    assert min(pc["cosine_to_bp"]) < min(out["cosine_to_bp"])


def test_diagnose_human_output_shows_the_reported_values(capsys, recipe):
    args = ["diagnose", recipe, "--smoke", "--set", "run.dtype='float64'"]
    report = _json(capsys, [*args, "--json"])
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "energy per layer at each inference step (batch mean), 5 layers, 7 steps"
    assert lines[1].split() == ["l=1", "l=2", "l=3", "l=4", "l=5"]
    for t in range(7):
        label, *cells = lines[2 + t].split()
        assert label == f"t={t}"
        assert [float(c) for c in cells] == pytest.approx(report["energy"][t], rel=5e-4, abs=0)
    assert lines[9:12] == ["", "cosine of each layer's weight update to the backprop gradient",
                           " " * 11 + "l=1    l=2    l=3    l=4    l=5"]
    label, *cells = lines[12].split()
    assert label == "cos"
    assert [float(c) for c in cells] == pytest.approx(report["cosine_to_bp"], rel=5e-4, abs=0)
    assert len(lines) == 13
