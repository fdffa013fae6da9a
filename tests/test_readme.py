"""The README's "Python API" section runs as written, so it cannot rot."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import pccore
from pccore_plugins.normalization import FreezableBatchNorm1d, FrozenBatchNorm
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(heading: str) -> str:
    """The text of a `## heading` section of the README."""
    parts = re.split(r"^## (.+)$", README, flags=re.MULTILINE)
    sections = {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}
    return sections[heading]


API = _section("Python API")
EXAMPLE = re.search(r"```python\n(.*?)```", API, flags=re.DOTALL).group(1)


@pytest.fixture
def one_thread():
    """One intra-op thread: the example's tiny model runs ten times faster so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_example_is_short():
    assert len(EXAMPLE.splitlines()) < 25


def test_the_example_trains_a_users_model_with_sf_and_batchnorm_freezing(one_thread, capsys):
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(EXAMPLE, "README.md (Python API)", "exec"), namespace)
    engine = namespace["engine"]
    # the components the text promises: spiking precision, forward update, BatchNorm Freezing
    assert isinstance(engine.update, ForwardUpdate) and isinstance(engine.norm, FrozenBatchNorm)
    assert torch.equal(engine.table.inference, Spiking(SpikingParams()).table(3, 3).inference)
    # the user's plain BatchNorm1d layers were taken over and updated once per batch (not at every step)
    norms = [m for m in engine.model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 2 and all(type(m) is FreezableBatchNorm1d for m in norms)
    batches = 4 * len(namespace["loader"])
    assert [int(m.num_batches_tracked) for m in norms] == [batches, batches]
    # it learned: ten classes, chance is 0.1
    accuracy = namespace["accuracy"]
    assert accuracy > 0.85
    assert capsys.readouterr().out == f"test accuracy {accuracy:.3f}\n"


def test_the_section_names_only_public_functions():
    used = set(re.findall(r"\bpccore\.([a-z_]+)\(", API))
    assert used >= {"make_engine", "train", "load_engine", "load_recipe", "diagnose_recipe", "plot_diagnosis"}
    assert used <= set(pccore.__all__)


def test_the_figures_section_shows_both_plot_commands():
    figures = _section("Figures")
    assert 'pip install "pccore[plot]"' in figures
    assert "pccore diagnose recipes/quickstart.toml --plot diagnosis.png" in figures
    assert "pccore schedule recipes/vgg10_cifar10_df.toml --plot decaying.png" in figures


def test_the_study_example_passes_tune_check_and_searches_what_the_shipped_study_searches(tmp_path, capsys):
    from pccore.cli import main

    search = _section("Search and sweeps")
    example = re.search(r"```toml\n(.*?)```", search, flags=re.DOTALL).group(1)
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    study = tmp_path / "example.toml"
    study.write_text(example.replace('"../quickstart.toml"', f'"{recipes / "quickstart.toml"}"'))
    assert main(["tune", str(study), "--check"]) == 0
    assert capsys.readouterr().out.startswith(f"OK {study} (study quickstart_search): ")
    shipped = tomllib.loads((recipes / "studies" / "quickstart.toml").read_text())
    documented = tomllib.loads(example)
    assert documented["space"] == shipped["space"]
    assert {k: v for k, v in documented.items() if k not in ("set", "space")} == {
        k: v for k, v in shipped.items() if k not in ("set", "space")}
    assert documented["set"].items() <= shipped["set"].items()


def test_the_search_section_shows_the_commands_for_two_machines():
    search = _section("Search and sweeps")
    assert search.count("--storage postgresql://") == 1 and search.count("--storage journal:") == 1
    assert "pccore tune recipes/studies/quickstart.toml --workers 2" in search
