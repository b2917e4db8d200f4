"""Tensor parallelism (``--tensor-parallel T``, ``--sequence-parallel``): Megatron-LM's division of a decoder.

The simulation keeps one representative device per (stage, replica): the
real NumPy run still computes the stage's whole layers (its gradient check is
unchanged); this module divides what one of the T devices of the stage's
tensor-parallel group costs and holds.

**Compute.** Every layer's FLOPs are split evenly over the group (Shoeybi et
al. 2019, "Megatron-LM", section 3: attention split by heads, the MLP's first
matrix by columns and its second by rows; the embedding and the output layer
by vocabulary), so a layer's time is its time on one device over T.

**Collectives inside each pass** (``TensorParallelCost``), each of the
activation's b·s·h·itemsize bytes over the group's ring on the intra-node link:

- a block's forward: 2 all-reduces, after attention and after the MLP (the
  ``g`` operators of Shoeybi et al. 2019, section 3, Figure 4); its input
  gradient (I, or a full B) 2 more (the ``f`` operators); its weight gradient
  (W) none; a recompute forward (R) the forward's 2;
- with sequence parallelism each all-reduce becomes a reduce-scatter and an
  all-gather of the same bytes (Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", section 4.2.2: ``g`` and
  ``g-bar``), the same ring time up to rounding; the all-gather Megatron-LM
  repeats in the backward to re-form a sharded input for W is overlapped with
  computation there and is not counted;
- the vocabulary-parallel embedding: 1 all-reduce of its output in the
  forward (a reduce-scatter with sequence parallelism), none in the backward;
- the vocabulary-parallel output layer: in the forward the cross-entropy's 3
  all-reduces of b·s fp32 numbers (the logits' maximum, the target logit and
  the sum of exponentials, Megatron-LM's ``_VocabParallelCrossEntropy``; the
  logits stay split), plus with sequence parallelism an all-gather of its
  input; in I, 1 all-reduce of its input gradient (a reduce-scatter with
  sequence parallelism);
- the final norm: none.

**Memory** (``Split``), per device of a group:

- parameters, their gradients and optimizer state: every weight matrix over
  T (attention's four maps, the MLP's two or three, the token table and the
  output matrix by vocabulary); column-parallel biases (query, key, value,
  the MLP's first layer) over T; the row-parallel biases (attention output
  and MLP down projection, h each) and every norm replicated, as in
  Megatron-LM; a learned position table replicated. The vocabulary is padded
  up to a multiple of T (``padded_vocab``), as Megatron-LM pads it;
- activations: Korthikanti et al. 2022, Table 2, count per block in 16-bit
  s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes without sequence parallelism and
  s·b·h/t·(34 + 5·a·s/h) with it (``korthikanti_tp_block_bytes``). pipesched
  keeps fewer tensors (no dropout: ``accounting``'s module text) and applies
  the same rule to each of its own: without sequence parallelism the block's
  input, both norms' inputs and outputs (4·t·h elements; Korthikanti's 10
  s·b·h bytes less the two dropout masks) stay whole, and q, k, v, the
  attention context, the MLP's inner tensors and the softmax probabilities
  (t·(2h + 2h_kv + m·f) + b·a·s² elements; their 24/t and 5as/(ht) with
  2 instead of 5 for the softmax's missing dropout mask and output) are over
  T; with sequence parallelism every tensor is over T. The same rule divides
  what I leaves for W. The logits and their gradient are over T (vocabulary
  parallel); the token ids stay whole;
- what crosses a stage boundary (the stage's input and output, the gradients
  sent back) is counted whole: pipesched's sends are not split, so the stage
  input a device holds is the whole t·h (with sequence parallelism an
  overcount of t·h·(1 - 1/T) per micro-batch in flight, stated so).

>>> from pipesched.decoder.config import preset
>>> c = preset("gpt3-175b"); s, b, h, a = 2048, 1, 12288, 96
>>> korthikanti_tp_block_bytes(s, b, h, a, 8, False) == s * b * h * (10 + 24 / 8 + 5 * a * s / (h * 8))
True
>>> Split(8).block_kept_bytes(c, b, s, 2) == 2 * (4 * s * b * h + (12 * s * b * h + a * s * s * b) // 8)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .. import formulas
from ..cost import WrappedCost
from . import accounting as acc
from .config import DecoderConfig
from .layers import Block, DecoderLayer, Embedding, FinalNorm, Output

__all__ = [
    "Split",
    "WHOLE",
    "padded_vocab",
    "korthikanti_tp_block_bytes",
    "layer_collectives",
    "TensorParallelCost",
]

#: Bytes of one fp32 number per token of the vocabulary-parallel cross-entropy's reductions.
LOSS_REDUCTION_BYTES = 4


def padded_vocab(vocab: int, tensor_parallel: int) -> int:
    """The vocabulary rounded up to a multiple of T, as Megatron-LM pads it (``make_vocab_size_divisible_by``).

    >>> padded_vocab(50257, 2), padded_vocab(32000, 8)
    (50258, 32000)
    """
    return -(-vocab // tensor_parallel) * tensor_parallel


def korthikanti_tp_block_bytes(seq_len: int, batch: int, hidden: int, heads: int, tensor: int, sequence: bool) -> float:
    """Korthikanti et al. 2022, Table 2: a GPT block's 16-bit activation bytes per device of a group of t.

    s b h (10 + 24/t + 5 a s/(h t)) with tensor parallelism alone, s b h / t (34 + 5 a s / h) with sequence
    parallelism too (no recompute).
    """
    s, b, h, a, t = seq_len, batch, hidden, heads, tensor
    if sequence:
        return s * b * h / t * (34 + 5 * a * s / h)
    return s * b * h * (10 + 24 / t + 5 * a * s / (h * t))


@dataclass(frozen=True)
class Split:
    """One device's share of each layer under T-way tensor parallelism (module text); T = 1: the whole layer."""

    tensor_parallel: int = 1
    sequence_parallel: bool = False

    def _share(self, replicated: int, divided: int) -> int:
        """Elements of one device: ``replicated`` whole (over T with sequence parallelism), ``divided`` over T."""
        t = self.tensor_parallel
        return (replicated // t if self.sequence_parallel else replicated) + divided // t

    def param_count(self, layer: DecoderLayer) -> int:
        """The parameters one device of the group holds of ``layer``."""
        c, t = layer.config, self.tensor_parallel
        if t == 1:
            return layer.param_count
        h, kv, f, m = c.hidden_size, c.kv_size, c.intermediate_size, 3 if c.activation == "silu" else 2
        if isinstance(layer, Block):
            divided = h * (h + 2 * kv) + h * h + m * h * f  # every matrix
            replicated = 2 * acc.norm_parameters(c)
            if c.bias:
                divided += h + 2 * kv + (m - 1) * f  # column-parallel biases
                replicated += 2 * h  # row-parallel biases: added after the all-reduce, on every device
            return replicated + divided // t
        if isinstance(layer, Embedding):
            return padded_vocab(c.vocab_size, t) // t * h + (acc.embedding_parameters(c) - c.vocab_size * h)
        if isinstance(layer, Output):
            return padded_vocab(c.vocab_size, t) // t * h
        return layer.param_count  # the final norm: replicated

    def block_kept_bytes(self, c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
        """A block's kept activations on one device (no recompute): 4 t h whole, the rest over T (module text)."""
        t, h = batch * seq_len, c.hidden_size
        replicated = 4 * t * h
        divided = acc.block_kept_elements(c, batch, seq_len) - replicated
        return self._share(replicated, divided) * itemsize

    def _split(self, layer: DecoderLayer, batch: int, seq_len: int, which: str) -> tuple[int, int]:
        """(replicated, divided) elements of ``layer``'s ``which`` (kept, deferred, reused), token ids apart."""
        c, t = layer.config, batch * seq_len
        h, kv, f, m = c.hidden_size, c.kv_size, c.intermediate_size, 3 if c.activation == "silu" else 2
        if isinstance(layer, Block):
            return {
                "kept": (4 * t * h, t * (2 * h + 2 * kv + m * f) + batch * c.num_heads * seq_len * seq_len),
                "deferred": (8 * t * h, t * (2 * h + 2 * kv + m * f)),
                "reused": (4 * t * h, t * (h + f)),
            }[which]
        if isinstance(layer, Embedding):
            return {"kept": (0, 0), "deferred": (t * h, 0), "reused": (0, 0)}[which]
        if isinstance(layer, FinalNorm):
            return {"kept": (t * h, 0), "deferred": (2 * t * h, 0), "reused": (t * h, 0)}[which]
        vocab = padded_vocab(c.vocab_size, self.tensor_parallel)
        return {"kept": (t * h, 0), "deferred": (t * h, t * vocab), "reused": (t * h, 0)}[which]

    def _bytes(self, layer: DecoderLayer, batch: int, seq_len: int, itemsize: int, which: str) -> int:
        ids = batch * seq_len * acc.TOKEN_ID_BYTES if isinstance(layer, Embedding) else 0  # int64, whole
        return ids + self._share(*self._split(layer, batch, seq_len, which)) * itemsize

    def kept_bytes(self, layer: DecoderLayer, batch: int, seq_len: int, itemsize: int) -> int:
        """Bytes one device keeps of ``layer`` for its backward (``DecoderLayer.kept_bytes`` at T = 1)."""
        if self.tensor_parallel == 1:
            return layer.kept_bytes(batch, seq_len, itemsize)
        return self._bytes(layer, batch, seq_len, itemsize, "kept")

    def deferred_bytes(self, layer: DecoderLayer, batch: int, seq_len: int, itemsize: int) -> int:
        """Bytes one device holds of ``layer`` from its I to its W."""
        if self.tensor_parallel == 1:
            return layer.deferred_bytes(batch, seq_len, itemsize)
        return self._bytes(layer, batch, seq_len, itemsize, "deferred")

    def reused_bytes(self, layer: DecoderLayer, batch: int, seq_len: int, itemsize: int) -> int:
        """Of ``kept_bytes``, what W needs again."""
        if self.tensor_parallel == 1:
            return layer.reused_bytes(batch, seq_len, itemsize)
        return self._bytes(layer, batch, seq_len, itemsize, "reused")

    def output_bytes(self, layer: DecoderLayer, batch: int, seq_len: int, itemsize: int) -> int:
        """One device's share of ``layer``'s output: the logits over T, a hidden-size output under the rule."""
        if self.tensor_parallel == 1:
            return layer.output_bytes(batch, seq_len, itemsize)
        t = batch * seq_len
        if isinstance(layer, Output):
            return t * padded_vocab(layer.config.vocab_size, self.tensor_parallel) // self.tensor_parallel * itemsize
        return self._share(t * layer.config.hidden_size, 0) * itemsize

    def input_bytes(self, layer: DecoderLayer, batch: int, seq_len: int, itemsize: int) -> int:
        """One device's share of ``layer``'s input: the token ids whole, a hidden-size input under the rule."""
        if isinstance(layer, Embedding):
            return batch * seq_len * acc.TOKEN_ID_BYTES
        return self._share(batch * seq_len * layer.config.hidden_size, 0) * itemsize


def layer_collectives(
    layer: DecoderLayer, op: str, rows: int, seq_len: int, itemsize: int, sequence: bool
) -> list[tuple[str, int]]:
    """The collectives one device of the group runs inside ``op`` of ``layer``: (kind, bytes) each (module text).

    Kinds are ``allreduce``, ``reduce_scatter`` and ``all_gather``. B counts I's, R counts F's, W none.
    """
    activation = rows * seq_len * layer.config.hidden_size * itemsize
    pair = [("reduce_scatter", activation), ("all_gather", activation)] if sequence else [("allreduce", activation)]
    one = [("reduce_scatter", activation)] if sequence else [("allreduce", activation)]
    forward = op in ("F", "R")
    if op == "W" or not (forward or op in ("B", "I")):
        return []
    if isinstance(layer, Block):
        return 2 * pair
    if isinstance(layer, Embedding):
        return one if forward else []
    if isinstance(layer, Output):
        if forward:
            loss = [("allreduce", rows * seq_len * LOSS_REDUCTION_BYTES)] * 3
            return ([("all_gather", activation)] if sequence else []) + loss
        return one
    return []


#: T = 1: every layer whole, as a run without tensor parallelism holds it.
WHOLE = Split()

_TIMES = {
    "allreduce": formulas.ring_allreduce_time,
    "reduce_scatter": formulas.ring_reduce_scatter_time,
    "all_gather": formulas.ring_all_gather_time,
}


@dataclass(frozen=True)
class TensorParallelCost(WrappedCost):
    """``base``'s compute over T plus the group's collectives inside each pass, on the intra-node link.

    ``layers`` in ``compute_time`` are ``workload.CostedLayer``s (a decoder's);
    ``bandwidth`` and ``latency`` are the intra-node link's (``None``: free
    collectives, as the unit model's communication is). Transfers are
    ``base``'s, except that with sequence parallelism none is divided (sends
    are whole: module text).
    """

    tensor_parallel: int = 1
    sequence_parallel: bool = False
    itemsize: int = 2
    bandwidth: float | None = None
    latency: float = 0.0

    def collective_time(self, op: str, layers: Sequence[Any], rows: int) -> float:
        """The time of the group's collectives inside ``op`` over ``layers`` on ``rows`` sequences."""
        if self.bandwidth is None or self.tensor_parallel == 1:
            return 0.0
        total = 0.0
        for costed in layers:
            layer, seq_len = costed.layer, costed.seq_len  # a workload.CostedLayer
            for kind, nbytes in layer_collectives(layer, op, rows, seq_len, self.itemsize, self.sequence_parallel):
                total += _TIMES[kind](self.tensor_parallel, nbytes, self.bandwidth, self.latency)
        return total

    def compute_time(
        self, op: str, layers: Sequence[Any], rows: int, stage_units: float, stage: int = 0, device: int = 0
    ) -> float:
        base = self.base.compute_time(op, layers, rows, stage_units, stage, device)
        return base / self.tensor_parallel + self.collective_time(op, layers, rows)
