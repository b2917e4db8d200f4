"""A decoder as the engine's workload: each stage's real NumPy passes over a run of decoder layers.

``DecoderWorkload`` implements ``pipesched.compute.Workload`` for a
``DecoderModel`` split into stages (runs of its layers: embedding, blocks,
final norm, output layer), so every schedule the engine runs on the MLP runs
on a decoder too, with the same exactness check: the summed micro-batch
gradients equal one unpartitioned full-batch pass. What a stage holds for a
micro-batch is every array its layers keep (each layer keeps its own input,
so the stage input is among them), and on the last stage the logits, which
the loss's backward needs; after an I, every array the layers' W still needs.
Tied weights (a tied embedding and output layer, on two devices) accumulate
their gradients apart, as the two devices would, and are summed in
``model_gradients``, where the engine's all-reduce of a replicated stage is
summed too; ``ties`` states the pair (its stages and the matrix's bytes), so
the engine sends that sum over the links as Megatron-LM does.

``pipesched run --model`` builds one (``pipesched.pipeline``); the cost
model reads each layer's forward FLOPs through ``layers``
(``forward_flops(rows)``, rows being sequences of ``seq_len`` tokens).

>>> from pipesched.decoder import DecoderModel, make_tokens, preset
>>> from pipesched.cost import UnitCost
>>> from pipesched.engine import simulate
>>> from pipesched.schedule import Schedule
>>> model = DecoderModel.from_config(preset("tiny-gpt"), seed=0)
>>> inputs, labels = make_tokens(model.config, batch=4, seq_len=8)
>>> stages = (range(0, 5), range(5, len(model.layers)))
>>> work = DecoderWorkload(model, stages, inputs, labels, [slice(0, 2), slice(2, 4)])
>>> trace = simulate(Schedule.parse(["0F0 0F1 0B1 0B0", "1F0 1F1 1B1 1B0"]), work, UnitCost())
>>> error = grad_rel_err(work.model_gradients(), full_batch_gradients(model, inputs, labels)[1])
>>> bool(error < 1e-12), trace.makespan
(True, 9.0)
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from ..compute import Buffer, Held
from . import accounting as acc
from . import model as dm
from .layers import Arrays, DecoderLayer, cross_entropy
from .model import DecoderModel, full_batch_gradients
from .tensor import WHOLE, Split, padded_vocab

__all__ = ["CostedLayer", "DecoderWorkload", "DecoderShapeWorkload", "grad_rel_err", "full_batch_gradients"]


class CostedLayer(NamedTuple):
    """A decoder layer at one sequence length, as the cost model and the balancer read it (rows are sequences).

    It exposes what ``pipesched.balance.layer_graph`` reads of a layer
    (``GraphLayer``): forward FLOPs, parameters, the bytes it keeps for
    backward and its output, each from ``accounting``'s closed forms.
    """

    layer: DecoderLayer
    seq_len: int

    def forward_flops(self, rows: int) -> int:
        return self.layer.flops(rows, self.seq_len).forward

    @property
    def param_count(self) -> int:
        return self.layer.param_count

    @property
    def needs_output(self) -> bool:
        return False  # every decoder layer's backward needs only what it kept (its input among them)

    def kept_bytes(self, rows: int, itemsize: int) -> int:
        return self.layer.kept_bytes(rows, self.seq_len, itemsize)

    def output_bytes(self, rows: int, itemsize: int) -> int:
        return self.layer.output_bytes(rows, self.seq_len, itemsize)

    def __str__(self) -> str:
        return str(self.layer)


def _arrays(dicts: Sequence[Arrays]) -> list[np.ndarray]:
    """Every array of a run of layers' dicts, for memory accounting (counted by reference, so once each)."""
    return [array for d in dicts for array in d.values()]


class _DecoderStages:
    """What both decoder workloads know: each stage's layers, micro-batch sizes, the sequence length."""

    def __init__(
        self,
        layers: Sequence[DecoderLayer],
        stages: Sequence[range],
        rows: Sequence[int],
        seq_len: int,
        itemsize: int = 8,
        state_bytes: int = 0,
        split: Split = WHOLE,
    ):
        self.stages = tuple(stages)
        self.split = split  # one device's share of each layer under tensor parallelism (pipesched.decoder.tensor)
        self.itemsize = itemsize  # bytes per element in the training precision (pipesched.precision)
        self.state_bytes = state_bytes  # optimizer state per parameter (pipesched.optimizer)
        self.seq_len = seq_len
        self.layers = tuple(tuple(CostedLayer(layers[i], seq_len) for i in r) for r in self.stages)
        self.rows = list(rows)
        self._layers = [[layers[i] for i in r] for r in self.stages]
        self._chain = tuple(layers)
        # _sizes depends on the stage and the micro-batch's rows alone, and the engine asks it several times per
        # action: computed once per pair (a third of a shape-only plan's time before)
        self._sized: dict[tuple[int, int], tuple[int, int, int, int, int, int]] = {}
        self._params_held: dict[int, int] = {}

    def _param_count(self, stage: int) -> int:
        """Parameters one device of ``stage`` holds: its share under tensor parallelism."""
        if stage not in self._params_held:  # asked per device and per collective: counted once
            self._params_held[stage] = sum(self.split.param_count(layer) for layer in self._layers[stage])
        return self._params_held[stage]

    def param_bytes(self, stage: int) -> int:
        return self._param_count(stage) * self.itemsize

    def optimizer_bytes(self, stage: int) -> int:
        return self._param_count(stage) * self.state_bytes

    def undivided(self) -> _DecoderStages:
        """The same stages and micro-batches on one device: no tensor or sequence parallelism to divide them."""
        return _DecoderStages(self._chain, self.stages, self.rows, self.seq_len, self.itemsize, self.state_bytes)

    def microbatch_bytes(self, stage: int, mb: int) -> int:
        """Bytes one device keeps for micro-batch ``mb`` of ``stage`` from its F to its B, without recompute:
        the stage input, the kept arrays and, on the last stage, the logits (``pipesched.division``)."""
        x, reused, private, out, _, _ = self._sizes(stage, mb)
        return x + reused + private + (out if self._last(stage) else 0)

    def _last(self, stage: int) -> bool:
        return stage == len(self.stages) - 1

    @property
    def ties(self) -> tuple[tuple[int, int, int], ...]:
        """The tied embedding/output pair as (first stage, last stage, bytes of the vocab x hidden matrix).

        The engine all-reduces these bytes between the devices holding the two
        stages (``pipesched.engine``); an untied model has none.
        """
        config = self._layers[0][0].config  # the embedding's: it states whether the output layer shares it
        if not config.tie_embeddings:
            return ()
        vocab = padded_vocab(config.vocab_size, self.split.tensor_parallel) // self.split.tensor_parallel
        return ((0, len(self.stages) - 1, vocab * config.hidden_size * self.itemsize),)

    def _sizes(self, stage: int, mb: int) -> tuple[int, int, int, int, int, int]:
        """(input, reused beyond the input, kept beyond those, output, new in I, gradient arriving) bytes.

        Each is one device's share (``split``), except the stage input and a
        gradient sent back, which cross a stage boundary whole; the input's
        own share is what the reused bytes beyond it leave out.
        """
        key = (stage, self.rows[mb])
        if key not in self._sized:
            self._sized[key] = self._compute_sizes(stage, self.rows[mb])
        return self._sized[key]

    def _compute_sizes(self, stage: int, b: int) -> tuple[int, int, int, int, int, int]:
        s, size, layers, split = self.seq_len, self.itemsize, self._layers[stage], self.split
        first, last = layers[0], layers[-1]
        # the stage input: int64 token ids (in any precision), or activations
        x = b * s * acc.TOKEN_ID_BYTES if stage == 0 else b * s * first.config.hidden_size * size
        share = split.input_bytes(first, b, s, size)
        reused = sum(split.reused_bytes(layer, b, s, size) for layer in layers)
        kept = sum(split.kept_bytes(layer, b, s, size) for layer in layers)
        deferred = sum(split.deferred_bytes(layer, b, s, size) for layer in layers)
        out_share = split.output_bytes(last, b, s, size)
        out = out_share if self._last(stage) else last.output_bytes(b, s, size)  # the logits' share, or a send
        return x, reused - share, kept - reused, out, deferred - reused - out_share, out


class DecoderWorkload(_DecoderStages):
    """Real NumPy passes of a decoder's stages over the micro-batches ``slices`` of ``inputs``.

    Args:
        model: the decoder and its parameters.
        stages: per stage, the run of layer indices it holds (they cover the model in order).
        inputs, labels: (batch, seq_len) token ids; labels are the next tokens.
        slices: the micro-batches, as slices of the batch.
    """

    def __init__(
        self,
        model: DecoderModel,
        stages: Sequence[range],
        inputs: np.ndarray,
        labels: np.ndarray,
        slices: Sequence[slice],
        itemsize: int = 8,
        state_bytes: int = 0,
        split: Split = WHOLE,
    ):
        rows = [s.stop - s.start for s in slices]
        super().__init__(model.layers, stages, rows, inputs.shape[1], itemsize, state_bytes, split)
        self.model = model
        self.inputs, self.labels, self.slices = inputs, labels, list(slices)
        self.scale = 1.0 / labels.size  # per token of the whole batch: micro-batch gradients add up
        self.loss = 0.0
        self.grads: dict[tuple[int, int], list[Arrays]] = {}
        self._params = [[model.params[i] for i in r] for r in self.stages]
        self._kept: dict[tuple[int, int], list[Arrays]] = {}  # the structure of what a Held holds
        self._deferred: dict[tuple[int, int], list[Arrays]] = {}
        self._logits: dict[tuple[int, int], np.ndarray] = {}  # under tensor parallelism, held apart (see _hold)

    def forward(self, stage: int, mb: int, x: Any, keep: bool) -> tuple[Any, Held]:
        if x is None:
            x = self.inputs[self.slices[mb]]
        y, kept = dm.forward(self._layers[stage], self._params[stage], x)
        if self._last(stage):
            self.loss += cross_entropy(y, self.labels[self.slices[mb]], self.scale, grad=False)[0]
        if not keep:
            return y, Held([x], remat=True)
        return y, self._hold(stage, mb, kept, y)

    def _hold(self, stage: int, mb: int, kept: list[Arrays], y: np.ndarray) -> Held:
        self._kept[(stage, mb)] = kept
        if self.split.tensor_parallel > 1:
            # NumPy computes the whole stage, but one device of the group holds its share: the memory count
            # holds stand-ins of the shape-only workload's sizes beside the stage input itself, and the arrays
            # stay here, the logits too (the loss's backward reads them)
            x = kept[0]["ids" if stage == 0 else "x"]
            _, reused, private, out, _, _ = self._sizes(stage, mb)
            if self._last(stage):
                self._logits[(stage, mb)] = y
            acts = [x, Buffer(reused), Buffer(private)]
            return Held(acts + [Buffer(out)] if self._last(stage) else acts)
        arrays = _arrays(kept)
        return Held(arrays + [y] if self._last(stage) else arrays)  # the last stage keeps the logits for the loss

    def recompute(self, stage: int, mb: int, held: Held) -> Held:
        y, kept = dm.forward(self._layers[stage], self._params[stage], held.acts[0])
        return self._hold(stage, mb, kept, y)

    def backward_input(self, stage: int, mb: int, held: Held, dy: Any) -> tuple[Any, Held]:
        kept = self._kept.pop((stage, mb))
        if dy is None:  # the last stage starts backward from its loss, whose logits it kept
            logits = self._logits.pop((stage, mb)) if self.split.tensor_parallel > 1 else held.acts[-1]
            dy = cross_entropy(logits, self.labels[self.slices[mb]], self.scale)[1]
            arrived = None
        else:
            arrived = dy
        dx, deferred = dm.backward_input(self._layers[stage], self._params[stage], kept, dy)
        self._deferred[(stage, mb)] = deferred
        if self.split.tensor_parallel > 1:  # the shape-only workload's stand-ins (see _hold)
            _, _, _, _, new, arriving = self._sizes(stage, mb)
            return dx, Held([], held.acts[:2] + [Buffer(arriving) if arrived is None else arrived, Buffer(new)])
        return dx, Held([], _arrays(deferred))

    def backward_weight(self, device: int, stage: int, mb: int, held: Held) -> None:
        grads = self.grads.get((device, stage))
        if grads is None:
            grads = self.grads[(device, stage)] = [layer.zeros() for layer in self._layers[stage]]
        dm.backward_weight(self._layers[stage], self._params[stage], self._deferred.pop((stage, mb)), grads)

    def model_gradients(self) -> list[Arrays]:
        """Per layer of the whole model, the gradient summed over replicas, tied pairs summed (both places)."""
        total = self.model.zeros_like_params()
        for (_, stage), grads in self.grads.items():
            for i, layer_grads in zip(self.stages[stage], grads):
                for name, g in layer_grads.items():
                    total[i][name] += g
        return self.model.tie_gradients(total)


class DecoderShapeWorkload(_DecoderStages):
    """Byte-exact stand-ins for ``DecoderWorkload`` (``--no-compute``): no arithmetic, no weights.

    A stage holds, as ``Buffer`` groups freed together, its input, the kept
    arrays its W reuses, the other kept arrays, and on the last stage the
    logits; after I, the reused group again (the same buffers, so counted
    once, as the real arrays are), the gradient that came in (the arrived
    buffer itself, or the logits' gradient), and what I made new. The sizes
    come from each layer's closed forms (``accounting``), which the tests
    hold to the real arrays; so the engine's memory timeline is the real
    workload's, byte for byte.
    """

    def forward(self, stage: int, mb: int, x: Any, keep: bool) -> tuple[Any, Held]:
        first, reused, private, out, _, _ = self._sizes(stage, mb)
        if x is None:
            x = Buffer(first)
        y = Buffer(out)
        if not keep:
            return y, Held([x], remat=True)
        return y, self._hold(stage, x, reused, private, y)

    def _hold(self, stage: int, x: Any, reused: int, private: int, y: Any) -> Held:
        acts = [x, Buffer(reused), Buffer(private)]
        return Held(acts + [y] if self._last(stage) else acts)

    def recompute(self, stage: int, mb: int, held: Held) -> Held:
        _, reused, private, out, _, _ = self._sizes(stage, mb)
        return self._hold(stage, held.acts[0], reused, private, Buffer(out))

    def backward_input(self, stage: int, mb: int, held: Held, dy: Any) -> tuple[Any, Held]:
        first, _, _, _, new, arriving = self._sizes(stage, mb)
        if dy is None:  # the last stage: the logits' gradient, made from the kept logits
            dy = Buffer(arriving)
        dx = Buffer(first) if stage > 0 else None
        return dx, Held([], held.acts[:2] + [dy, Buffer(new)])

    def backward_weight(self, device: int, stage: int, mb: int, held: Held) -> None:
        pass


def grad_rel_err(grads: Sequence[Arrays], reference: Sequence[Arrays]) -> float:
    """The largest, over every parameter tensor, of ||g - g_ref|| / ||g_ref||, as for the MLP.

    A tensor whose true gradient is zero (the key bias: softmax ignores a
    shift shared by every key of a query) has only round-off for a reference;
    its error is taken against 1e-6 of the whole gradient's norm instead, the
    model's own scale, so that round-off over round-off does not read as an
    error.
    """
    scale = 1e-6 * float(np.sqrt(sum(float(np.sum(r * r)) for want in reference for r in want.values())))
    worst = 0.0
    for got, want in zip(grads, reference):
        for name, ref in want.items():
            diff = float(np.linalg.norm(got[name] - ref))
            worst = max(worst, diff / max(float(np.linalg.norm(ref)), scale))
    return worst
