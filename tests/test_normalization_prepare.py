"""The normalisation policies' `prepare` hook: blocks that bring their own BatchNorm layers are controlled
by the policy (BatchNorm Freezing takes them over in place, "none" refuses them), and a recipe's
architecture that hard-codes nn.BatchNorm2d gets the same treatment."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from pccore import Component, hookimpl
from pccore.core.components import DataSpec, NoParams
from pccore.core.errors import UsageError
from pccore.core.registry import Registry
from pccore.recipe import recipe_from_dict
from pccore.run.assemble import assemble, prepare_blocks
from pccore_plugins import architectures, datasets, inference, normalization, nudging, precision, update
from pccore_plugins.normalization import (
    BatchNormParams,
    FreezableBatchNorm1d,
    FreezableBatchNorm2d,
    FrozenBatchNorm,
    NoNormalization,
)
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate
from tests.engine_helpers import engine


def _user_blocks() -> nn.ModuleList:
    """Three hand-written blocks with plain BatchNorm layers, as a notebook user writes them."""
    return nn.ModuleList([
        nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh()),
        nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh()),
        nn.Linear(5, 3),
    ]).double()


def test_frozen_takes_over_plain_batchnorm_in_place():
    blocks = _user_blocks()
    bns = [blocks[0][1], blocks[1][1]]
    params = [p for bn in bns for p in bn.parameters()]
    buffers = [b for bn in bns for b in bn.buffers()]
    FrozenBatchNorm(BatchNormParams()).prepare(blocks)
    assert [type(bn) for bn in bns] == [FreezableBatchNorm1d, FreezableBatchNorm1d]
    assert blocks[0][1] is bns[0] and blocks[1][1] is bns[1]
    assert all(a is b for a, b in zip(params, [p for bn in bns for p in bn.parameters()], strict=True))
    assert all(a is b for a, b in zip(buffers, [b for bn in bns for b in bn.buffers()], strict=True))
    assert list(blocks.state_dict()) == list(_user_blocks().state_dict())


def test_frozen_prepare_converts_2d_and_is_idempotent():
    block = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, momentum=0.3, eps=1e-3))
    policy = FrozenBatchNorm(BatchNormParams())
    policy.prepare(nn.ModuleList([block]))
    policy.prepare(nn.ModuleList([block]))
    assert type(block[1]) is FreezableBatchNorm2d
    assert (block[1].momentum, block[1].eps) == (0.3, 1e-3)


def test_user_batchnorm_is_frozen_during_inference():
    """With prepare, the engine updates the user's running statistics once per batch (learning phase);
    without it, plain BatchNorm would update them at the initial pass and every inference step too."""
    norm = FrozenBatchNorm(BatchNormParams())
    blocks = _user_blocks()
    prepare_blocks(norm, blocks, "normalization 'frozen'")
    eng = engine(blocks, Spiking(SpikingParams()).table(3, 5), ForwardUpdate(NoParams()), lr=0.5, norm=norm,
                 num_classes=3)
    x0 = torch.randn(16, 4, dtype=torch.float64)
    eng.train_step(x0, torch.randint(0, 3, (16,)))
    # block 2 is evaluated at inference steps 1..4 too: plain BatchNorm would count 5 updates there
    assert [int(blocks[i][1].num_batches_tracked) for i in (0, 1)] == [1, 1]
    bn = blocks[0][1]
    with torch.no_grad():
        z = blocks[0][0](x0)
    torch.testing.assert_close(bn.running_mean, 0.1 * z.mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * z.var(0, unbiased=True), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "layer,where,what",
    [
        (lambda: nn.BatchNorm3d(2), "0.1", "BatchNorm3d"),
        (lambda: nn.SyncBatchNorm(2), "0.1", "SyncBatchNorm"),
        (lambda: nn.LazyBatchNorm1d(), "0.1", "LazyBatchNorm1d"),
    ],
)
def test_frozen_refuses_batchnorm_it_cannot_freeze(layer, where, what):
    blocks = nn.ModuleList([nn.Sequential(nn.Identity(), layer())])
    with pytest.raises(UsageError) as err:
        prepare_blocks(FrozenBatchNorm(BatchNormParams()), blocks, "normalization 'frozen'")
    text = str(err.value)
    assert text.startswith("normalization 'frozen': BatchNorm Freezing controls nn.BatchNorm1d")
    assert f"the layer at '{where}' is a torch.nn.modules." in text and what in text


def test_none_refuses_batchnorm_and_names_the_choices():
    with pytest.raises(UsageError) as err:
        prepare_blocks(NoNormalization(NoParams()), _user_blocks(), "normalization 'none'")
    text = str(err.value)
    assert "2 BatchNorm layer(s) (the first at '0.1', a BatchNorm1d)" in text
    assert '"frozen"' in text and '"batchnorm"' in text


def test_none_accepts_norms_without_batch_statistics():
    blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.InstanceNorm1d(4))])
    prepare_blocks(NoNormalization(NoParams()), blocks, "normalization 'none'")
    assert type(blocks[0][1]) is nn.LayerNorm


def test_a_policy_without_prepare_is_left_alone():
    class Plain:
        def layer(self, num_features, spatial_dims):
            return None

        def set_phase(self, model, phase):
            pass

    blocks = _user_blocks()
    prepare_blocks(Plain(), blocks, "normalization 'plain'")
    assert type(blocks[0][1]) is nn.BatchNorm1d


def _hard_coded_plugin():
    """An architecture that ignores `norm.layer` and writes nn.BatchNorm2d itself."""

    class HardCoded:
        def __init__(self, params):
            pass

        def build(self, input_shape, num_classes, norm):
            channels = input_shape[0]
            return [
                nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                nn.Sequential(nn.Flatten(), nn.Linear(4 * input_shape[1] * input_shape[2], num_classes)),
            ]

    @hookimpl
    def pccore_register_architecture():
        return [Component("hardcoded", HardCoded, NoParams, "BatchNorm2d written in the blocks")]

    return types.SimpleNamespace(pccore_register_architecture=pccore_register_architecture)


@pytest.fixture
def registry():
    registry = Registry(strict=True)
    for module in (architectures, datasets, inference, normalization, nudging, precision, update):
        registry.register(module, module.__name__.rsplit(".", 1)[1], "pccore")
    registry.register(_hard_coded_plugin(), "hardcoded", "pccore-hardcoded")
    return registry


def test_assemble_lets_the_policy_take_over_an_architectures_own_batchnorm(registry):
    recipe = recipe_from_dict(
        {"model": {"name": "hardcoded"}, "normalization": {"name": "frozen"}, "inference": {"steps": 2}},
        registry=registry,
    )
    asm = assemble(recipe, DataSpec((1, 4, 4), 3), torch.device("cpu"), registry)
    assert type(asm.blocks[0][1]) is FreezableBatchNorm2d

    refused = recipe_from_dict({"model": {"name": "hardcoded"}}, registry=registry)
    with pytest.raises(UsageError, match=r"^normalization 'none': the blocks hold 1 BatchNorm layer"):
        assemble(refused, DataSpec((1, 4, 4), 3), torch.device("cpu"), registry)
