"""Device checks of the engine: no host synchronisation inside a training step or a replayed CUDA graph,
captured steps against eager ones (CUDA only, skipped without a GPU), and bf16 autocast and channels_last
steps whose loss and weight gradients agree with the plain fp32 step (itself checked against fp64), within
tolerances derived from each format's precision (on CUDA, and on the CPU, where bf16 autocast runs too)."""

import copy

import pytest
import torch

from pccore.core.components import NoParams
from pccore.core.engine import PCEngine
from pccore_plugins.architectures import VGG, VGGParams
from pccore_plugins.normalization import BatchNormParams, FrozenBatchNorm
from pccore_plugins.nudging import Clamp
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def _engine(blocks, autocast_dtype=None):
    norm = FrozenBatchNorm(BatchNormParams())
    return PCEngine(blocks, Spiking(SpikingParams()).table(5, 5), ForwardUpdate(NoParams()), norm,
                    Clamp(NoParams()), steps=5, lr=0.8, momentum=0.1, num_classes=10,
                    autocast_dtype=autocast_dtype)


def _blocks(device="cuda"):
    norm = FrozenBatchNorm(BatchNormParams())
    torch.manual_seed(0)
    return torch.nn.ModuleList(VGG("vgg5", VGGParams(width=0.125)).build((3, 32, 32), 10, norm)).to(device)


def _batch(device="cuda"):
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 3, 32, 32, generator=g).to(device), torch.randint(0, 10, (32,), generator=g).to(device)


@needs_cuda
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


BF16_UNIT = 2.0**-8
"""bf16 keeps 8 significant bits: one rounding is off by at most 2^-8 of the value (relative)."""

FP32_TOLERANCE = 1e-2
"""Largest relative error of a block's fp32 gradient against another fp32 (or fp64) computation. One fp32
rounding is off by 2^-24, and sums of thousands of products stay near 1e-6; but where a maxpool window's
two largest inputs differ by less than the rounding, another convolution algorithm can pick the other
one and move a gradient entry (measured on the CPU, fp32 against fp64: 1e-5 typically, up to 5e-3). A
layout or dtype bug gives errors of order 1."""


def _bf16_tolerance(rho: float) -> float:
    """Largest relative error of a block's bf16 gradient. The gradient is driven by the prediction error
    x^l - mu^l, the difference of two values of size ||mu^l|| that bf16 rounds by up to 2^-8 ||mu^l||:
    relative to the error, 2^-8 rho with rho = ||mu^l|| / ||x^l - mu^l|| (hundreds for hidden layers under
    spiking precision, about 1 at the output). Rounding errors of many entries partly cancel: this test's
    step with bf16 autocast on the CPU (same seeds, rho 468 / 404 / 324 / 169 / 0.8) gave 0.096-0.12
    rho 2^-8 for the hidden blocks (relative errors 0.18 / 0.17 / 0.14 / 0.08) and 2.6 roundings at the
    output block. The bound allows twice that: rho / 4, plus 8 roundings along the chain of operations.
    Every block's bound stays under 0.5 (checked), so a zero, sign-flipped or misrouted gradient fails."""
    return BF16_UNIT * (8.0 + rho / 4.0)


@pytest.fixture
def exact_fp32():
    """fp32 convolutions and matmuls in full fp32: by default cuDNN may use TF32 (10-bit mantissa)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _step_grads(blocks, x, y, autocast_dtype=None):
    """One training step; its loss and each block's weight gradient as one float64 vector."""
    out = _engine(blocks, autocast_dtype).train_step(x, y)
    return out.loss, [torch.cat([p.grad.detach().double().flatten() for p in b.parameters()]) for b in blocks]


def _relative_errors(got, reference):
    return [float((g - r).norm() / r.norm()) for g, r in zip(got, reference, strict=True)]


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_and_bf16_steps_agree_with_fp32(exact_fp32, device):
    x, y = _batch(device)
    reference = _blocks(device)
    base_loss, base = _step_grads(copy.deepcopy(reference), x, y)
    f64_loss, f64 = _step_grads(copy.deepcopy(reference).double(), x.double(), y)
    torch.testing.assert_close(base_loss.double(), f64_loss, rtol=1e-4, atol=0)
    assert max(_relative_errors(base, f64)) < FP32_TOLERANCE  # the fp32 reference itself is right

    cl_blocks = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    cl_loss, cl = _step_grads(cl_blocks, x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(cl_loss, base_loss, rtol=1e-4, atol=0)
    assert max(_relative_errors(cl, base)) < FP32_TOLERANCE

    trace = _engine(copy.deepcopy(reference)).infer(x, y)
    mu = [m.detach() for m in trace.initial]
    rho = [float(mu[l].norm() / (trace.states[l].detach() - mu[l]).norm()) for l in range(1, 6)]
    bf16_blocks = copy.deepcopy(reference)
    conv_outputs = []
    bf16_blocks[0][0].register_forward_hook(lambda module, args, out: conv_outputs.append(out.dtype))
    bf16_loss, bf16 = _step_grads(bf16_blocks, x, y, autocast_dtype=torch.bfloat16)
    assert set(conv_outputs) == {torch.bfloat16}  # the convolutions did run in bf16
    assert bf16_loss.dtype == torch.float32
    # the loss is dominated by the output layer's error, where rho ~ 1: 8 roundings
    torch.testing.assert_close(bf16_loss, base_loss, rtol=8 * BF16_UNIT, atol=0)
    for block, (error, r) in enumerate(zip(_relative_errors(bf16, base), rho, strict=True), start=1):
        assert _bf16_tolerance(r) < 0.5, f"block {block}: rho {r:.3g} leaves no meaningful bound"
        assert error < _bf16_tolerance(r), f"block {block}: relative error {error:.3g}, rho {r:.3g}"


# --- steps replayed as CUDA graphs ------------------------------------------------------------------

CAPTURE_TOLERANCE = 1e-5
"""Relative difference allowed between the weights of a captured and an eager run after the same steps.
A replay launches the same kernels as the eager step it recorded, on the same data, so the two runs agree
to the last bit where every kernel is deterministic (cuDNN is made so here); the margin covers the float32
summation order of the few kernels cuDNN may still choose per call (backward-weight convolutions)."""


def _graph_run(captured: bool, steps: int = 7):
    """A VGG5 (width 1/8, BatchNorm Freezing) trained S+F with center nudging resampled per batch and
    dividing the update by the signed beta, and the warmup-cosine schedule: full batches and one partial
    batch, captured or eager. The weights after `steps` batches."""
    from pccore.core.optim import WarmupCosine, make_optimizer
    from pccore.run.graphs import CapturedStep
    from pccore_plugins.nudging import Center, CenterParams

    torch.backends.cudnn.deterministic = True
    blocks = _blocks()
    norm = FrozenBatchNorm(BatchNormParams())
    nudging = Center(CenterParams(beta=0.3, resample="batch", scale_update=True))
    engine = PCEngine(blocks, Spiking(SpikingParams()).table(5, 5), ForwardUpdate(NoParams()), norm, nudging,
                      steps=5, lr=0.8, momentum=0.1, num_classes=10)

    class Section:
        lr, weight_decay = 1e-3, 1e-4

    optimizer = make_optimizer(blocks.parameters(), Section, for_graphs=True)
    schedule = WarmupCosine(optimizer, Section.lr, steps, 0.3)
    nudging.begin_epoch(0, 0)
    step = CapturedStep(engine, optimizer) if captured else None
    g = torch.Generator().manual_seed(2)
    for index in range(steps):
        n = 20 if index == steps - 2 else 32
        x = torch.randn(n, 3, 32, 32, generator=g).cuda()
        y = torch.randint(0, 10, (n,), generator=g).cuda()
        if step is not None:
            step(x, y)
        else:
            engine.train_step(x, y)
            optimizer.step()
        schedule.step()
    torch.cuda.synchronize()
    return blocks.state_dict(), step


@needs_cuda
def test_a_captured_run_trains_like_an_eager_one():
    eager, _ = _graph_run(False)
    captured, step = _graph_run(True)
    assert (step.replays, step.eager_steps) == (3, 4)  # 3 warm-up steps, then replays; the batch of 20 eager
    for name, value in eager.items():
        torch.testing.assert_close(captured[name], value, rtol=CAPTURE_TOLERANCE, atol=1e-7, msg=name)


@needs_cuda
def test_a_replay_does_not_synchronise_with_the_host():
    from pccore.core.optim import make_optimizer
    from pccore.run.graphs import CapturedStep

    blocks = _blocks()
    engine = _engine(blocks)

    class Section:
        lr, weight_decay = 1e-3, 1e-4

    step = CapturedStep(engine, make_optimizer(blocks.parameters(), Section, for_graphs=True), warmup_steps=1)
    x, y = _batch()
    step(x, y)
    step(x, y)  # captured and replayed
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.replays == 2 and torch.isfinite(out.loss).item()
