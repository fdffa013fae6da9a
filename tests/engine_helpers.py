"""Small models and a slow reference implementation of inference for the engine tests."""

from __future__ import annotations

import torch
from torch import nn

from pccore.core.components import NoParams, PrecisionTable
from pccore.core.engine import PCEngine
from pccore_plugins.normalization import NoNormalization
from pccore_plugins.nudging import Clamp


def tanh_mlp(sizes, dtype=torch.float64):
    """Blocks tanh(W x + b) and a linear output block: f_l as written in the hand-derived gradients."""
    blocks = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        blocks.append(nn.Sequential(lin, nn.Tanh()) if i < len(sizes) - 2 else nn.Sequential(lin))
    return nn.ModuleList(blocks).to(dtype)


def table(inference, learning=None):
    inf = torch.tensor(inference, dtype=torch.float64)
    learn = torch.ones(inf.shape[1]) if learning is None else torch.tensor(learning)
    learn = learn.to(torch.float64)
    return PrecisionTable(inf, learn)


def engine(blocks, tab, update, *, num_classes, lr=0.1, momentum=0.0, nesterov=True, norm=None, nudging=None, **kw):
    return PCEngine(blocks, tab, update, norm or NoNormalization(NoParams()), nudging or Clamp(NoParams()),
                    steps=tab.steps, lr=lr, momentum=momentum, nesterov=nesterov, num_classes=num_classes, **kw)


def unmasked_inference(blocks, x0, target, pi, *, lr, momentum, nesterov, ce=False):
    """The slow reference: every layer's energy at every step, torch.optim.SGD over all latent states."""
    L = len(blocks)
    with torch.no_grad():
        mu = [x0]
        for b in blocks:
            mu.append(b(mu[-1]))
    xs = [mu[l].clone().requires_grad_(True) for l in range(1, L)]
    opt = torch.optim.SGD(xs, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    for t in range(pi.shape[0]):
        states = [x0, *xs, target]
        energy = 0
        for l in range(1, L + 1):
            pred = blocks[l - 1](states[l - 1])
            if ce and l == L:
                e = -(states[l] * torch.log_softmax(pred, -1)).sum()
            else:
                e = 0.5 * ((states[l] - pred) ** 2).sum()
            energy = energy + pi[t, l - 1] * e
        opt.zero_grad()
        energy.backward()
        opt.step()
    return [x.detach() for x in xs]
