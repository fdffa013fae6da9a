"""CUDA-only checks of the engine (skipped without a GPU): no host synchronisation inside a training
step, and bf16 autocast and channels_last steps that agree with the plain fp32 step."""

import copy

import pytest
import torch

from pccore.components import NoParams
from pccore.engine import PCEngine
from pccore_plugins.architectures import VGG, VGGParams
from pccore_plugins.normalization import BatchNormParams, FrozenBatchNorm
from pccore_plugins.nudging import Clamp
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _engine(blocks, autocast_dtype=None):
    norm = FrozenBatchNorm(BatchNormParams())
    return PCEngine(blocks, Spiking(SpikingParams()).table(5, 5), ForwardUpdate(NoParams()), norm,
                    Clamp(NoParams()), steps=5, lr=0.8, momentum=0.1, num_classes=10,
                    autocast_dtype=autocast_dtype)


def _blocks():
    norm = FrozenBatchNorm(BatchNormParams())
    torch.manual_seed(0)
    return torch.nn.ModuleList(VGG("vgg5", VGGParams(width=0.125)).build((3, 32, 32), 10, norm)).cuda()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 3, 32, 32, generator=g).cuda(), torch.randint(0, 10, (32,), generator=g).cuda()


def test_training_step_does_not_synchronise_with_the_host():
    engine = _engine(_blocks())
    x, y = _batch()
    engine.train_step(x, y)  # first call: allocations and kernel selection
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = engine.train_step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss).item()


def test_channels_last_and_bf16_steps_agree_with_fp32():
    x, y = _batch()
    reference = _blocks()
    base = _engine(reference).train_step(x, y)

    cl_blocks = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    cl = _engine(cl_blocks).train_step(x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(cl.loss, base.loss, rtol=1e-3, atol=1e-4)

    bf16 = _engine(copy.deepcopy(reference), autocast_dtype=torch.bfloat16).train_step(x, y)
    assert bf16.loss.dtype == torch.float32
    torch.testing.assert_close(bf16.loss, base.loss, rtol=5e-2, atol=5e-2)
