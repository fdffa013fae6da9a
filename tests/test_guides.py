"""What the guides (docs/*.md) promise holds: the API example trains what it says, the commands name
shipped recipes and parse, the tables are those of the models. tests/test_examples.py runs every example;
these check what each one shows."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

import pccore
from pccore_plugins.normalization import FreezableBatchNorm1d, FrozenBatchNorm
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _page(name: str) -> str:
    """The text of a guide, docs/<name>.md."""
    return (DOCS / f"{name}.md").read_text()


API = _page("api")
EXAMPLE = re.search(r"```python\n(.*?)```", API, flags=re.DOTALL).group(1)


def test_the_example_is_short():
    assert len(EXAMPLE.splitlines()) < 25


def test_the_example_trains_a_users_model_with_sf_and_batchnorm_freezing(one_thread, capsys):
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(EXAMPLE, "docs/api.md", "exec"), namespace)
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
    figures = _page("figures")
    assert 'pip install "pccore[plot]"' in figures
    assert "pccore diagnose recipes/quickstart.toml --plot diagnosis.png" in figures
    assert "pccore schedule recipes/vgg10_cifar10_df.toml --plot decaying.png" in figures


# --- Several GPUs and machines ---------------------------------------------------------------------------

DISTRIBUTED = _page("distributed")


def _torchrun_commands() -> list[list[str]]:
    import shlex

    blocks = re.findall(r"```bash\n(.*?)```", DISTRIBUTED, flags=re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith("torchrun ")]


def test_the_torchrun_commands_start_pccore_run_on_a_shipped_recipe():
    from torch.distributed.run import get_args_parser

    from pccore.cli import build_parser

    commands = _torchrun_commands()
    parsed = [get_args_parser().parse_args(command[1:]) for command in commands]
    assert [(p.nnodes, p.nproc_per_node) for p in parsed] == [("1:1", "4"), ("2", "8"), ("2", "8")]
    assert parsed[0].standalone and parsed[1].rdzv_endpoint == "node0:29400" and parsed[2].node_rank == 0
    root = Path(__file__).resolve().parents[1]
    for p in parsed:
        assert p.module and p.training_script == "pccore"
        args = build_parser().parse_args(p.training_script_args)
        assert args.command == "run" and args.out and (root / args.recipe).is_file()


def test_the_expected_allreduce_traffic_is_that_of_the_models():
    """The table's parameter counts and bytes, from the architectures built on the meta device."""
    from pccore.core.registry import get_registry
    from pccore.parallel.distributed import ring_allreduce_bytes

    registry = get_registry()
    n = r"([\d.]+)"
    row = rf"^\| (VGG\d+) \((.+?), (\d+)x\d+\) \| {n} M \| {n} \| {n} / {n} / {n} MB \|$"
    rows = re.findall(row, DISTRIBUTED, flags=re.MULTILINE)
    assert len(rows) == 3
    classes = {"CIFAR-10": 10, "CIFAR-100": 100, "Tiny ImageNet": 200}
    for model, data, size, millions, gradient_mb, *sent in rows:
        architecture = registry.build("architecture", model.lower(), registry.component("architecture",
                                                                                         model.lower()).params())
        norm = registry.build("normalization", "none", registry.component("normalization", "none").params())
        with torch.device("meta"):
            blocks = architecture.build((3, int(size), int(size)), classes[data], norm)
        count = sum(p.numel() for b in blocks for p in b.parameters())
        assert f"{count / 1e6:.3g}" == millions
        assert f"{4 * count / 1e6:.1f}" == gradient_mb
        assert [f"{ring_allreduce_bytes(4 * count, n) / 1e6:.1f}" for n in (2, 4, 8)] == sent

def test_the_study_example_passes_tune_check_and_searches_what_the_shipped_study_searches(tmp_path, capsys):
    from pccore.cli import main

    search = _page("search")
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
    # the PostgreSQL commands are those tests/test_tune_postgres.py runs: --workers 2, its own --out, the
    # shared --storage (psycopg 3) and --grace-period on each machine, then tune show URL --study NAME
    import shlex

    from pccore.cli import build_parser

    search = _page("search")
    assert search.count("--storage postgresql+psycopg://") == 1 and search.count("--storage journal:") == 1
    block = re.search(r"\*\*Two machines, one study\.\*\*.*?```bash\n(.*?)```", search, flags=re.DOTALL).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    tune, show = (build_parser().parse_args(shlex.split(line)[1:]) for line in lines if line.startswith("pccore"))
    assert (tune.study, tune.workers, tune.out) == ("recipes/studies/quickstart.toml", 2, "runs/quickstart_search")
    assert tune.storage.startswith("postgresql+psycopg://") and tune.grace_period == 120
    assert (show.study, show.target, show.study_name) == ("show", tune.storage, "quickstart_search")


# --- Deeper networks -------------------------------------------------------------------------------------

DEEPER = _page("deeper")


def test_the_deeper_networks_commands_name_shipped_recipes_and_parse():
    import shlex

    from pccore.cli import build_parser
    from pccore.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    blocks = re.findall(r"```bash\n(.*?)```", DEEPER, flags=re.DOTALL)
    commands = [shlex.split(line, comments=True) for block in blocks for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["pccore", "run"]] * 3 + [["pccore", "diagnose"]]
    for command in commands:
        args = build_parser().parse_args(command[1:])
        load_recipe(root / args.recipe)  # the recipe exists and is valid


def test_the_depth_table_has_the_rows_benchmarks_deeper_measures():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from deeper import ROWS
    finally:
        sys.path.pop(0)
    table = [line for line in DEEPER.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert len(table) == len(ROWS)
    layers = [line.split("|")[2].strip() for line in table]
    assert layers == [row.layers for row in ROWS.values()]
