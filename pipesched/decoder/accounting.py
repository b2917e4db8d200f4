"""Closed forms for a decoder that a reader can check by hand: parameters, FLOPs, activation and optimizer bytes.

Symbols (one micro-batch): b sequences of s tokens, t = b s tokens; hidden
size h, a attention heads of width d = h / a, key/value width h_kv = kv_heads
d (= h without GQA), MLP width f, vocabulary V, L blocks. Every form here is
held by tests against what the NumPy layers of ``pipesched.decoder.layers``
really hold and execute.

**Parameters.** A block has the attention maps h (h + 2 h_kv) + h^2 (query,
key, value, output), the MLP 2 h f (GELU: up and down) or 3 h f (SwiGLU: gate,
up, down), and two norms of 2h (LayerNorm: gain and bias) or h (RMSNorm);
with biases (GPT-2) add h + 2 h_kv + h for attention and f + h (GELU) or
2f + h (SwiGLU) for the MLP. For GPT-2/3 (h_kv = h, f = 4h, biases,
LayerNorm) that is 12 h^2 + 13 h, the count of Narayanan et al. 2021,
"Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM", section 5.1: P = 12 L h^2 (1 + 13/(12h) + (V + s)/(12 L h)). The
model adds the token embedding V h, a learned position table s_max h where
there is one, a final norm, and the output layer V h unless tied.

**FLOPs** (matrix products only, 2 per multiply-add, as Kaplan et al. 2020
and Narayanan et al. 2021 count): a block's forward is 2 t h (h + 2 h_kv) +
2 t h^2 for the projections, 4 t s h for the attention core (scores and
weighted values over the full s x s, mask included), and 4 t h f (GELU) or
6 t h f (SwiGLU) for the MLP: 24 t h^2 + 4 t s h for GPT (Narayanan et al.
2021, 24 B s h^2 (1 + s/(6h)) per layer). Backward is twice the forward:
the input gradient (I) repeats the projections and twice the core; the
weight gradient (W) repeats the projections. The output layer is 2 t h V
forward, and again for each of I and W.

**Activations kept per block per micro-batch, in elements** (each times the
bytes of the training dtype): without recompute t (6h + 2 h_kv + 2f) + b a s^2
(GELU; 3f for SwiGLU): the block input, the first norm's output, q, k, v,
the attention context, the second norm's input and output, the MLP's two (or
three) inner tensors, and the softmax probabilities. Selective recompute of
the attention core drops the b a s^2; full recompute keeps only the block
input, t h.

Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", Table 2, count 34 s b h + 5 a s^2 b bytes per GPT block
in 16-bit without recompute and 34 s b h with selective recompute (their
section 4.1 lists the tensors); full recompute keeps the block input, 2 s b
h. pipesched's NumPy layers have no dropout, so at 2 bytes per element they
keep 32 s b h + 2 a s^2 b: the 2 s b h missing are the two 1-byte
dropout masks (attention output, MLP output) and the 3 a s^2 b the softmax
dropout's mask (1 byte) and output (2 bytes). ``korthikanti_block_bytes``
gives the published number, ``block_kept_bytes`` pipesched's.

**Held between I and W per block** (zero-bubble schedules): the inputs of
every projection and norm with the gradients at their outputs, t (10h +
2 h_kv + 2f) elements (3f for SwiGLU).

**Weights and optimizer** (``adam_bytes_per_parameter``): mixed-precision
Adam holds 2 bytes of 16-bit weights, 2 of 16-bit gradients and 12 of fp32
master weights, momentum and variance: 16 bytes per parameter (Rajbhandari et
al. 2020, "ZeRO", section 3.1: 2Ψ + 2Ψ + KΨ with K = 12). Megatron-LM
accumulates gradients in fp32 and counts 18 (4 instead of 2 for gradients;
``theoretical_memory_usage.py``). fp32 training holds 4 + 4 + 8 (no master
copy).

>>> from pipesched.decoder.config import preset
>>> total_parameters(preset("llama2-7b"))
6738415616
>>> adam_bytes_per_parameter("bf16").total
16
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..errors import ConfigError
from .config import DecoderConfig

__all__ = [
    "DTYPE_BYTES",
    "TOKEN_ID_BYTES",
    "RECOMPUTE",
    "PassFlops",
    "ParameterBytes",
    "norm_parameters",
    "block_parameters",
    "embedding_parameters",
    "final_norm_parameters",
    "output_parameters",
    "total_parameters",
    "block_flops",
    "output_flops",
    "model_flops",
    "block_kept_elements",
    "block_kept_bytes",
    "block_deferred_bytes",
    "embedding_kept_bytes",
    "embedding_deferred_bytes",
    "final_norm_kept_bytes",
    "final_norm_deferred_bytes",
    "output_kept_bytes",
    "output_deferred_bytes",
    "loss_kept_bytes",
    "korthikanti_block_bytes",
    "adam_bytes_per_parameter",
]

#: Bytes per element of each training dtype; fp64 is what the NumPy exactness check computes in.
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}
#: Token ids are int64 whatever the training dtype (Megatron-LM counts 8 s b bytes for them too).
TOKEN_ID_BYTES = 8
#: Recompute modes of one block: keep everything, drop the attention core's s x s, keep only the input.
RECOMPUTE = ("none", "selective", "full")


class PassFlops(NamedTuple):
    """Matrix-product FLOPs of forward, input-gradient (I) and weight-gradient (W)."""

    forward: int
    backward_input: int
    backward_weight: int

    @property
    def backward(self) -> int:
        return self.backward_input + self.backward_weight


@dataclass(frozen=True)
class ParameterBytes:
    """Bytes per parameter a training run holds, by role."""

    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def _check_recompute(recompute: str) -> None:
    if recompute not in RECOMPUTE:
        raise ConfigError(f"recompute {recompute!r} is not one of {', '.join(RECOMPUTE)}")


def _mlp_matrices(c: DecoderConfig) -> int:
    """2 for a GELU MLP (up, down), 3 for SwiGLU (gate, up, down)."""
    return 3 if c.activation == "silu" else 2


# -- parameters -----------------------------------------------------------------------


def norm_parameters(c: DecoderConfig) -> int:
    """One norm: gain and bias (LayerNorm, 2h) or gain only (RMSNorm, h)."""
    return 2 * c.hidden_size if c.norm == "layernorm" else c.hidden_size


def block_parameters(c: DecoderConfig) -> int:
    """One decoder block: attention, MLP and two norms (module docstring).

    >>> from pipesched.decoder.config import preset
    >>> h = 12288; block_parameters(preset("gpt3-175b")) == 12 * h * h + 13 * h
    True
    """
    h, kv, f = c.hidden_size, c.kv_size, c.intermediate_size
    attention = h * (h + 2 * kv) + h * h
    mlp = _mlp_matrices(c) * h * f
    if c.bias:
        attention += h + 2 * kv + h
        mlp += (_mlp_matrices(c) - 1) * f + h
    return attention + mlp + 2 * norm_parameters(c)


def embedding_parameters(c: DecoderConfig) -> int:
    """Token table V h, plus the learned position table s_max h where the config has one."""
    positions = c.max_positions * c.hidden_size if c.position == "learned" else 0
    return c.vocab_size * c.hidden_size + positions


def final_norm_parameters(c: DecoderConfig) -> int:
    """The norm after the last block."""
    return norm_parameters(c)


def output_parameters(c: DecoderConfig) -> int:
    """V h: the matrix the output layer's device holds, its own or, when tied, its copy of the embedding's."""
    return c.vocab_size * c.hidden_size


def total_parameters(c: DecoderConfig) -> int:
    """The model's parameter count, each matrix once (a tied output matrix is the embedding's)."""
    output = 0 if c.tie_embeddings else output_parameters(c)
    return embedding_parameters(c) + c.num_layers * block_parameters(c) + final_norm_parameters(c) + output


# -- FLOPs ----------------------------------------------------------------------------


def block_flops(c: DecoderConfig, batch: int, seq_len: int, recompute: str = "none") -> PassFlops:
    """One block on ``batch`` sequences of ``seq_len``; selective recompute adds the scores (2 t s h) to I.

    Full recompute is a second forward that the engine runs, not counted here.

    >>> from pipesched.decoder.config import preset
    >>> c = preset("gpt3-175b"); t, h, s = 2048, 12288, 2048
    >>> block_flops(c, 1, s).forward == 24 * t * h * h + 4 * t * s * h
    True
    """
    _check_recompute(recompute)
    t, h, kv, f = batch * seq_len, c.hidden_size, c.kv_size, c.intermediate_size
    projections = 2 * t * h * (h + 2 * kv) + 2 * t * h * h + 2 * _mlp_matrices(c) * t * h * f
    core = 4 * t * seq_len * h  # scores q k^T and weighted values p v, each 2 t s h
    again = 2 * t * seq_len * h if recompute == "selective" else 0
    return PassFlops(projections + core, projections + 2 * core + again, projections)


def output_flops(c: DecoderConfig, batch: int, seq_len: int) -> PassFlops:
    """The vocabulary projection: 2 t h V in each of forward, I and W."""
    each = 2 * batch * seq_len * c.hidden_size * c.vocab_size
    return PassFlops(each, each, each)


def model_flops(c: DecoderConfig, batch: int, seq_len: int) -> PassFlops:
    """All blocks and the output layer (embedding lookups and norms do no matrix products).

    Without recompute the three passes total 72 t L h^2 (1 + s/(6h) + V/(12 L h)) for GPT,
    Narayanan et al. 2021, section 5.1 (their 96 counts a recomputed forward too).
    """
    block, out = block_flops(c, batch, seq_len), output_flops(c, batch, seq_len)
    return PassFlops(*(c.num_layers * x + y for x, y in zip(block, out)))


# -- activations ----------------------------------------------------------------------


def block_kept_elements(c: DecoderConfig, batch: int, seq_len: int, recompute: str = "none") -> int:
    """Elements one block keeps from its forward to its backward, per micro-batch (module docstring)."""
    _check_recompute(recompute)
    t, h = batch * seq_len, c.hidden_size
    if recompute == "full":
        return t * h
    kept = t * (6 * h + 2 * c.kv_size + _mlp_matrices(c) * c.intermediate_size)
    return kept + (batch * c.num_heads * seq_len * seq_len if recompute == "none" else 0)


def block_kept_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int, recompute: str = "none") -> int:
    """``block_kept_elements`` in bytes of ``itemsize`` each.

    >>> from pipesched.decoder.config import preset
    >>> c = preset("gpt3-175b"); s, b, h, a = 2048, 1, 12288, 96
    >>> block_kept_bytes(c, b, s, 2) == 32 * s * b * h + 2 * a * s * s * b
    True
    """
    return block_kept_elements(c, batch, seq_len, recompute) * itemsize


def block_deferred_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
    """Bytes one block holds from its I to its W: t (10h + 2 h_kv + 2f) elements (3f for SwiGLU)."""
    t, h = batch * seq_len, c.hidden_size
    return t * (10 * h + 2 * c.kv_size + _mlp_matrices(c) * c.intermediate_size) * itemsize


def embedding_kept_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
    """The token ids (int64), which W scatters the gradient by."""
    return batch * seq_len * TOKEN_ID_BYTES


def embedding_deferred_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
    """The token ids and the gradient at the embedding's output, t h."""
    return batch * seq_len * (TOKEN_ID_BYTES + c.hidden_size * itemsize)


def final_norm_kept_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
    """The norm's input, t h."""
    return batch * seq_len * c.hidden_size * itemsize


def final_norm_deferred_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
    """The norm's input and the gradient at its output, 2 t h."""
    return 2 * batch * seq_len * c.hidden_size * itemsize


def output_kept_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
    """The output layer's input, t h (W needs it; I needs only the weights)."""
    return batch * seq_len * c.hidden_size * itemsize


def output_deferred_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
    """The output layer's input and the gradient of the logits, t (h + V)."""
    return batch * seq_len * (c.hidden_size + c.vocab_size) * itemsize


def block_reused_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
    """Of a block's kept arrays, those its W needs again after I: t (5h + f).

    Its input, both norms' outputs, the residual after attention, the
    attention context (each t h), and the MLP's hidden activation (GELU's or
    SwiGLU's product, t f). The rest of ``block_deferred_bytes`` is new in I:
    the gradient at the block's output (t h, which arrived) and t (4h + 2 h_kv
    + f) more (2f for SwiGLU).
    """
    return batch * seq_len * (5 * c.hidden_size + c.intermediate_size) * itemsize


def loss_kept_bytes(c: DecoderConfig, batch: int, seq_len: int, itemsize: int) -> int:
    """The logits, t V, which the loss's backward needs (the stage holding the output layer keeps them)."""
    return batch * seq_len * c.vocab_size * itemsize


def korthikanti_block_bytes(seq_len: int, batch: int, hidden: int, heads: int, recompute: str = "none") -> int:
    """Korthikanti et al. 2022, Table 2 (no parallelism): a GPT block's activation bytes in 16-bit, dropout included.

    34 s b h + 5 a s^2 b without recompute, 34 s b h with selective recompute, 2 s b h with full.

    >>> korthikanti_block_bytes(2048, 1, 12288, 96) / 2**30  # GPT-3 175B, one sequence: GiB per block
    2.671875
    """
    _check_recompute(recompute)
    s, b, h, a = seq_len, batch, hidden, heads
    if recompute == "full":
        return 2 * s * b * h
    return 34 * s * b * h + (5 * a * s * s * b if recompute == "none" else 0)


# -- weights and optimizer -------------------------------------------------------------


def adam_bytes_per_parameter(dtype: str) -> ParameterBytes:
    """Weights, gradients and Adam's state per parameter when training in ``dtype`` (module docstring).

    >>> adam_bytes_per_parameter("fp32")
    ParameterBytes(weights=4, gradients=4, optimizer=8)
    """
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    size = DTYPE_BYTES[dtype]
    if size < 4:  # mixed precision: fp32 master weights, momentum and variance beside the 16-bit copies
        return ParameterBytes(weights=size, gradients=size, optimizer=12)
    return ParameterBytes(weights=size, gradients=size, optimizer=2 * size)
