"""Steps replayed as CUDA graphs (`run.cuda_graphs`): the logic, on the CPU, with a stand-in for CUDA.

The stand-in records the captured function and calls it on replay; what it cannot show is that a real
replay runs no Python, which tests/test_cuda.py checks on a CUDA device. What it does show: warm-up, capture
and replay happen on the right batches, the inputs go through static buffers, a batch of another shape
runs eagerly without disturbing the captured step's buffers, and the per-batch values (the nudging's
sign, the learning rate) reach the step through the host-side hooks, so the run equals a plain eager run.
"""

from __future__ import annotations

import copy

import pytest
import torch

from pccore.core.components import NoParams
from pccore.core.engine import StepOutput
from pccore.core.errors import UsageError
from pccore.core.optim import WarmupCosine, make_optimizer
from pccore.run.graphs import CapturedStep, check_cuda_graphs
from pccore_plugins.architectures import MLP, MLPParams
from pccore_plugins.normalization import BatchNormParams, FrozenBatchNorm
from pccore_plugins.nudging import Center, CenterParams
from pccore_plugins.precision import Spiking, SpikingParams
from pccore_plugins.update import ForwardUpdate
from tests.engine_helpers import engine


class FakeGraphs:
    """Capture records the step without running it; replay runs it and writes into the captured outputs
    (sized at the first replay). Built like CudaGraphs, from a device, which it ignores."""

    def __init__(self, device: torch.device | None = None):
        self.log: list[str] = []

    def warm_up(self, step):
        self.log.append("warm")
        return step()

    def capture(self, step):
        self.log.append("capture")
        out = StepOutput(torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64))
        return (step, out), out

    def replay(self, graph):
        self.log.append("replay")
        step, out = graph
        result = step()
        out.loss.resize_as_(result.loss).copy_(result.loss)
        out.energy.resize_as_(result.energy).copy_(result.energy)


class Section:
    lr = 0.01
    weight_decay = 1e-3


def _setup():
    norm = FrozenBatchNorm(BatchNormParams())
    blocks = torch.nn.ModuleList(MLP(MLPParams(hidden=[7, 6], activation="tanh")).build((5,), 3, norm)).double()
    nudging = Center(CenterParams(beta=0.4, resample="batch", scale_update=True))
    eng = engine(blocks, Spiking(SpikingParams()).table(3, 4), ForwardUpdate(NoParams()), lr=0.3, momentum=0.2,
                 norm=norm, nudging=nudging, num_classes=3)
    optimizer = make_optimizer(blocks.parameters(), Section, for_graphs=True)
    schedule = WarmupCosine(optimizer, Section.lr, 12, 0.25)
    nudging.begin_epoch(3, 0)
    return blocks, eng, optimizer, schedule


def _batches():
    g = torch.Generator().manual_seed(0)
    sizes = [8] * 7 + [3] + [8] * 2  # a partial batch in the middle, as a resumed epoch's end would be
    return [(torch.randn(n, 5, dtype=torch.float64, generator=g), torch.randint(0, 3, (n,), generator=g))
            for n in sizes]


def test_a_captured_run_equals_the_eager_run_step_for_step():
    blocks, eng, optimizer, schedule = _setup()
    twin_blocks, twin_eng, twin_opt, twin_schedule = _setup()
    twin_blocks.load_state_dict(blocks.state_dict())
    graphs = FakeGraphs()
    step = CapturedStep(eng, optimizer, graphs=graphs, warmup_steps=2)
    for x, y in _batches():
        out = step(x, y)
        schedule.step()
        expected = twin_eng.train_step(x, y)
        twin_opt.step()
        twin_schedule.step()
        assert torch.equal(out.loss, expected.loss) and torch.equal(out.energy, expected.energy)
    for a, b in zip(blocks.state_dict().values(), twin_blocks.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert graphs.log == ["warm", "warm", "capture", *["replay"] * 5, *["replay"] * 2]
    assert (step.replays, step.eager_steps) == (7, 3)


def test_replays_read_their_inputs_from_static_buffers_and_return_fresh_outputs():
    _, eng, optimizer, _ = _setup()
    step = CapturedStep(eng, optimizer, graphs=FakeGraphs(), warmup_steps=0)
    (x1, y1), (x2, y2) = _batches()[:2]
    first = step(x1, y1)
    static_x, static_y = step.static
    assert torch.equal(static_x, x1) and static_x.data_ptr() != x1.data_ptr()
    second = step(x2, y2)
    assert step.static[0] is static_x and torch.equal(static_x, x2) and torch.equal(static_y, y2)
    assert first.loss.data_ptr() != step.outputs.loss.data_ptr()
    assert not torch.equal(first.loss, second.loss)


def test_an_eager_batch_of_another_shape_keeps_the_captured_momentum_buffers():
    _, eng, optimizer, _ = _setup()
    step = CapturedStep(eng, optimizer, graphs=FakeGraphs(), warmup_steps=0)
    batches = _batches()
    step(*batches[0])
    captured = [b.data_ptr() for b in next(iter(eng._buffers.values()))]
    step(*batches[7])  # the batch of 3
    assert len(eng._buffers) == 2
    full = next(v for k, v in eng._buffers.items() if k[0][0][0] == 8)
    assert [b.data_ptr() for b in full] == captured


def test_the_schedule_writes_the_rate_into_the_optimizers_tensor_and_keeps_it_after_loading():
    blocks, _, optimizer, schedule = _setup()
    rate = optimizer.param_groups[0]["lr"]
    assert isinstance(rate, torch.Tensor)
    for _ in range(4):
        schedule.step()
        assert optimizer.param_groups[0]["lr"] is rate and float(rate) == schedule.lr_at(schedule.step_count)
    saved = copy.deepcopy(optimizer.state_dict())
    saved["param_groups"][0]["lr"] = 0.5  # a checkpoint of an eager run holds a number
    optimizer.load_state_dict(saved)
    schedule.load_state_dict(schedule.state_dict())
    assert optimizer.param_groups[0]["lr"] is rate and float(rate) == schedule.current_lr()


def test_a_tensor_rate_trains_exactly_like_a_number():
    """The fused AdamW with the rate in a tensor against the same optimizer with a plain number."""
    torch.manual_seed(1)
    a = torch.nn.Linear(4, 3).double()
    b = copy.deepcopy(a)
    opt_a = make_optimizer(a.parameters(), Section, for_graphs=True)
    opt_b = torch.optim.AdamW(b.parameters(), lr=Section.lr, weight_decay=Section.weight_decay, fused=True)
    sched_a, sched_b = WarmupCosine(opt_a, Section.lr, 6, 0.5), WarmupCosine(opt_b, Section.lr, 6, 0.5)
    for _ in range(6):
        for model, opt, sched in ((a, opt_a, sched_a), (b, opt_b, sched_b)):
            model(torch.ones(2, 4, dtype=torch.float64)).square().sum().backward()
            opt.step()
            opt.zero_grad()
            sched.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


class _Run:
    def __init__(self, cuda_graphs, compile=False):
        self.cuda_graphs, self.compile = cuda_graphs, compile


class _Recipe:
    def __init__(self, cuda_graphs, compile=False):
        self.run = _Run(cuda_graphs, compile)


def test_cuda_graphs_are_refused_off_cuda_and_with_compile():
    check_cuda_graphs(_Recipe(False), torch.device("cpu"))
    with pytest.raises(UsageError, match=r"run.cuda_graphs = true replays the training step as a CUDA graph and "
                                         r"needs a CUDA device, but the run is on cpu"):
        check_cuda_graphs(_Recipe(True), torch.device("cpu"))
    with pytest.raises(UsageError, match="run.cuda_graphs and run.compile cannot be combined"):
        check_cuda_graphs(_Recipe(True, compile=True), torch.device("cuda"))
    with pytest.raises(UsageError, match="data-parallel over 2 processes"):
        check_cuda_graphs(_Recipe(True), torch.device("cuda"), world_size=2)


# --- the training loop ------------------------------------------------------------------------------------


class _RecordingGraphs(FakeGraphs):
    """FakeGraphs that keeps every instance the training loop makes."""

    made: list[_RecordingGraphs] = []

    def __init__(self, device: torch.device):
        super().__init__(device)
        _RecordingGraphs.made.append(self)


def test_pccore_run_replays_full_batches_and_trains_like_the_eager_run(tmp_path, monkeypatch):
    """`run.cuda_graphs = true` in `pccore run`: the loop steps through CapturedStep (warm-up, capture, replays,
    the last partial batch of every epoch eager), and the run (BatchNorm Freezing, center nudging drawn per
    batch, the cosine schedule) ends with the eager run's weights, up to the fused AdamW's rounding."""
    import pccore.run.graphs
    import pccore.run.training
    from pccore.cli import main
    from pccore.run.checkpoint import load_checkpoint
    from tests.test_training import write_recipe

    recipe = write_recipe(
        tmp_path, run_dtype="float64", normalization="frozen", max_batches=0, epochs=2, data_batch_size=100,
        nudging={"name": "center", "beta": 0.5, "resample": "batch"},
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "eager")]) == 0
    monkeypatch.setattr(pccore.run.training, "check_cuda_graphs", lambda *args: None)  # the CPU stands in for CUDA
    monkeypatch.setattr(pccore.run.graphs, "CudaGraphs", _RecordingGraphs)
    _RecordingGraphs.made = []
    assert main(["run", str(recipe), "--out", str(tmp_path / "captured"), "--set", "run.cuda_graphs=true"]) == 0

    (graphs,) = _RecordingGraphs.made
    batches = graphs.log.count("warm") + graphs.log.count("replay") + 2  # + the two eager partial batches
    assert graphs.log[:4] == ["warm", "warm", "warm", "capture"] and graphs.log.count("capture") == 1
    assert batches % 2 == 0 and graphs.log.count("replay") == batches - 5
    eager = load_checkpoint(tmp_path / "eager" / "seed_0" / "checkpoint.pt")["model"]
    captured = load_checkpoint(tmp_path / "captured" / "seed_0" / "checkpoint.pt")["model"]
    assert eager.keys() == captured.keys()
    for name, value in eager.items():
        # fused AdamW (the captured run's) and the default one round differently: ~1e-11 after 30 steps
        torch.testing.assert_close(captured[name], value, rtol=0, atol=1e-9, msg=name)


def test_pccore_run_refuses_cuda_graphs_off_cuda_before_making_a_folder(tmp_path, capsys):
    from pccore.cli import main
    from tests.test_training import write_recipe

    recipe = write_recipe(tmp_path)
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--set", "run.cuda_graphs=true"]) == 2
    assert "run.cuda_graphs = true replays the training step as a CUDA graph" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
