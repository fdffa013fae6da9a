"""The predictive coding engine: one training step (initial forward pass, inference, learning).

The engine sees only resolved components: a list of blocks, a precision table, an update rule, a
normalisation policy and a nudging object. Nothing in `train_step` synchronises with the host, calls
pluggy, or hard-codes a device: the device and dtype are those of the blocks' parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pccore.core.components import (
    InferenceAlgorithm,
    InferenceSettings,
    LearningBatch,
    NormalizationPolicy,
    Nudging,
    PrecisionTable,
    State,
    UpdateRule,
    WeightStep,
)
from pccore.core.plan import StepPlan, make_plan
from pccore.core.states import HalfSquaredError, WeightMoves, map_state, parts, settle, sgd_step, unaliased


class StepOutput(NamedTuple):
    """Detached results of one step: the weight loss, and per-layer energies ([L], summed over the batch
    and divided by the batch size the step averages over) of the last inference step (of the output loss
    alone without inference)."""

    loss: torch.Tensor
    energy: torch.Tensor


class InferenceTrace(NamedTuple):
    """What `PCEngine.infer` returns: states x^0..x^L after inference, the initial predictions mu_0 (index
    0 is the input), per-step energies [T, L] when recorded (zero below the wavefront), the energies of the
    last step [L], the update scale, and the one-hot target. A multi-part layer's state is a tuple; when
    energies are recorded for a model with such layers, `part_energies` [T, L, P] holds each part's weighted
    energy (P the most parts of any layer; a single-tensor layer's energy is part 0). `learn`: whether the
    update rule still learns from the trace (False when the weights already stepped during inference)."""

    states: list[State]
    initial: list[State]
    energies: torch.Tensor | None
    final_energy: torch.Tensor | None
    scale: float
    target: torch.Tensor
    part_energies: torch.Tensor | None = None
    learn: bool = True


class PCEngine:
    """Runs predictive coding training steps on `blocks` f_1..f_L.

    Internally the latent states x^1..x^{L-1} are one flat list of tensors, the parts of each layer in
    order (one per single-tensor layer), so the autograd call and the SGD step of an inference step treat
    multi-part layers exactly like single-tensor ones.

    `algorithm` (an `InferenceAlgorithm` component) decides what happens between the initial pass and the
    weight step; without one the engine runs its own state-based inference (`infer`).
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        table: PrecisionTable,
        update: UpdateRule,
        norm: NormalizationPolicy,
        nudging: Nudging,
        *,
        steps: int,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = True,
        decay_last_lr: bool = False,
        output_energy: str = "se",
        num_classes: int,
        autocast_dtype: torch.dtype | None = None,
        skip_below: float = 0.0,
        algorithm: InferenceAlgorithm | None = None,
    ):
        self.model = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        self.blocks = list(self.model)
        self.L = len(self.blocks)
        if table.layers != self.L or table.steps != steps:
            raise ValueError(
                f"precision table is {table.steps}x{table.layers}, the model needs {steps}x{self.L}"
            )
        self.T = steps
        self.update = update
        self.norm = norm
        self.nudging = nudging
        self.momentum = momentum
        self.nesterov = nesterov
        self.decay_last_lr = decay_last_lr
        self.output_energy = output_energy
        self.num_classes = num_classes
        self.autocast_dtype = autocast_dtype
        ref = next(self.model.parameters())
        self.device, self.dtype = ref.device, ref.dtype
        self.table = table
        self.settings = InferenceSettings(lr=lr, momentum=momentum, steps=steps)
        # part_weights[l]: None for a single-tensor layer l (1-based; index 0 is the input), else the
        # energy weight of each part of its state, as its block declares.
        self.part_weights: list[tuple[float, ...] | None] = [None] + [
            self._declared_weights(l) for l in range(1, self.L + 1)
        ]
        if self.part_weights[self.L] is not None:
            raise ValueError("the last block must predict one tensor (the logits), not a tuple of parts")
        counts = [1 if w is None else len(w) for w in self.part_weights]
        # The flat latent list: layer l's parts are latent[offset[l] : offset[l + 1]] (l = 1..L-1).
        self._offset = [0, 0]
        for l in range(1, self.L):
            self._offset.append(self._offset[-1] + counts[l])
        if not skip_below >= 0.0:
            raise ValueError(f"skip_below must be zero or positive, got {skip_below}")
        self.skip_below = skip_below
        # Weights under skip_below count as zero (an explicit approximation; 0 keeps the table exact).
        inference = table.inference.masked_fill(table.inference.abs() < skip_below, 0.0)
        self._pi = [list(row.unbind()) for row in inference.to(self.device, self.dtype)]
        self._pi_learn = table.learning.to(self.device, self.dtype)
        self._lrs = [self._flat_lrs(self._step_lrs(t, lr, decay_last_lr)) for t in range(self.T)]
        self._buffers: dict[tuple, list[torch.Tensor]] = {}
        weighted = [[bool(w != 0.0) for w in row] for row in inference.tolist()]
        self.plan = self._make_plan(weighted)
        """The steps as run: zero weights skipped."""
        self.recording_plan = self._make_plan([[True] * self.L] * self.T)
        """Every layer within the wavefront at every step (same states; used when energies are recorded)."""
        # Blocks whose initial-pass graph carries a pullback: their detached inputs must require grad.
        self._graph_inputs = frozenset(l for p in (*self.plan, *self.recording_plan) for l in p.reuse if l >= 2)
        self._weighted = weighted
        self._joint_plans: dict[tuple[int, bool], list[StepPlan]] = {}
        self.algorithm = algorithm
        self.weight_steps_per_batch = 1 if algorithm is None else int(algorithm.weight_steps(steps))
        """Weight steps one batch takes (the learning-rate schedule counts them)."""
        check = getattr(algorithm, "check", None)
        if check is not None:
            check(self)

    def _make_plan(self, weighted: list[list[bool]], moving_weights: bool = False) -> list[StepPlan]:
        """The step plan (`pccore.core.plan`) of this engine for a zero pattern of the precision table;
        `moving_weights` while the weights step during inference."""
        return make_plan(
            weighted,
            moving_weights=moving_weights,
            pure_inference=bool(getattr(self.norm, "pure_inference", False)),
            local_graph=self.update.initial_graph == "local",
            momentum=self.momentum,
            nesterov=self.nesterov,
            offsets=self._offset,
            lrs=self._lrs,
        )

    def _declared_weights(self, l: int) -> tuple[float, ...] | None:
        declare = getattr(self.blocks[l - 1], "part_weights", None)
        if declare is None:
            return None
        weights = tuple(float(w) for w in declare(self.settings))
        if len(weights) < 2:
            raise ValueError(f"block {l} declares {len(weights)} part weight(s); a multi-part layer has >= 2")
        return weights

    def _step_lrs(self, t: int, lr: float, decay_last_lr: bool) -> list[float]:
        """State learning rate of each latent layer 1..L-1 at step t. The paper's appendix decays the last
        hidden layer's rate "as lr_x ** t"; with t counted from 0 that would be a rate of 1 at the first
        step, so the step is counted from 1: lr ** (t + 1), i.e. lr at the first step."""
        rates = [lr] * (self.L - 1)
        if decay_last_lr and rates:
            rates[-1] = lr ** (t + 1)
        return rates

    def _flat_lrs(self, rates: list[float]) -> list[float]:
        """Per-layer rates repeated for each part of the layer, in the flat latent order."""
        return [rates[l - 1] for l in range(1, self.L) for _ in range(self._offset[l + 1] - self._offset[l])]

    # --- pieces --------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # No cache of casted weights: a step captured as a CUDA graph must not keep casts across steps.
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def layer_energy(self, layer: int, x: State, mu: State) -> torch.Tensor:
        """Energy of layer `layer` (1-based), summed over the batch: 1/2 ||x - mu||^2, or the
        cross-entropy of the logits mu against x at the output when the output energy is "ce". A
        multi-part layer sums its parts' squared errors, each times the part's weight."""
        if self.part_weights[layer] is not None:
            return sum(self.part_energies(layer, x, mu))
        mu = mu.to(x.dtype)
        if layer == self.L and self.output_energy == "ce":
            return -(x * F.log_softmax(mu, dim=-1)).sum()
        return HalfSquaredError.apply(x, mu)

    def part_energies(self, layer: int, x: State, mu: State) -> list[torch.Tensor]:
        """Each part's energy times its weight, summed over the batch; a single-tensor layer's energy is
        its one part."""
        weights = self.part_weights[layer]
        if weights is None:
            return [self.layer_energy(layer, x, mu)]
        return [w * HalfSquaredError.apply(xp, mp.to(xp.dtype)) for w, xp, mp in zip(weights, x, mu, strict=True)]

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(self.dtype)

    def _initial_pass(
        self, x0: torch.Tensor, keep: frozenset[int] = frozenset()
    ) -> tuple[list[State], list[State | None]]:
        """mu_0 for every layer, with the graph the update rule asked for (and a per-block graph, input
        detached, for the blocks in `keep` whatever the rule), and the (detached) input each block saw where
        inference will pull back through that block's initial graph (else None)."""
        mode = self.update.initial_graph
        self.norm.set_phase(self.model, "forward" if mode == "none" else "learning")
        mu: list[State] = [x0]
        inputs: list[State | None] = [None] * (self.L + 1)
        with self._autocast():
            for l, block in enumerate(self.blocks, start=1):
                inp = mu[-1]
                local = mode == "local" or l in keep
                if local:
                    inp = map_state(torch.Tensor.detach, inp)
                    if l in self._graph_inputs or (l in keep and l >= 2):
                        inp = map_state(lambda t: t.requires_grad_(True), inp)
                        inputs[l] = inp
                with torch.enable_grad() if mode != "none" or local else torch.no_grad():
                    out = block(inp)
                self._check_structure(l, out)
                mu.append(out)
        return mu, inputs

    def _check_structure(self, l: int, prediction: State) -> None:
        """A block must predict the structure its layer declares (one tensor, or one tensor per weight)."""
        weights = self.part_weights[l]
        if weights is None and isinstance(prediction, torch.Tensor):
            return
        if weights is not None and isinstance(prediction, tuple) and len(prediction) == len(weights):
            return
        got = f"a tuple of {len(prediction)}" if isinstance(prediction, tuple) else type(prediction).__name__
        wanted = "one tensor" if weights is None else f"a tuple of {len(weights)} tensors (its part_weights)"
        raise TypeError(f"block {l} returned {got}, but its layer needs {wanted}")

    def _momentum_buffers(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Momentum buffers for the states, one set per batch shape, kept from batch to batch (a captured
        step's buffers must outlive the eager step of a last, smaller batch). Their contents do not
        matter: a state's first SGD step of a batch overwrites its buffer."""
        key = tuple((s.shape, s.dtype, s.device) for s in states)
        if key not in self._buffers:
            self._buffers[key] = [torch.empty_like(s) for s in states]
        return self._buffers[key]

    # --- inference -----------------------------------------------------------------------------

    def infer(
        self, x0: torch.Tensor, y: torch.Tensor, *, record: bool = False, weight_step: WeightStep | None = None,
        batch_size: int | None = None, steps: int | None = None,
    ) -> InferenceTrace:
        """Initial forward pass, output node from the nudging method, then T inference steps (the first
        `steps` of them when given). With `record`, every block within the wavefront is evaluated at every
        step (zero weights included) so that every energy is known; the states are the same.

        With `weight_step`, the weights move too (incremental PC): each step's one autograd call also
        gives the gradient of the step's energy E_t with respect to the weights of its active blocks,
        averaged over `batch_size` samples and times the nudging method's update scale; it goes into
        `.grad` (None for the other blocks) and `weight_step(stoppable=True)` steps the weights."""
        L = self.L
        T = self.T if steps is None else steps
        if not 0 <= T <= self.T:
            raise ValueError(f"steps must be in 0..{self.T}, got {steps}")
        joint_plan = self._joint_plan(T, record) if weight_step is not None else None
        # While the weights move, a block predicts from its initial graph (weights included) until it has
        # been active once; the initial pass keeps exactly those blocks' graphs.
        keep = frozenset(l for p in joint_plan for l in p.reuse) if joint_plan else frozenset()
        initial, inputs = self._initial_pass(x0, keep)
        target = self.one_hot(y)
        out_node, scale = self.nudging.output_node(initial[L].detach().to(self.dtype), target)
        layers = [
            map_state(lambda mu: mu.detach().to(self.dtype).clone().requires_grad_(True), mu) for mu in initial[1:L]
        ]
        latent = [p for state in layers for p in parts(state)]
        states = [x0, *layers, out_node]
        energies = torch.zeros(T, L, device=self.device, dtype=self.dtype) if record else None
        most = max(1 if w is None else len(w) for w in self.part_weights)
        part_energies = (
            torch.zeros(T, L, most, device=self.device, dtype=self.dtype) if record and most > 1 else None
        )
        if not self.update.runs_inference or T == 0 or L == 1:
            return InferenceTrace(states, initial, energies, None, scale, target, part_energies)

        buffers = self._momentum_buffers(latent)
        self.norm.set_phase(self.model, "inference")
        joint = None
        if weight_step is not None:
            total = x0.shape[0] if batch_size is None else batch_size
            joint = WeightMoves(self.blocks, weight_step, scale, total)
            plan = joint_plan
        else:
            plan = self.recording_plan if record else self.plan
        # Without weight steps inference needs gradients for the states only; frozen parameters keep
        # autograd (and compiled backward graphs, which would otherwise compute every input's gradient)
        # from making weight gradients.
        params = [p for p in self.model.parameters() if p.requires_grad] if joint is None else []
        for p in params:
            p.requires_grad_(False)
        try:
            final = self._inference_steps(plan, states, latent, initial, inputs, buffers, energies, part_energies,
                                          joint)
        finally:
            for p in params:
                p.requires_grad_(True)
        return InferenceTrace(states, initial, energies, final, scale, target, part_energies)

    def _joint_plan(self, steps: int, record: bool) -> list[StepPlan]:
        """The plan of `steps` steps while the weights move: every active block called at every step."""
        key = (steps, record)
        if key not in self._joint_plans:
            weighted = [[True] * self.L] * steps if record else self._weighted[:steps]
            self._joint_plans[key] = self._make_plan(weighted, moving_weights=True)
        return self._joint_plans[key]

    def _inference_steps(self, plan, states, latent, initial, inputs, buffers, energies, part_energies, joint=None):
        """The steps of `plan`, updating `latent` (and so `states`) in place, and the weights with `joint`;
        returns each layer's energy [L] at the last step that evaluated it (0 for a layer no step
        evaluated)."""
        L = self.L
        final: list[torch.Tensor | None] = [None] * L  # each layer's energy at its last evaluation
        flat = [list(range(self._offset[k], self._offset[k + 1])) for k in range(L)]  # layer k's flat indices
        with torch.enable_grad():
            for t, step in enumerate(plan):
                preds = self._predictions(step, states, initial)
                werr = {l: self._weighted_error(l, states[l], preds[l], self._pi[t][l - 1]) for l in step.active}
                directions = self._descent_directions(step, states, preds, inputs, werr, flat, joint)
                if energies is not None:
                    energies[t, step.first - 1 :] = self._energies(states, preds, range(step.first, L + 1))
                if part_energies is not None:
                    self._record_parts(part_energies[t], step.first, states, preds)
                if step.final:
                    for l, e in zip(step.final, self._energies(states, preds, step.final), strict=True):
                        final[l - 1] = e
                self._move_states(t, step, latent, buffers, directions, flat)
                if joint is not None:
                    joint.step()
                del preds, werr, directions  # free this step's graph before the next
        zero = torch.zeros((), device=self.device, dtype=self.dtype)
        return torch.stack([zero if e is None else e for e in final])

    def _predictions(self, step: StepPlan, states: list[State], initial: list[State]) -> dict[int, State]:
        """mu^l = f_l(x^{l-1}) of the step's active layers: computed, or mu^l_0 where the input has not
        moved yet (layer 1's input never moves)."""
        preds: dict[int, State] = {}
        with self._autocast():
            for l in step.evaluate:
                preds[l] = self.blocks[l - 1](states[l - 1])
        for l in step.reuse:  # layer 1 keeps its graph only while the weights move (for their gradient)
            keeps_graph = parts(initial[l])[0].requires_grad
            preds[l] = initial[l] if l >= 2 or keeps_graph else map_state(torch.Tensor.detach, initial[1])
        return preds

    def _descent_directions(self, step: StepPlan, states, preds, inputs, werr, flat, joint=None) -> list[torch.Tensor]:
        """-dE_t/dx of every latent part the step moves, in one autograd call for all layers: the weighted
        error pi_l (x^l - mu^l) of each active layer above, pulled back through its block (or through its
        initial graph), minus the layer's own weighted error. With `joint` the same call also pulls every
        active layer's weighted error back into its block's weights, which `joint` keeps as -dE_t/dtheta."""
        outputs, seeds, sources = [], [], []
        pulled_layers = step.active if joint is not None else step.pulled
        for l in pulled_layers:
            for mu, e in zip(parts(preds[l]), parts(werr[l]), strict=True):
                outputs.append(mu)
                seeds.append(e.to(mu.dtype))
            if l >= 2:
                sources += parts(inputs[l]) if l in step.reuse else parts(states[l - 1])
        weights = joint.take(step.active) if joint is not None else []
        pulled = unaliased(torch.autograd.grad(
            outputs, sources + weights, seeds, retain_graph=bool(step.reuse), allow_unused=True,
            materialize_grads=True,
        ), seeds) if outputs else []
        if weights:
            joint.found(pulled[len(sources):])
            pulled = pulled[: len(sources)]
        directions: list[torch.Tensor] = []
        for k in step.grad:
            own = parts(werr[k]) if k in werr else None
            if k + 1 in werr:
                back, pulled = pulled[: len(flat[k])], pulled[len(flat[k]) :]
                directions += back if own is None else [b.sub_(e) for b, e in zip(back, own, strict=True)]
            else:
                directions += [torch.neg(e) for e in own]
        return directions

    @torch.no_grad()
    def _move_states(self, t: int, step: StepPlan, latent, buffers, directions, flat) -> None:
        """The step's SGD update of the states it moves, then the settled coasting of those it leaves."""
        moving = [i for k in step.grad for i in flat[k]]
        fresh = {i for k in step.fresh for i in flat[k]}
        sgd_step([latent[i] for i in moving], directions, [buffers[i] for i in moving],
                 [self._lrs[t][i] for i in moving], self.momentum, self.nesterov, [i in fresh for i in moving])
        if step.settle:
            index, totals, decays = zip(*step.settle, strict=True)
            settle([latent[i] for i in index], [buffers[i] for i in index], totals, decays)

    @torch.no_grad()
    def _record_parts(self, row: torch.Tensor, first: int, states, preds) -> None:
        """Each part's weighted energy of the layers from `first` up into `row` [L, P] (recording only)."""
        for l in range(first, self.L + 1):
            for p, e in enumerate(self.part_energies(l, states[l], preds[l])):
                row[l - 1, p] = e

    @torch.no_grad()
    def _weighted_error(self, layer: int, x: State, pred: State, weight: torch.Tensor) -> State:
        """-d(weight * e_layer)/d(prediction) in the states' dtype: weight * (x - mu) for squared error
        (times the part's weight for each part of a multi-part layer), weight * (x - softmax(mu) * sum(x))
        for cross-entropy at the output."""
        weights = self.part_weights[layer]
        if weights is not None:
            return tuple(
                torch.sub(xp, mp.to(xp.dtype)).mul_(weight * w) for w, xp, mp in zip(weights, x, pred, strict=True)
            )
        if layer == self.L and self.output_energy == "ce":
            p = torch.softmax(pred.to(x.dtype), dim=-1)
            return (x - p * x.sum(dim=-1, keepdim=True)).mul_(weight)
        return torch.sub(x, pred.to(x.dtype)).mul_(weight)

    @torch.no_grad()
    def _energies(self, states, preds, layers) -> torch.Tensor:
        """Energies (summed over the batch) of the given layers' predictions."""
        return torch.stack([self.layer_energy(l, states[l], preds[l]) for l in layers])

    # --- training ------------------------------------------------------------------------------

    def learning_loss(self, trace: InferenceTrace, batch_size: int | None = None) -> torch.Tensor:
        """The update rule's loss (scaled by the nudging factor) for a finished inference trace, averaged
        over `batch_size` samples (default: the trace's own; data-parallel training gives the global batch,
        so that each rank's loss is its share of the global mean)."""
        if self.update.initial_graph == "none":
            self.norm.set_phase(self.model, "learning")
        states = [map_state(torch.Tensor.detach, s) for s in trace.states]
        batch = LearningBatch(
            blocks=self.blocks,
            states=states,
            initial=trace.initial,
            precision=self._pi_learn,
            target=trace.target,
            layer_energy=self.layer_energy,
            batch_size=states[0].shape[0] if batch_size is None else batch_size,
        )
        with self._autocast():
            loss = self.update.loss(batch)
        scale = trace.scale  # a tensor scale is applied as is: comparing it would wait for the device
        return loss * scale if isinstance(scale, torch.Tensor) or scale != 1.0 else loss

    def prepare_batch(self) -> None:
        """The host-side work before a step: the nudging method's per-batch draws. `train_step` calls it;
        a step replayed as a CUDA graph calls it before each replay and then runs `device_step` only."""
        begin = getattr(self.nudging, "begin_batch", None)
        if begin is not None:
            begin()

    def train_step(
        self, x0: torch.Tensor, y: torch.Tensor, batch_size: int | None = None, weight_step: WeightStep | None = None,
    ) -> StepOutput:
        """One batch: inference, then the weight gradients into `.grad`, and with `weight_step` the weight
        step (without it, the caller steps its optimizer). An inference algorithm that steps the weights
        during inference (incremental PC) needs `weight_step`.

        `batch_size` is the number of samples the loss and the energies are averaged over: by default the
        batch's own; in data-parallel training the global batch this shard is part of, so that the ranks'
        losses, energies and gradients add up to those of the whole batch."""
        self.prepare_batch()
        return self.device_step(x0, y, batch_size, weight_step)

    def settle(
        self, x0: torch.Tensor, y: torch.Tensor, *, record: bool = False, batch_size: int | None = None,
        weight_step: WeightStep | None = None,
    ) -> InferenceTrace:
        """The batch's inference by the engine's algorithm (state-based inference without one)."""
        total = x0.shape[0] if batch_size is None else batch_size
        if self.algorithm is None:
            return self.infer(x0, y, record=record)
        return self.algorithm.infer(self, x0, y, record=record, batch_size=total, weight_step=weight_step)

    def device_step(
        self, x0: torch.Tensor, y: torch.Tensor, batch_size: int | None = None, weight_step: WeightStep | None = None,
    ) -> StepOutput:
        """`train_step` without `prepare_batch`: only device work, no host synchronisation, so it can be
        captured as a CUDA graph (without `weight_step`, with an algorithm that learns after inference)."""
        if not self.model.training:
            self.model.train()
        total = x0.shape[0] if batch_size is None else batch_size
        trace = self.settle(x0, y, batch_size=total, weight_step=weight_step)
        if trace.final_energy is not None:
            energy = trace.final_energy
        else:
            energy = torch.zeros(self.L, device=self.device, dtype=self.dtype)
            energy[-1] = self.layer_energy(self.L, trace.states[-1], trace.initial[-1].detach())
        if not trace.learn:  # the weights learnt during inference: the loss is the last step's energy
            return StepOutput(energy.sum().detach() / total, energy / total)
        loss = self.learning_loss(trace, total)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        for p in trainable:
            p.grad = None
        # Only the weights: the initial graph's inputs may require grad (for inference's pullbacks).
        torch.autograd.backward(loss, inputs=trainable)
        if weight_step is not None:
            weight_step()
        return StepOutput(loss.detach(), energy / total)

    @torch.no_grad()
    def predict(self, x0: torch.Tensor) -> torch.Tensor:
        """Logits of the feed-forward pass in evaluation mode (BatchNorm uses running statistics)."""
        was_training = self.model.training
        self.model.eval()
        with self._autocast():
            h = x0
            for block in self.blocks:
                h = block(h)
        self.model.train(was_training)
        return h

