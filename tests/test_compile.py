"""`run.compile = true` compiles each block with torch.compile; compiled and eager steps must agree."""

import copy

import torch

from pccore.components import NoParams
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate, StandardUpdate
from tests.engine_helpers import engine, tanh_mlp


def test_compiled_and_eager_training_steps_agree():
    torch._dynamo.reset()
    eager_blocks = tanh_mlp([6, 8, 8, 3], dtype=torch.float32)
    compiled_source = copy.deepcopy(eager_blocks)
    compiled_blocks = torch.nn.ModuleList([torch.compile(b) for b in compiled_source])
    pi = Spiking(SpikingParams()).table(3, 5)
    x = torch.randn(16, 6)
    y = torch.randint(0, 3, (16,))
    for update in (ForwardUpdate(NoParams()), StandardUpdate(NoParams())):
        eager = engine(eager_blocks, pi, update, lr=0.5, momentum=0.1, num_classes=3)
        compiled = engine(compiled_blocks, pi, update, lr=0.5, momentum=0.1, num_classes=3)
        a = eager.train_step(x, y)
        b = compiled.train_step(x, y)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.energy, a.energy, rtol=1e-5, atol=1e-6)
        for p, q in zip(eager_blocks.parameters(), compiled_source.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
