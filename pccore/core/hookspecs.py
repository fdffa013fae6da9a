"""Hook specifications: one registration hook per kind of component.

Each hook is called once at start-up and returns an iterable of `pccore.Component` records. Nothing calls
pluggy inside the training loop: the core resolves components by name once and calls them directly.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from pccore.core.components import Component

hookspec = pluggy.HookspecMarker("pccore")
hookimpl = pluggy.HookimplMarker("pccore")


@hookspec
def pccore_register_precision() -> Iterable[Component]:
    """Precision schedules: the factory returns an object with `table(layers, steps) -> PrecisionTable`.

    Example::

        @attrs.define
        class FlatParams:
            value: float = 1.0

        class Flat:
            def __init__(self, params): self.value = params.value
            def table(self, layers, steps):
                return PrecisionTable(torch.full((steps, layers), self.value, dtype=torch.float64),
                                      torch.ones(layers, dtype=torch.float64))

        @pccore.hookimpl
        def pccore_register_precision():
            return [pccore.Component("flat", Flat, FlatParams, "every weight equal to `value`")]
    """


@hookspec
def pccore_register_update() -> Iterable[Component]:
    """Weight-update rules: the factory returns an object with `runs_inference`, `initial_graph` and
    `loss(batch: LearningBatch) -> Tensor`.

    Example::

        class LastLayerOnly:
            runs_inference = True
            initial_graph = "none"
            def __init__(self, params): pass
            def loss(self, b):
                L = len(b.blocks)
                mu = b.blocks[L - 1](b.states[L - 1])
                return b.layer_energy(L, b.states[L], mu) / b.batch_size

        @pccore.hookimpl
        def pccore_register_update():
            return [pccore.Component("last_only", LastLayerOnly, description="train the head alone")]
    """


@hookspec
def pccore_register_normalization() -> Iterable[Component]:
    """Normalisation policies: the factory returns an object with `layer(num_features, spatial_dims)`
    (the module to place after a conv or linear layer, or None) and `set_phase(model, phase)`, and
    optionally `pure_inference`, `prepare(model)` (take control of normalisation modules the blocks
    brought themselves, in place) and `shared_buffers(model)` (statistics that data-parallel training
    averages across processes; see `pccore.core.components.NormalizationPolicy`).

    Example::

        class GroupNormPolicy:
            def __init__(self, params): pass
            def layer(self, num_features, spatial_dims):
                return torch.nn.GroupNorm(8, num_features) if spatial_dims == 2 else None
            def set_phase(self, model, phase): pass

        @pccore.hookimpl
        def pccore_register_normalization():
            return [pccore.Component("groupnorm", GroupNormPolicy, description="GroupNorm, 8 groups")]
    """


@hookspec
def pccore_register_nudging() -> Iterable[Component]:
    """Nudging methods: the factory returns an object with `begin_epoch(seed, epoch)` and
    `output_node(prediction, target) -> (x_L, update_scale)`.

    Example::

        class Halfway:
            def __init__(self, params): pass
            def begin_epoch(self, seed, epoch): pass
            def output_node(self, prediction, target):
                return 0.5 * (prediction + target), 1.0

        @pccore.hookimpl
        def pccore_register_nudging():
            return [pccore.Component("halfway", Halfway, description="x_L halfway to the target")]
    """


@hookspec
def pccore_register_inference() -> Iterable[Component]:
    """Inference algorithms, what happens between the initial forward pass and the weight step: the factory
    returns an object with `weight_steps(steps)` and `infer(engine, x0, y, *, record, batch_size,
    weight_step) -> InferenceTrace`, and optionally `check(engine)` (see
    `pccore.core.components.InferenceAlgorithm`). State-based inference is `engine.infer`; with
    `weight_step` it also steps the weights at every inference step (incremental PC).

    Example::

        class TwiceAsLong:
            def __init__(self, params): pass
            def weight_steps(self, steps): return 1
            def infer(self, engine, x0, y, *, record, batch_size, weight_step):
                engine.infer(x0, y)  # settle once, throw the states away, settle again from the new pass
                return engine.infer(x0, y, record=record)

        @pccore.hookimpl
        def pccore_register_inference():
            return [pccore.Component("twice", TwiceAsLong, description="inference run twice")]
    """


@hookspec
def pccore_register_architecture() -> Iterable[Component]:
    """Architectures: the factory returns an object with
    `build(input_shape, num_classes, norm) -> list[nn.Module]`, the blocks f_1..f_L.

    Example::

        @attrs.define
        class LinearParams:
            pass

        class Linear:
            def __init__(self, params): pass
            def build(self, input_shape, num_classes, norm):
                features = math.prod(input_shape)
                return [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, num_classes))]

        @pccore.hookimpl
        def pccore_register_architecture():
            return [pccore.Component("linear", Linear, LinearParams, "one linear layer")]
    """


@hookspec
def pccore_register_dataset() -> Iterable[Component]:
    """Datasets: the factory returns an object with `spec() -> DataSpec` (no disk access) and
    `load() -> ImageData` (raising `pccore.core.errors.DatasetUnavailable` when the data cannot be had).

    Example::

        class Noise:
            def __init__(self, params): pass
            def spec(self):
                return DataSpec((1, 8, 8), 2)
            def load(self):
                x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 2, (64,))
                return ImageData(x, y, x, y, 2, (0.5,), (0.29,))

        @pccore.hookimpl
        def pccore_register_dataset():
            return [pccore.Component("noise", Noise, description="uniform noise, two classes")]
    """
