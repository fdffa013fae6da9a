"""The README's "Python API" section runs as written, so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import pccore
from pccore_plugins.normalization import FreezableBatchNorm1d, FrozenBatchNorm
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate

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
