"""The shipped recipes: the expected set exists and is named by rule, every file passes `pccore recipe
check`, says where each value comes from, carries the values METHOD.md publishes, and runs end to end
(`pccore run --smoke`); the S+F quickstart reaches 96% test accuracy.

Expected values are written out here from METHOD.md, not read back from the recipes.
"""

from __future__ import annotations

import json
import math
import re
from itertools import product
from pathlib import Path

import attrs
import pytest

from pccore.cli import main
from pccore.recipe import load_recipe, recipe_to_dict

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

BLOCKS = {"vgg5": 5, "vgg7": 7, "vgg10": 10, "vgg15": 15}
"""L, the number of blocks of each architecture (METHOD.md, "Architectures")."""
T_SEARCH = {
    "vgg5": {5, 6, 7, 8},
    "vgg7": {7, 9, 11, 13},
    "vgg10": {10, 12, 14, 16},
    "vgg15": {15, 17, 19, 21},
}
"""The paper's search set for the number of inference steps T."""
ALGORITHMS = {
    "bp": ("constant", "backprop"),
    "pc": ("constant", "standard"),
    "sf": ("spiking", "forward"),
    "df": ("decaying", "forward"),
}
"""(precision, update) of each algorithm in a recipe's name."""
NAME_RULE = re.compile(r"(vgg5|vgg7|vgg10|vgg15)_(cifar10|cifar100|tinyimagenet)_(bp|pc|sf|df)(_bf)?")

PAPER = sorted(
    [f"{m}_{d}_{a}{bf}" for m, d, a, bf in product(("vgg5", "vgg7", "vgg10"), ("cifar10", "cifar100"),
                                                   ALGORITHMS, ("", "_bf"))]
    + [f"vgg15_tinyimagenet_{a}{bf}" for a, bf in product(("bp", "pc", "sf"), ("", "_bf"))]
)
QUICKSTARTS = ["quickstart", "quickstart_bp", "quickstart_pc"]
RESNETS = sorted(
    ["resnet10_cifar10_sf", "resnet10_cifar10_bp", "quickstart_resnet"]
    + [f"resnet18_{d}_{a}_bf" for d, a in product(("cifar10", "cifar100", "tinyimagenet"), ("sf", "bp"))]
)
"""The ResNet recipes (DEEPER.md, section A)."""
MUPC = ["mupc_digits_d32", "mupc_digits_d128", "mupc_digits_d32_standard", "mupc_digits_d128_standard"]
MUPC_RULE = re.compile(r"mupc_digits_d(\d+)(_standard)?")
"""muPC (DEEPER.md, section B) and its standard-parameterisation twins: mupc_digits_d<H>[_standard]."""
IPC = sorted(
    [f"{m}_{d}_ipc{bf}" for m, d, bf in product(("vgg5", "vgg7", "vgg10"), ("cifar10", "cifar100"), ("", "_bf"))]
    + ["vgg15_tinyimagenet_ipc", "vgg15_tinyimagenet_ipc_bf", "quickstart_ipc"]
)
"""Incremental PC (BEYOND.md A): the S+F grid's models and datasets, plain (iPC.py) and with BatchNorm
Freezing (iPC_BN.py), and the offline quickstart."""
PURE_SPIKE = ["vgg5_cifar10_sf0_bf", "vgg7_cifar10_sf0_bf", "vgg10_cifar10_sf0_bf", "vgg15_tinyimagenet_sf0_bf",
              "quickstart_sf0"]
"""The pure-spike twins (spiking base 0) of S+F recipes: <twin>_sf0_bf extends <twin>_sf_bf."""
OTHER_DATA = {
    "vgg5_mnist_sf_bf": ("mnist", "vgg5", 5),
    "vgg10_mnist_sf_bf": ("mnist", "vgg10", 10),
    "vgg5_fashionmnist_sf_bf": ("fashionmnist", "vgg5", 5),
    "vgg10_fashionmnist_sf_bf": ("fashionmnist", "vgg10", 10),
    "vgg5_imagenet32_sf_bf": ("imagenet32", "vgg5", 5),
    "vgg10_imagenet32_sf_bf": ("imagenet32", "vgg10", 10),
    "resnet18_imagenette_sf_bf": ("imagenette", "resnet18", 21),
    "vgg10_galaxy10_sf_bf": ("galaxy10", "vgg10", 10),
}
"""S+F with BatchNorm Freezing on the reference code's other datasets (BEYOND.md, section C): (dataset,
model, T), T = L for a VGG and N + 3 for the ResNet, as on CIFAR."""
EPC = ["vgg5_cifar10_epc", "vgg7_cifar10_epc", "resnet18_cifar10_epc", "epc_digits_mlp20", "quickstart_epc"]
"""Error optimisation (BEYOND.md B): the authors' CIFAR-10 configurations, their deep MLP on digits, and the
offline quickstart."""
SHIPPED = sorted(RECIPES.glob("*.toml"))
EVERY_FILE = sorted(RECIPES.rglob("*.toml"))
STUDIES = sorted((RECIPES / "studies").glob("*.toml"))
"""Study files for `pccore tune` (not recipes)."""
RECIPE_FILES = [p for p in EVERY_FILE if p not in STUDIES]


def _path(name: str) -> Path:
    return RECIPES / f"{name}.toml"


def _parts(name: str) -> tuple[str, str, str, bool]:
    model, dataset, algorithm, bf = NAME_RULE.fullmatch(name).groups()
    return model, dataset, algorithm, bf is not None


def _names(files: list[Path]) -> list[str]:
    return [p.relative_to(RECIPES).as_posix() for p in files]


# --- the set of recipes and their names -------------------------------------------------------------


def test_the_54_paper_recipes_and_the_quickstarts_are_shipped() -> None:
    assert len(PAPER) == 54
    assert {p.stem for p in SHIPPED} == (
        set(PAPER) | set(QUICKSTARTS) | set(RESNETS) | set(MUPC) | set(PURE_SPIKE) | set(IPC) | set(OTHER_DATA)
        | set(EPC)
    )


@pytest.mark.parametrize("path", SHIPPED, ids=_names(SHIPPED))
def test_each_recipe_is_named_by_rule_and_its_name_says_what_it_runs(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.run.name == path.stem
    if path.stem in QUICKSTARTS:
        assert (recipe.data.name, recipe.model.name) == ("digits", "vgg5")
        return
    if path.stem in RESNETS or path.stem in PURE_SPIKE or path.stem in IPC or path.stem in OTHER_DATA or \
            path.stem in EPC:
        return  # checked value by value below
    if path.stem in MUPC:
        depth, standard = MUPC_RULE.fullmatch(path.stem).groups()
        assert (recipe.data.name, recipe.model.name) == ("digits", "resmlp")
        assert recipe.model.params.depth == int(depth)
        assert recipe.model.params.parameterization == ("standard" if standard else "mupc")
        return
    assert NAME_RULE.fullmatch(path.stem), f"{path.name} breaks <model>_<dataset>_<algorithm>[_bf].toml"
    model, dataset, algorithm, bf = _parts(path.stem)
    assert recipe.model.name == model
    assert recipe.data.name == dataset
    assert (recipe.precision.name, recipe.update.name) == ALGORITHMS[algorithm]
    expected_norm = ("batchnorm" if algorithm == "bp" else "frozen") if bf else "none"
    assert recipe.normalization.name == expected_norm


# --- validity and documentation ---------------------------------------------------------------------


@pytest.mark.parametrize("path", RECIPE_FILES, ids=_names(RECIPE_FILES))
def test_every_recipe_file_passes_recipe_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {path} ({path.stem}): ")


@pytest.mark.parametrize("path", STUDIES, ids=_names(STUDIES))
def test_every_study_file_passes_tune_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", str(path), "--check"]) == 0
    assert capsys.readouterr().out.startswith(f"OK {path} (study ")


_ASSIGNMENT = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*|"[^"]*")\s*=')


@pytest.mark.parametrize("path", EVERY_FILE, ids=_names(EVERY_FILE))
def test_every_value_says_whether_it_is_published_or_reasoned(path: Path) -> None:
    lines = path.read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        if not _ASSIGNMENT.match(line) or line.lstrip().startswith("extends"):
            continue
        comment = line.partition("#")[2]
        if not comment:
            above = number
            while above > 0 and lines[above - 1].lstrip().startswith("#"):
                above -= 1
            comment = " ".join(lines[above:number])
        if not re.search(r"\b(published|reasoned)\b", comment):
            undocumented.append(f"line {number + 1}: {line.strip()}")
    assert not undocumented, f"{path.name}: values without 'published' or 'reasoned': {undocumented}"


def test_the_comment_rule_catches_an_undocumented_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\n# reasoned: short\nepochs = 3\npatience = 2  # just because\n")
    with pytest.raises(AssertionError, match=r"line 4: patience = 2"):
        test_every_value_says_whether_it_is_published_or_reasoned(bad)
    study = tmp_path / "study.toml"  # a study file's quoted keys too
    study.write_text('trials = 3  # reasoned: few\n[set]\n"train.epochs" = 3  # short\n')
    with pytest.raises(AssertionError, match=r'line 3: "train.epochs" = 3'):
        test_every_value_says_whether_it_is_published_or_reasoned(study)


# --- the values METHOD.md gives ---------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_follow_the_paper_protocol(name: str) -> None:
    recipe = load_recipe(_path(name))
    assert recipe.run.seeds == [0, 1, 2, 3, 4]
    assert recipe.data.batch_size == 128
    assert recipe.data.params.augment is True
    assert (recipe.train.epochs, recipe.train.patience, recipe.train.max_batches) == (50, 10, 0)
    assert (recipe.optimizer.warmup, recipe.optimizer.schedule_epochs) == (0.1, 25)
    assert recipe.model.output_energy == "se"
    assert (recipe.model.params.activation, recipe.model.params.width) == ("gelu", 1.0)
    assert recipe.nudging.name == "clamp"
    assert recipe.inference.nesterov is True
    assert recipe.run.precision == "fp32"


@pytest.mark.parametrize("name", PAPER)
def test_inference_steps_come_from_the_search_sets_and_reach_every_layer(name: str) -> None:
    model, _, algorithm, _ = _parts(name)
    steps = load_recipe(_path(name)).inference.steps
    if algorithm == "bp":
        assert steps == 0
        return
    assert steps in T_SEARCH[model]
    if algorithm in ("sf", "df"):
        assert steps >= BLOCKS[model]


def test_vgg5_cifar10_pc_is_the_published_pcx_configuration() -> None:
    recipe = load_recipe(_path("vgg5_cifar10_pc"))
    assert recipe.inference.steps == 7
    assert recipe.inference.lr == 0.0235
    assert recipe.inference.momentum == 0.3
    assert recipe.optimizer.lr == 2.66e-4
    assert recipe.optimizer.weight_decay == 6.66e-3
    assert recipe.model.params.activation == "gelu"
    assert recipe.normalization.name == "none"


@pytest.mark.parametrize("name", [n for n in PAPER if _parts(n)[2] == "sf"])
def test_sf_recipes_use_the_reference_example(name: str) -> None:
    recipe = load_recipe(_path(name))
    assert (recipe.precision.params.peak, recipe.precision.params.base) == (1.0, 0.001)
    assert recipe.precision.params.learning == "ones"
    assert (recipe.inference.lr, recipe.inference.momentum, recipe.inference.nesterov) == (0.8, 0.1, True)
    assert (recipe.optimizer.lr, recipe.optimizer.weight_decay) == (7.5e-4, 3.2e-5)
    assert recipe.inference.steps == BLOCKS[_parts(name)[0]]


@pytest.mark.parametrize("name", [n for n in PAPER if _parts(n)[2] == "df"])
def test_df_recipes_use_the_reference_decay(name: str) -> None:
    recipe = load_recipe(_path(name))
    assert recipe.precision.params.variant == "reference"
    assert recipe.precision.params.k == 1.0
    assert recipe.inference.decay_last_lr is True
    assert recipe.inference.steps >= BLOCKS[_parts(name)[0]]


@pytest.mark.parametrize("name", [n for n in PAPER if _parts(n)[2] == "bp"])
def test_bp_recipes_take_a_learning_rate_from_the_bp_search_range(name: str) -> None:
    recipe = load_recipe(_path(name))
    assert 1e-5 <= recipe.optimizer.lr <= 3e-4


@pytest.mark.parametrize("name", [n for n in PAPER if not n.endswith("_bf")])
def test_a_bf_recipe_differs_from_its_plain_twin_only_in_normalisation(name: str) -> None:
    plain = recipe_to_dict(load_recipe(_path(name)))
    frozen = recipe_to_dict(load_recipe(_path(name + "_bf")))
    assert plain["normalization"] == {"name": "none"}
    expected = "batchnorm" if _parts(name)[2] == "bp" else "frozen"
    assert frozen["normalization"] == {"name": expected, "momentum": 0.1, "eps": 1e-5, "sync": False}
    for recipe in (plain, frozen):
        del recipe["normalization"], recipe["run"]["name"]
    assert plain == frozen


def test_the_schedule_of_vgg5_cifar10_sf_spikes_on_the_wavefront(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", str(_path("vgg5_cifar10_sf")), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert (table["layers"], table["steps"]) == (5, 5)
    # pi[t][l] = 1 where t == L - l (layer 5 at t = 0 ... layer 1 at t = 4), 0.001 elsewhere.
    assert table["inference"] == [
        [0.001, 0.001, 0.001, 0.001, 1.0],
        [0.001, 0.001, 0.001, 1.0, 0.001],
        [0.001, 0.001, 1.0, 0.001, 0.001],
        [0.001, 1.0, 0.001, 0.001, 0.001],
        [1.0, 0.001, 0.001, 0.001, 0.001],
    ]
    assert table["learning"] == [1.0] * 5


def test_the_quickstarts_share_one_model_and_differ_in_the_algorithm() -> None:
    recipes = {name: load_recipe(_path(name)) for name in QUICKSTARTS}
    for recipe in recipes.values():
        assert recipe.run.seeds == [0]
        assert recipe.model == recipes["quickstart"].model
        assert recipe.data == recipes["quickstart"].data
        assert recipe.train == recipes["quickstart"].train
    algorithm = {n: (r.precision.name, r.update.name, r.normalization.name) for n, r in recipes.items()}
    assert algorithm == {
        "quickstart": ("spiking", "forward", "frozen"),
        "quickstart_bp": ("constant", "backprop", "batchnorm"),
        "quickstart_pc": ("constant", "standard", "frozen"),
    }


# --- ResNets (DEEPER.md, section A) -----------------------------------------------------------------


def test_resnet10_cifar10_sf_is_the_reference_example() -> None:
    """hps/example.yaml of the reference code: T = 13, gelu, base 1e-3, lr_x 0.804, momentum 0.1 Nesterov,
    lr_w 7.5e-4, weight decay 3.2e-5, se, batch 128, 30 epochs, model.py (no BatchNorm)."""
    recipe = load_recipe(_path("resnet10_cifar10_sf"))
    assert (recipe.model.name, recipe.model.params.aux, recipe.model.params.width) == ("resnet10", True, 1.0)
    assert recipe.model.params.activation == "gelu" and recipe.model.output_energy == "se"
    assert (recipe.precision.name, recipe.update.name, recipe.normalization.name) == ("spiking", "forward", "none")
    assert (recipe.precision.params.peak, recipe.precision.params.base) == (1.0, 0.001)
    assert (recipe.inference.steps, recipe.inference.lr, recipe.inference.momentum) == (13, 0.804, 0.1)
    assert recipe.inference.nesterov is True
    assert (recipe.optimizer.lr, recipe.optimizer.weight_decay) == (7.5e-4, 3.2e-5)
    assert (recipe.data.name, recipe.data.batch_size, recipe.train.epochs) == ("cifar10", 128, 30)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "tinyimagenet"])
def test_resnet18_recipes_pair_sf_with_batchnorm_freezing_and_bp_with_batchnorm(dataset: str) -> None:
    sf = load_recipe(_path(f"resnet18_{dataset}_sf_bf"))
    bp = load_recipe(_path(f"resnet18_{dataset}_bp_bf"))
    for recipe in (sf, bp):
        assert (recipe.data.name, recipe.model.name, recipe.model.params.width) == (dataset, "resnet18", 1.0)
        assert (recipe.train.epochs, recipe.train.patience, recipe.run.seeds) == (50, 10, [0, 1, 2, 3, 4])
    assert (sf.precision.name, sf.update.name, sf.normalization.name) == ("spiking", "forward", "frozen")
    assert sf.model.params.aux is True
    assert sf.inference.steps >= 18  # N = 18 layers: the error must reach every one
    assert (bp.update.name, bp.normalization.name, bp.inference.steps) == ("backprop", "batchnorm", 0)

@pytest.mark.parametrize("name", MUPC)
def test_mupc_recipes_carry_jpcs_settings_in_pccores_batch_sum_convention(name: str) -> None:
    recipe = load_recipe(_path(name))
    assert (recipe.data.params.size, recipe.data.params.channels, recipe.data.batch_size) == (8, 1, 64)
    assert (recipe.model.params.activation, recipe.model.output_energy) == ("relu", "se")
    assert recipe.inference.steps == recipe.model.params.depth  # T = H
    # jpc's state rate on the batch-mean energy (0.5 for muPC, 1e-2 for its standard baseline) is that
    # rate / B on pccore's batch-sum energy
    jpc_state_rate, adam_rate = (1e-2, 1e-2) if name.endswith("_standard") else (0.5, 0.1)
    assert recipe.inference.lr == jpc_state_rate / recipe.data.batch_size
    assert recipe.optimizer.lr == adam_rate
    assert recipe.inference.momentum == 0.0
    assert recipe.optimizer.weight_decay == 0.0  # Adam: AdamW without weight decay
    assert (recipe.optimizer.warmup, recipe.optimizer.schedule_epochs) == (1.0, recipe.train.epochs)
    assert (recipe.precision.name, recipe.update.name, recipe.nudging.name) == ("constant", "standard", "clamp")
    assert recipe.precision.params.learning == "ones"
    assert recipe.normalization.name == "none"


@pytest.mark.parametrize("name", [n for n in MUPC if not n.endswith("_standard")])
def test_a_standard_twin_differs_only_in_the_parameterisation_and_the_learning_rates(name: str) -> None:
    mupc = recipe_to_dict(load_recipe(_path(name)))
    standard = recipe_to_dict(load_recipe(_path(name + "_standard")))
    assert (mupc["model"]["parameterization"], standard["model"]["parameterization"]) == ("mupc", "standard")
    for recipe in (mupc, standard):
        del recipe["model"]["parameterization"], recipe["optimizer"]["lr"], recipe["inference"]["lr"]
        del recipe["run"]["name"]
    assert mupc == standard


# --- the pure spike -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PURE_SPIKE)
def test_a_pure_spike_recipe_is_its_twin_with_base_zero(name: str) -> None:
    twin = "quickstart" if name == "quickstart_sf0" else name.replace("_sf0_bf", "_sf_bf")
    pure = recipe_to_dict(load_recipe(_path(name)))
    dense = recipe_to_dict(load_recipe(_path(twin)))
    assert (pure["precision"]["name"], pure["precision"]["base"], dense["precision"]["base"]) == (
        "spiking", 0.0, 0.001)
    for recipe in (pure, dense):
        del recipe["precision"]["base"], recipe["run"]["name"]
    assert pure == dense


# --- the reference code's other datasets (BEYOND.md, section C) -------------------------------------


@pytest.mark.parametrize("name", sorted(OTHER_DATA))
def test_other_dataset_recipes_run_sf_with_batchnorm_freezing_under_the_paper_protocol(name: str) -> None:
    dataset, model, steps = OTHER_DATA[name]
    recipe = load_recipe(_path(name))
    assert (recipe.data.name, recipe.model.name, recipe.inference.steps) == (dataset, model, steps)
    assert (recipe.precision.name, recipe.update.name, recipe.normalization.name) == ("spiking", "forward", "frozen")
    assert (recipe.precision.params.peak, recipe.precision.params.base) == (1.0, 0.001)
    assert (recipe.model.params.activation, recipe.model.params.width) == ("gelu", 1.0)
    assert (recipe.train.epochs, recipe.train.patience, recipe.run.seeds) == (50, 10, [0, 1, 2, 3, 4])
    assert recipe.data.batch_size == 128
    if model == "resnet18":
        assert recipe.model.params.aux is True
        assert (recipe.inference.lr, recipe.optimizer.lr) == (0.804, 7.5e-4)
    else:
        assert (recipe.inference.lr, recipe.optimizer.lr) == (0.8, 7.5e-4)
    params = attrs.asdict(recipe.data.params)
    if dataset in ("mnist", "fashionmnist"):
        assert "augment" not in params  # the reference does not augment them
    else:
        assert params["augment"] is True
    if dataset == "galaxy10":
        assert (params["size"], params["split_seed"], recipe.data.eval_batch_size) == (256, 42, 100)


# --- running ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in IPC if n != "quickstart_ipc"])
def test_ipc_recipes_are_their_sf_twins_with_incremental_pc(name: str) -> None:
    """Each <model>_<dataset>_ipc[_bf] recipe is its S+F twin but for the algorithm: spiking precision (the
    reference example's), the standard update, incremental inference with iPC.py's variant (plain) or,
    with BatchNorm Freezing, iPC_BN.py's (batchnorm)."""
    ipc = recipe_to_dict(load_recipe(_path(name)))
    sf = recipe_to_dict(load_recipe(_path(name.replace("_ipc", "_sf"))))
    bf = name.endswith("_bf")
    assert ipc["inference"] == {**sf["inference"], "name": "incremental", "variant": "batchnorm" if bf else "plain"}
    assert ipc["update"] == {"name": "standard"}
    assert ipc["precision"] == sf["precision"] == {"name": "spiking", "peak": 1.0, "base": 0.001, "learning": "ones"}
    assert ipc["normalization"]["name"] == ("frozen" if bf else "none")
    for recipe in (ipc, sf):
        del recipe["inference"], recipe["update"], recipe["run"]["name"]
    assert ipc == sf


def test_quickstart_ipc_has_the_quickstarts_budget() -> None:
    ipc, sf = load_recipe(_path("quickstart_ipc")), load_recipe(_path("quickstart"))
    assert (ipc.inference.name, ipc.inference.params.variant) == ("incremental", "batchnorm")
    assert (ipc.data, ipc.model, ipc.train, ipc.normalization) == (sf.data, sf.model, sf.train, sf.normalization)
    assert (ipc.inference.steps, ipc.optimizer) == (sf.inference.steps, sf.optimizer)


# --- error optimisation (BEYOND.md B) ------------------------------------------------------------------

EPC_CIFAR = {
    # model: (epochs, weight lr, weight decay, normalisation), configs_results/Error_CIFAR10_<model>_mse.yaml
    "vgg5": (25, 4.708376358797e-4, 1.478307651456393e-5, "none"),
    "vgg7": (25, 4.260829735178e-4, 2.16277357140978e-6, "none"),
    "resnet18": (50, 7.654630396525574e-4, 1.8181230065953655e-4, "batchnorm"),
}


@pytest.mark.parametrize("model", EPC_CIFAR)
def test_epc_cifar_recipes_carry_the_authors_settings(model: str) -> None:
    """T = 5, lr_e = 0.001 without momentum, batch 256, se output, constant precision, the standard update
    (the local energy), 25 epochs for the VGGs and 50 for ResNet18, each model's tuned weight rate."""
    recipe = load_recipe(_path(f"{model}_cifar10_epc"))
    epochs, lr, decay, norm = EPC_CIFAR[model]
    assert (recipe.data.name, recipe.model.name, recipe.model.params.width) == ("cifar10", model, 1.0)
    assert (recipe.inference.name, recipe.inference.steps, recipe.inference.lr) == ("errors", 5, 0.001)
    assert recipe.inference.momentum == 0.0 and recipe.model.output_energy == "se"
    assert (recipe.precision.name, recipe.precision.params.learning, recipe.update.name) == (
        "constant", "ones", "standard")
    assert (recipe.data.batch_size, recipe.train.epochs, recipe.optimizer.schedule_epochs) == (256, epochs, epochs)
    assert (recipe.optimizer.lr, recipe.optimizer.weight_decay, recipe.normalization.name) == (lr, decay, norm)
    if model == "resnet18":
        assert recipe.model.params.aux is False and recipe.model.params.activation == "relu"


def test_the_epc_deep_mlp_has_the_papers_mnist_settings_on_digits() -> None:
    recipe = load_recipe(_path("epc_digits_mlp20"))
    assert (recipe.data.name, recipe.model.name, recipe.model.params.activation) == ("digits", "mlp", "gelu")
    assert recipe.model.params.hidden == [128] * 19  # 20 layers with the output
    assert recipe.model.params.init == "orthogonal"
    assert (recipe.inference.name, recipe.inference.steps, recipe.inference.lr) == ("errors", 64, 0.1)
    assert (recipe.optimizer.lr, recipe.data.batch_size, recipe.train.epochs) == (1e-4, 64, 5)


def test_quickstart_epc_has_the_quickstarts_budget() -> None:
    epc, sf = load_recipe(_path("quickstart_epc")), load_recipe(_path("quickstart"))
    assert (epc.inference.name, epc.inference.steps, epc.inference.lr) == ("errors", 5, 0.001)
    assert (epc.data, epc.model, epc.train, epc.normalization) == (sf.data, sf.model, sf.train, sf.normalization)
    assert epc.optimizer.lr == sf.optimizer.lr


@pytest.mark.parametrize("name", PAPER + QUICKSTARTS + RESNETS + MUPC + PURE_SPIKE + IPC + EPC + sorted(OTHER_DATA))
def test_every_recipe_smoke_runs_end_to_end(name: str, tmp_path: Path) -> None:
    """Two batches of 8 random images at width 1/16: a finite, positive loss and a complete run folder."""
    out = tmp_path / "run"
    assert main(["run", str(_path(name)), "--smoke", "--device", "cpu", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["recipe.toml", "run.json", "seed_0", "summary.json"]
    seed_files = sorted(p.name for p in (out / "seed_0").iterdir())
    events = [f for f in seed_files if f.startswith("events.out.tfevents.")]
    assert len(events) == 1
    assert sorted(set(seed_files) - set(events)) == ["best.pt", "checkpoint.pt", "summary.json"]
    assert json.loads((out / "run.json").read_text())["smoke"] is True
    saved = load_recipe(out / "recipe.toml")
    # every shipped recipe is wider: the smoke cap applies (1/16 of a channel multiplier, 32 units)
    if name == "epc_digits_mlp20":  # an MLP: its hidden layers are capped at 32 units
        assert saved.model.params.hidden == [32] * 19
    else:
        assert saved.model.params.width == (32 if name in MUPC else 0.0625)
    assert (saved.data.batch_size, saved.train.epochs, saved.train.max_batches) == (8, 1, 2)

    summary = json.loads((out / "summary.json").read_text())
    seed = json.loads((out / "seed_0" / "summary.json").read_text())
    assert summary["seeds"] == [seed]
    assert seed["seed"] == 0 and seed["epochs"] == 1
    loss = seed["history"][0]["loss"]
    assert math.isfinite(loss) and loss > 0.0
    # the smoke test split has 2 x 8 = 16 images: top-1 is a multiple of 1/16 in [0, 1]
    assert 0.0 <= summary["top1_mean"] <= 1.0
    assert summary["top1_mean"] * 16 == round(summary["top1_mean"] * 16)


def test_the_quickstart_reaches_96_percent_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(_path("quickstart")), "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"][0]["epochs"] == 6
    assert summary["top1_mean"] >= 0.96
