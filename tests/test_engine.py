"""The engine's numerics against hand-derived gradients, autograd of hand-written energies, plain PyTorch
and a slow unmasked reference implementation (METHOD.md's conventions, one by one)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from pccore.core.components import DataSpec, NoParams
from pccore.recipe import recipe_from_dict
from pccore.run.assemble import assemble
from pccore_plugins.normalization import BatchNorm, BatchNormParams, FrozenBatchNorm
from pccore_plugins.nudging import Center, CenterParams, Nudge, NudgeParams
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import Backprop, ForwardUpdate, StandardUpdate
from tests.engine_helpers import engine, table, tanh_mlp, unmasked_inference

STD, FWD, BP = StandardUpdate(NoParams()), ForwardUpdate(NoParams()), Backprop(NoParams())


def _hand_forward(W, b, x0):
    """x^0..x^L of the forward pass f_l = tanh(W_l x + b_l) (l < L), f_L linear."""
    L = len(W)
    mu = [x0]
    for l in range(L):
        z = mu[-1] @ W[l].T + b[l]
        mu.append(torch.tanh(z) if l < L - 1 else z)
    return mu


def _hand_inference(W, b, x0, y, pi, lr, momentum, nesterov=True, last_hidden_rates=None):
    """States after inference for f_l = tanh(W_l x + b_l) (l < L), f_L linear, with the gradient of
    E_t = sum_{l >= L-t} pi[t,l] 1/2 ||x^l - f_l(x^{l-1})||^2 written out by hand:
    dE/dx^l = pi_l eps_l - pi_{l+1} ((eps_{l+1} * f'_{l+1}) W_{l+1}). `y` is the output node x^L;
    `last_hidden_rates[t]`, when given, is the rate of layer L-1 at step t (every other layer uses `lr`)."""
    L = len(W)
    x = [m.clone() for m in _hand_forward(W, b, x0)]
    x[L] = y
    bufs = [torch.zeros_like(v) for v in x]
    for t in range(pi.shape[0]):
        w = [0.0] + [float(pi[t, l - 1]) if l >= L - t else 0.0 for l in range(1, L + 1)]  # wavefront mask
        pred, deriv = [None], [None]
        for l in range(1, L + 1):
            z = x[l - 1] @ W[l - 1].T + b[l - 1]
            pred.append(torch.tanh(z) if l < L else z)
            deriv.append(1 - torch.tanh(z) ** 2 if l < L else torch.ones_like(z))
        eps = [None] + [x[l] - pred[l] for l in range(1, L + 1)]
        grads = {}
        for l in range(1, L):
            grads[l] = w[l] * eps[l] - w[l + 1] * ((eps[l + 1] * deriv[l + 1]) @ W[l])
        for l in range(1, L):
            bufs[l] = momentum * bufs[l] + grads[l]
            step = grads[l] + momentum * bufs[l] if nesterov else bufs[l]
            rate = last_hidden_rates[t] if last_hidden_rates is not None and l == L - 1 else lr
            x[l] = x[l] - rate * step
    return x


@pytest.mark.parametrize("steps,momentum", [(1, 0.0), (2, 0.5), (4, 0.3)])
def test_inference_matches_the_hand_written_gradient(steps, momentum):
    blocks = tanh_mlp([5, 4, 3, 2])
    pi_rows = [[0.7, 1.3, 2.0], [0.4, 1.7, 0.9], [1.1, 0.6, 1.5], [0.3, 0.8, 1.2]][:steps]
    eng = engine(blocks, table(pi_rows), STD, lr=0.2, momentum=momentum, num_classes=2)
    x0 = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    trace = eng.infer(x0, y)
    W = [blk[0].weight.detach() for blk in blocks]
    b = [blk[0].bias.detach() for blk in blocks]
    target = F.one_hot(y, 2).double()
    expected = _hand_inference(W, b, x0, target, torch.tensor(pi_rows, dtype=torch.float64), 0.2, momentum)
    for l in (1, 2):
        torch.testing.assert_close(trace.states[l], expected[l], rtol=0, atol=1e-12)
    assert not torch.equal(trace.states[2], expected[2] * 0 + trace.initial[2])  # inference moved x^2


def _weights(blocks):
    """(W_l, b_l) of the linear layer of every block, detached."""
    linear = [next(m for m in blk.modules() if isinstance(m, torch.nn.Linear)) for blk in blocks]
    return [m.weight.detach().clone() for m in linear], [m.bias.detach().clone() for m in linear]


PI_ROWS = [[0.7, 1.3, 2.0], [0.4, 1.7, 0.9], [1.1, 0.6, 1.5]]


@pytest.mark.parametrize("nesterov", [True, False])
def test_momentum_buffers_start_at_zero_for_every_batch(nesterov):
    """A second batch through the same engine (buffers of the same shapes, so reused) and a third of another
    size (buffers remade) each move the states exactly as a first batch would: no momentum carries over."""
    blocks = tanh_mlp([5, 4, 3, 2])
    eng = engine(blocks, table(PI_ROWS), STD, lr=0.3, momentum=0.8, nesterov=nesterov, num_classes=2)
    W, b = _weights(blocks)
    pi = torch.tensor(PI_ROWS, dtype=torch.float64)
    batches = [(6, [0, 1, 1, 0, 1, 0]), (6, [1, 1, 0, 0, 0, 1]), (4, [0, 0, 1, 1])]
    for size, labels in batches:
        x0 = torch.randn(size, 5, dtype=torch.float64)
        y = torch.tensor(labels)
        trace = eng.infer(x0, y)
        expected = _hand_inference(W, b, x0, F.one_hot(y, 2).double(), pi, 0.3, 0.8, nesterov=nesterov)
        for l in (1, 2):
            torch.testing.assert_close(trace.states[l], expected[l], rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("momentum", [0.0, 0.4])
def test_decay_last_lr_gives_the_last_hidden_layer_the_rate_lr_to_the_power_t_plus_one(steps, momentum):
    """With decay_last_lr the last hidden layer (l = L - 1) steps with lr, lr^2, lr^3, ... (the documented
    reading of the appendix's lr_x ** t with t counted from 1); every other layer keeps lr. Each T pins the
    rate of one more step."""
    lr = 0.5
    rates = [0.5, 0.25, 0.125, 0.0625][:steps]  # 0.5 ** (t + 1), written out
    rows = [[0.7, 1.3, 2.0, 0.8], [0.4, 1.7, 0.9, 1.2], [1.1, 0.6, 1.5, 0.5], [0.3, 0.8, 1.2, 1.0]][:steps]
    blocks = tanh_mlp([5, 4, 4, 3, 2])  # L = 4: layers 1, 2 keep lr, layer 3 decays
    eng = engine(blocks, table(rows), STD, lr=lr, momentum=momentum, num_classes=2, decay_last_lr=True)
    x0 = torch.randn(5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    trace = eng.infer(x0, y)
    W, b = _weights(blocks)
    target, pi = F.one_hot(y, 2).double(), torch.tensor(rows, dtype=torch.float64)
    expected = _hand_inference(W, b, x0, target, pi, lr, momentum, last_hidden_rates=rates)
    for l in (1, 2, 3):
        torch.testing.assert_close(trace.states[l], expected[l], rtol=0, atol=1e-12)
    undecayed = _hand_inference(W, b, x0, target, pi, lr, momentum)
    if steps > 1:  # lr ** 1 = lr: the decay shows from the second step on
        assert (trace.states[3] - undecayed[3]).abs().max() > 1e-4
    without = engine(blocks, table(rows), STD, lr=lr, momentum=momentum, num_classes=2).infer(x0, y)
    torch.testing.assert_close(without.states[3], undecayed[3], rtol=0, atol=1e-12)


def test_the_recipe_flag_decay_last_lr_reaches_the_engine():
    """`inference.decay_last_lr = true` in a recipe gives an assembled engine whose inference is the hand
    computation with the decaying rate of the last hidden layer."""
    recipe = recipe_from_dict({
        "run": {"dtype": "float64"},
        "model": {"name": "mlp", "hidden": [4, 3], "activation": "tanh"},
        "inference": {"steps": 3, "lr": 0.5, "momentum": 0.3, "decay_last_lr": True},
    })
    asm = assemble(recipe, DataSpec((5,), 2), torch.device("cpu"))
    x0 = torch.randn(5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    trace = asm.engine.infer(x0, y)
    W, b = _weights(asm.blocks)
    pi = torch.ones(3, 3, dtype=torch.float64)
    expected = _hand_inference(W, b, x0, F.one_hot(y, 2).double(), pi, 0.5, 0.3,
                               last_hidden_rates=[0.5, 0.25, 0.125])
    for l in (1, 2):
        torch.testing.assert_close(trace.states[l], expected[l], rtol=0, atol=1e-12)


def test_first_step_touches_only_the_last_hidden_layer():
    blocks = tanh_mlp([5, 4, 3, 2])
    eng = engine(blocks, table([[1.0, 1.0, 1.0]]), STD, lr=0.5, num_classes=2)
    trace = eng.infer(torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 1, 0]))
    assert torch.equal(trace.states[1], trace.initial[1])
    assert not torch.equal(trace.states[2], trace.initial[2])


@pytest.mark.parametrize("ce", [False, True])
@pytest.mark.parametrize("momentum,nesterov", [(0.0, True), (0.1, True), (0.6, False)])
def test_wavefront_equals_unmasked_computation_with_fewer_block_calls(ce, momentum, nesterov):
    blocks = tanh_mlp([6, 5, 5, 4, 3])
    pi = Spiking(SpikingParams(peak=1.0, base=0.05)).table(4, 6)
    eng = engine(blocks, pi, STD, lr=0.3, momentum=momentum, nesterov=nesterov, num_classes=3,
                 output_energy="ce" if ce else "se")
    x0 = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    calls = {"n": 0}
    hooks = [blk.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1)) for blk in blocks]
    trace = eng.infer(x0, y)
    masked_calls = calls["n"]
    calls["n"] = 0
    reference = unmasked_inference(blocks, x0, F.one_hot(y, 3).double(), pi.inference,
                                   lr=0.3, momentum=momentum, nesterov=nesterov, ce=ce)
    unmasked_calls = calls["n"] - 4  # minus the reference's own initial pass
    for h in hooks:
        h.remove()
    for l in range(1, 4):
        torch.testing.assert_close(trace.states[l], reference[l - 1], rtol=0, atol=1e-12)
    # initial pass 4 calls + steps t=0..5 evaluate 1, 2, 3 blocks, then 3 (f_1(x^0) = mu^1_0 is reused)
    assert masked_calls == 4 + 1 + 2 + 3 + 3 + 3 + 3
    assert unmasked_calls == 6 * 4
    assert masked_calls - 4 < unmasked_calls


def _weight_grads(blocks):
    return [p.grad.clone() for p in blocks.parameters()]


@pytest.mark.parametrize("update", ["standard", "forward"])
def test_update_rule_gradients_equal_autograd_of_the_hand_written_energy(update):
    blocks = tanh_mlp([5, 4, 3, 2])
    learn = [0.5, 2.0, 1.5]
    eng = engine(blocks, table([[1.0, 0.2, 1.0], [0.2, 1.0, 0.2], [1.0, 0.2, 0.2]], learn),
                 STD if update == "standard" else FWD, lr=0.4, momentum=0.2, num_classes=2)
    x0 = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (7,))
    reference = copy.deepcopy(blocks)
    trace = eng.infer(x0, y)
    loss = eng.learning_loss(trace)
    loss.backward()
    got = _weight_grads(blocks)

    xT = [s.detach() for s in trace.states]
    with torch.no_grad():  # x^l_0, the initial forward values
        x_init = [x0]
        for blk in reference:
            x_init.append(blk(x_init[-1]))
    energy = 0
    for l in range(1, 4):
        inp = xT[l - 1] if update == "standard" else x_init[l - 1]
        energy = energy + learn[l - 1] * 0.5 * ((xT[l] - reference[l - 1](inp)) ** 2).sum()
    (energy / 7).backward()
    for g, p in zip(got, reference.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("output_energy", ["se", "ce"])
def test_backprop_rule_matches_a_plain_pytorch_training_step(output_energy):
    blocks = tanh_mlp([5, 4, 3])
    plain = copy.deepcopy(blocks)
    eng = engine(blocks, table([[1.0, 1.0]] * 3), BP, num_classes=3, output_energy=output_energy)
    x0 = torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    opt = torch.optim.AdamW(blocks.parameters(), lr=1e-2, weight_decay=1e-3)
    eng.train_step(x0, y)
    opt.step()

    opt2 = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=1e-3)
    out = plain[1](plain[0](x0))
    if output_energy == "se":
        loss = F.mse_loss(out, F.one_hot(y, 3).double(), reduction="sum") / 2 / 8
    else:
        loss = F.cross_entropy(out, y)
    opt2.zero_grad()
    loss.backward()
    opt2.step()
    for a, b in zip(blocks.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _bn_mlp(norm):
    from pccore_plugins.architectures import MLP, MLPParams

    return torch.nn.ModuleList(MLP(MLPParams(hidden=[6, 5], activation="tanh")).build((4,), 3, norm)).double()


def test_batchnorm_freezing_updates_running_statistics_once_in_the_learning_phase():
    norm = FrozenBatchNorm(BatchNormParams())
    blocks = _bn_mlp(norm)
    eng = engine(blocks, Spiking(SpikingParams()).table(3, 5), STD, lr=0.5, momentum=0.1, norm=norm,
                 num_classes=3)
    bns = [blocks[0][2], blocks[1][1]]
    x0 = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    trace = eng.infer(x0, y)
    for bn in bns:  # initial pass and inference left them alone
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert int(bn.num_batches_tracked) == 0
    states = [s.detach() for s in trace.states]
    with torch.no_grad():  # the learning phase's inputs to each BatchNorm: the linear layer of x^{l-1}_T
        pre = [blocks[0][1](blocks[0][0](states[0])), blocks[1][0](states[1])]
    eng.learning_loss(trace)
    for bn, z in zip(bns, pre, strict=True):
        torch.testing.assert_close(bn.running_mean, 0.1 * z.mean(0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * z.var(0, unbiased=True), rtol=1e-12, atol=1e-14)
        assert int(bn.num_batches_tracked) == 1


def test_batchnorm_freezing_with_the_forward_update_counts_one_update_per_batch():
    norm = FrozenBatchNorm(BatchNormParams())
    blocks = _bn_mlp(norm)
    eng = engine(blocks, Spiking(SpikingParams()).table(3, 5), FWD, lr=0.5, norm=norm, num_classes=3)
    x0 = torch.randn(16, 4, dtype=torch.float64)
    eng.train_step(x0, torch.randint(0, 3, (16,)))
    with torch.no_grad():
        z = blocks[0][1](blocks[0][0](x0))
    bn = blocks[0][2]
    assert int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, 0.1 * z.mean(0))


def test_ordinary_batchnorm_updates_at_every_training_call_and_eval_uses_running_stats():
    norm = BatchNorm(BatchNormParams())
    blocks = _bn_mlp(norm)
    T, L = 5, 3
    eng = engine(blocks, Spiking(SpikingParams()).table(L, T), STD, lr=0.5, norm=norm, num_classes=3)
    x0 = torch.randn(16, 4, dtype=torch.float64)
    eng.train_step(x0, torch.randint(0, 3, (16,)))
    # block l is evaluated in the initial pass, at steps t >= L - l, and in the learning phase
    assert int(blocks[0][2].num_batches_tracked) == 1 + (T - (L - 1)) + 1
    assert int(blocks[1][1].num_batches_tracked) == 1 + (T - (L - 2)) + 1
    bn = blocks[0][2]
    z = blocks[0][1](blocks[0][0](x0)).detach()
    expected = torch.tanh((z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
    blocks.eval()
    with torch.no_grad():
        got = blocks[0](x0)
    torch.testing.assert_close(got, expected)


def _hand_block_params(blocks):
    """Per block, the tensors of the hand-written f_l: (W, b) of the linear layer and (gamma, beta) of
    its BatchNorm when there is one, in `blocks.parameters()` order."""
    params = []
    for blk in blocks:
        linear = next(m for m in blk.modules() if isinstance(m, torch.nn.Linear))
        bn = [m for m in blk.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        tensors = [linear.weight, linear.bias] + ([bn[0].weight, bn[0].bias] if bn else [])
        params.append([t.detach().clone() for t in tensors])
    return params


def _hand_f(l, L, x, p):
    """f_l by hand: linear, BatchNorm with the batch's statistics (mean, biased variance, eps 1e-5) when
    the block has one, tanh below the output."""
    z = x.flatten(1) @ p[0].T + p[1]
    if len(p) == 4:
        z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5) * p[2] + p[3]
    return torch.tanh(z) if l < L else z


def _hand_e(l, L, x, pred, ce):
    """e_l: 1/2 ||x - pred||^2, or -sum(y * log_softmax(mu)) at the output with a cross-entropy output."""
    if ce and l == L:
        return -(x * torch.log_softmax(pred, dim=-1)).sum()
    return 0.5 * ((x - pred) ** 2).sum()


@pytest.mark.parametrize("update", ["standard", "forward"])
@pytest.mark.parametrize("norm_name,output_energy", [("frozen", "se"), ("frozen", "ce"), ("none", "ce")])
def test_bn_freezing_and_cross_entropy_gradients_equal_autograd_of_the_hand_written_energy(
    update, norm_name, output_energy
):
    """Inference (unmasked, torch.optim.SGD on the hand-written energy) and the weight gradient of
    sum_l pi_l e_l(x^l_T, f_l(input)) / B, input x^{l-1}_T (standard) or x^{l-1}_0 (forward), with f_l
    normalising by the batch's statistics under BatchNorm Freezing and e_L the cross-entropy for "ce"."""
    from pccore_plugins.normalization import NoNormalization

    norm = FrozenBatchNorm(BatchNormParams()) if norm_name == "frozen" else NoNormalization(NoParams())
    blocks = _bn_mlp(norm)
    rows = [[0.2, 0.5, 1.0], [0.3, 1.0, 0.4], [1.0, 0.6, 0.3], [0.7, 0.2, 0.9]]
    learn = [0.5, 2.0, 1.5]
    eng = engine(blocks, table(rows, learn), STD if update == "standard" else FWD, lr=0.3, momentum=0.2,
                 norm=norm, num_classes=3, output_energy=output_energy)
    P = _hand_block_params(blocks)
    x0 = torch.randn(10, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 1])
    trace = eng.infer(x0, y)
    loss = eng.learning_loss(trace)
    loss.backward()

    L, ce = 3, output_energy == "ce"
    with torch.no_grad():
        x_init = [x0]
        for l in range(1, L + 1):
            x_init.append(_hand_f(l, L, x_init[-1], P[l - 1]))
    latent = [x_init[l].clone().requires_grad_(True) for l in range(1, L)]
    sgd = torch.optim.SGD(latent, lr=0.3, momentum=0.2, nesterov=True)
    target = F.one_hot(y, 3).double()
    for t in range(len(rows)):
        states = [x0, *latent, target]
        energy = sum(rows[t][l - 1] * _hand_e(l, L, states[l], _hand_f(l, L, states[l - 1], P[l - 1]), ce)
                     for l in range(1, L + 1))
        sgd.zero_grad()
        energy.backward()
        sgd.step()
    states = [x0, *[x.detach() for x in latent], target]
    for l in (1, 2):
        torch.testing.assert_close(trace.states[l], states[l], rtol=0, atol=1e-12)

    Pg = [[v.clone().requires_grad_(True) for v in p] for p in P]
    inputs = states if update == "standard" else x_init
    weight_energy = sum(learn[l - 1] * _hand_e(l, L, states[l], _hand_f(l, L, inputs[l - 1], Pg[l - 1]), ce)
                        for l in range(1, L + 1)) / 10
    weight_energy.backward()
    torch.testing.assert_close(loss.detach(), weight_energy.detach(), rtol=1e-12, atol=0)
    expected = [v.grad for p in Pg for v in p]
    got = [p.grad for p in blocks.parameters()]
    assert len(got) == len(expected) == (10 if norm_name == "frozen" else 6)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_nudge_sets_the_output_node_between_prediction_and_target():
    mu = torch.tensor([[0.2, -1.0, 3.0]])
    y = torch.tensor([[0.0, 1.0, 0.0]])
    node, scale = Nudge(NudgeParams(beta=0.25)).output_node(mu, y)
    torch.testing.assert_close(node, torch.tensor([[0.15, -0.5, 2.25]]))
    assert scale == 1.0


def test_center_nudging_draws_both_signs_about_equally_and_reproducibly():
    def draws(seed):
        center = Center(CenterParams(beta=0.5, resample="batch", scale_update=True))
        center.begin_epoch(seed, 0)
        signs = []
        for _ in range(1000):
            center.begin_batch()
            node, scale = center.output_node(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
            assert float(node[0, 0]) in (0.5, -0.5)
            assert scale == pytest.approx(1 / float(node[0, 0]))
            signs.append(1 if float(node[0, 0]) > 0 else -1)
        return signs

    a = draws(7)
    assert 450 <= a.count(1) <= 550
    assert a == draws(7)
    assert a != draws(8)


def test_center_nudging_per_epoch_keeps_one_sign_for_the_epoch():
    center = Center(CenterParams(beta=0.3, resample="epoch"))
    signs = set()
    for epoch in range(20):
        center.begin_epoch(0, epoch)
        zero, one = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
        within = {float(center.output_node(zero, one)[0]) for _ in range(10)}
        assert len(within) == 1
        signs |= within
    assert signs == {0.3, -0.3}


def _hand_weight_grads(W, b, states, x_init, learn, update, scale=1.0):
    """Gradients [W_1, b_1, ..., W_L, b_L] of scale * sum_l learn_l 1/2 ||x^l_T - f_l(input)||^2 / B with
    input x^{l-1}_T (standard) or x^{l-1}_0 (forward), by autograd of the energy written out by hand."""
    L = len(W)
    Wg = [w.clone().requires_grad_(True) for w in W]
    bg = [v.clone().requires_grad_(True) for v in b]
    energy = 0
    for l in range(1, L + 1):
        inp = states[l - 1] if update == "standard" else x_init[l - 1]
        z = inp @ Wg[l - 1].T + bg[l - 1]
        pred = torch.tanh(z) if l < L else z
        energy = energy + learn[l - 1] * 0.5 * ((states[l] - pred) ** 2).sum()
    total = scale * energy / states[0].shape[0]
    total.backward()
    return total.detach(), [g for w, v in zip(Wg, bg, strict=True) for g in (w.grad, v.grad)]


LEARN = [0.5, 2.0, 1.5]


def _nudged_step_against_the_hand_computation(nudging, update, node_of, scale):
    """One batch through an engine with `nudging`, against the hand computation with the output node
    `node_of(mu^L_0, y)` and the weight energy multiplied by `scale`."""
    blocks = tanh_mlp([5, 4, 3, 2])
    rule = STD if update == "standard" else FWD
    eng = engine(blocks, table(PI_ROWS, LEARN), rule, lr=0.3, momentum=0.2, num_classes=2, nudging=nudging)
    W, b = _weights(blocks)
    x0 = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    trace = eng.infer(x0, y)
    loss = eng.learning_loss(trace)
    loss.backward()

    x_init = _hand_forward(W, b, x0)
    node = node_of(x_init[3], F.one_hot(y, 2).double())
    states = _hand_inference(W, b, x0, node, torch.tensor(PI_ROWS, dtype=torch.float64), 0.3, 0.2)
    torch.testing.assert_close(trace.states[3], node, rtol=0, atol=1e-12)
    for l in (1, 2):
        torch.testing.assert_close(trace.states[l], states[l], rtol=0, atol=1e-12)
    hand_loss, hand_grads = _hand_weight_grads(W, b, states, x_init, LEARN, update, scale)
    torch.testing.assert_close(loss.detach(), hand_loss, rtol=1e-12, atol=0)
    for got, expected in zip([p.grad for p in blocks.parameters()], hand_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("update", ["standard", "forward"])
def test_nudge_inside_the_engine_starts_from_the_initial_prediction(update):
    """x^L = mu^L_0 + beta (y - mu^L_0) with mu^L_0 the initial forward pass's output; inference and the
    weight gradient then follow from that fixed node."""
    _nudged_step_against_the_hand_computation(
        Nudge(NudgeParams(beta=0.3)), update, lambda mu, y: mu + 0.3 * (y - mu), 1.0
    )


@pytest.mark.parametrize("scale_update", [True, False])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_center_nudging_inside_the_engine_scales_the_update_by_the_signed_beta(sign, scale_update):
    """Center nudging with beta = 0.4 and the drawn sign s: x^L = mu^L_0 + s beta (y - mu^L_0); with
    scale_update the weight gradient is divided by s beta, so its sign follows the drawn sign."""
    center = Center(CenterParams(beta=0.4, resample="epoch", scale_update=scale_update))
    epoch = 0
    center.begin_epoch(0, epoch)
    while center.sign != sign:
        epoch += 1
        center.begin_epoch(0, epoch)
    signed = sign * 0.4
    _nudged_step_against_the_hand_computation(
        center, "forward", lambda mu, y: mu + signed * (y - mu), 1.0 / signed if scale_update else 1.0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64_steps_work_and_keep_the_dtype(dtype):
    blocks = tanh_mlp([5, 4, 3], dtype=dtype)
    eng = engine(blocks, Spiking(SpikingParams()).table(2, 3), FWD, lr=0.3, momentum=0.1, num_classes=3)
    out = eng.train_step(torch.randn(4, 5, dtype=dtype), torch.tensor([0, 1, 2, 0]))
    assert out.loss.dtype == dtype and out.energy.shape == (2,)
    assert all(p.grad is not None and p.grad.dtype == dtype for p in blocks.parameters())


def test_engine_hard_codes_no_device():
    """On the meta device every tensor the engine makes must follow the parameters' device: a CPU
    tensor created anywhere in the step would fail to mix with them."""
    with torch.device("meta"):
        blocks = tanh_mlp([5, 4, 3], dtype=torch.float32)
        x0 = torch.empty(4, 5)
        y = torch.zeros(4, dtype=torch.long)
    eng = engine(blocks, Spiking(SpikingParams()).table(2, 3), FWD, lr=0.3, momentum=0.1, num_classes=3)
    out = eng.train_step(x0, y)
    assert out.loss.device.type == "meta" and out.energy.device.type == "meta"
