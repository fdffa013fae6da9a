"""The paper's mechanism: with spiking precision and the forward update, every layer's weight update
points along the backprop gradient of the output loss; standard PC with the same settings does not."""

import pytest
import torch

from pccore.core.components import NoParams
from pccore.core.engine import PCEngine
from pccore.inspect.diagnose import diagnose_batch
from pccore_plugins.architectures import MLP, VGG, MLPParams, VGGParams
from pccore_plugins.normalization import BatchNormParams, FrozenBatchNorm, NoNormalization
from pccore_plugins.nudging import Clamp
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate, StandardUpdate

CASES = {
    "tanh_mlp": (lambda: MLP(MLPParams(hidden=[64, 64, 64], activation="tanh")), (20,), NoNormalization),
    "vgg5": (lambda: VGG("vgg5", VGGParams(width=0.0625)), (3, 16, 16), NoNormalization),
    "vgg5_bf": (lambda: VGG("vgg5", VGGParams(width=0.0625)), (3, 16, 16), FrozenBatchNorm),
}


def cosines(case: str, update) -> list[float]:
    make_arch, shape, norm_cls = CASES[case]
    norm = norm_cls(NoParams() if norm_cls is NoNormalization else BatchNormParams())
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(make_arch().build(shape, 10, norm)).double()
    L = len(blocks)
    T = L + 2
    engine = PCEngine(blocks, Spiking(SpikingParams(peak=1.0, base=0.001)).table(L, T), update, norm,
                      Clamp(NoParams()), steps=T, lr=0.8, momentum=0.1, nesterov=True, num_classes=10)
    x = torch.randn(32, *shape, dtype=torch.float64)
    y = torch.randint(0, 10, (32,))
    return diagnose_batch(engine, x, y)["cosine_to_bp"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_spiking_forward_update_aligns_every_layer_with_backprop(case):
    sf = cosines(case, ForwardUpdate(NoParams()))
    pc = cosines(case, StandardUpdate(NoParams()))
    assert min(sf) > 0.99, sf
    assert min(pc) < min(sf), (pc, sf)


@pytest.mark.parametrize("case", ["tanh_mlp", "vgg5_bf"])
def test_standard_pc_is_clearly_misaligned_in_the_deep_layers(case):
    assert min(cosines(case, StandardUpdate(NoParams()))) < 0.99
