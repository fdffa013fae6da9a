"""`pccore schedule` and `pccore diagnose` end to end through the command line."""

import json

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
    out = _json(capsys, ["schedule", recipe, "--set", "precision.base=0.5", "--set", "inference.steps=2",
                         "--json"])
    assert out["inference"] == [[0.5, 0.5, 0.5, 0.5, 1.0], [0.5, 0.5, 0.5, 1.0, 0.5]]
    assert main(["schedule", recipe]) == 0
    text = capsys.readouterr().out
    assert "l=5" in text and "t=6" in text and "learn" in text


def test_diagnose_smoke_reports_energy_per_step_and_alignment(capsys, recipe):
    out = _json(capsys, ["diagnose", recipe, "--smoke", "--json", "--set", "run.dtype='float64'"])
    assert len(out["energy"]) == 7 and all(len(row) == 5 for row in out["energy"])
    # the wavefront: at step t only layers l >= L - t carry energy
    for t, row in enumerate(out["energy"]):
        assert all(v == 0.0 for v in row[: max(0, 5 - t - 1)])
        assert row[4] > 0
    assert len(out["cosine_to_bp"]) == 5
    assert min(out["cosine_to_bp"]) > 0.99
    pc = _json(capsys, ["diagnose", recipe, "--smoke", "--json", "--set", "run.dtype='float64'",
                        "--set", "update.name=standard"])
    assert min(pc["cosine_to_bp"]) < min(out["cosine_to_bp"])


def test_diagnose_human_output(capsys, recipe):
    assert main(["diagnose", recipe, "--smoke"]) == 0
    text = capsys.readouterr().out
    assert "cosine" in text and "t=6" in text
