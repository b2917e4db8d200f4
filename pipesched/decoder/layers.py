"""The decoder's layers in NumPy float64, each with forward, input-gradient (I) and weight-gradient (W) side by side.

A decoder is the chain ``Embedding, Block x L, FinalNorm, Output``, then the
loss ``cross_entropy``. Every layer is a frozen description (its config); its
parameters are a separate dict of arrays, as in ``pipesched.model``. Each
layer offers the three passes zero-bubble schedules run apart:

- ``forward(params, x, recompute)`` -> ``(y, kept)``: the output and the
  arrays its backward needs (``kept``, a dict of named arrays);
- ``backward_input(params, kept, dy)`` -> ``(dx, deferred)``: the gradient
  at the input (None for the embedding, whose input is token ids) and what W
  still needs;
- ``backward_weight(params, deferred, grads)``: add the parameter gradients
  into ``grads`` (a dict shaped as ``params``).

Which work is I and which is W: attention's softmax and its matrix products
with q, k and v, the activations' derivatives, the norms' input gradients and
every ``dy W^T`` are I; every projection's ``x^T dy`` and bias sum, every
norm's gain (and bias), and the embedding's scatter-add are W. The counted
FLOPs and kept bytes of every layer equal the closed forms of
``pipesched.decoder.accounting``; ``flops`` and ``kept_bytes`` return them.

>>> from pipesched.decoder.config import preset
>>> config = preset("tiny-gpt")
>>> block = Block(config)
>>> params = block.init(np.random.default_rng(0))
>>> x = np.random.default_rng(1).standard_normal((2, 5, 64))
>>> y, kept = block.forward(params, x)
>>> y.shape, sum(a.nbytes for a in kept.values()) == block.kept_bytes(2, 5, 8)
((2, 5, 64), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import model as nn
from ..errors import ConfigError
from . import accounting as acc
from .attention import causal_attention, causal_attention_backward, rope, rope_backward, rope_tables
from .config import DecoderConfig
from .ops import (
    gelu,
    gelu_grad,
    linear,
    linear_weight_grad,
    matmul,
    norm,
    norm_backward_input,
    norm_backward_weight,
    silu,
    silu_grad,
)

__all__ = ["Arrays", "DecoderLayer", "Embedding", "Block", "FinalNorm", "Output", "cross_entropy"]

#: Named arrays: a layer's parameters, its gradients, or what it keeps for backward.
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class DecoderLayer:
    """What every decoder layer has: its config, parameter shapes and count, and initial values.

    Weights are drawn N(0, std^2) (GPT-2 uses std 0.02); norm gains start at 1
    and biases at 0, as in GPT-2 and LLaMA.
    """

    config: DecoderConfig

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each parameter's shape, by name."""
        raise NotImplementedError

    @property
    def param_count(self) -> int:
        """Parameters this layer holds (the output layer counts its matrix even when tied)."""
        return sum(math.prod(shape) for shape in self.shapes().values())

    def init(self, rng: np.random.Generator, std: float = 0.02) -> Arrays:
        """Fresh parameters, deterministic in ``rng``."""
        params: Arrays = {}
        for name, shape in self.shapes().items():
            if name.endswith("gain"):
                params[name] = np.ones(shape)
            elif name.startswith("b") or name.endswith("bias"):
                params[name] = np.zeros(shape)
            else:
                params[name] = rng.standard_normal(shape) * std
        return params

    def zeros(self) -> Arrays:
        """Gradients of zero, shaped as the parameters."""
        return {name: np.zeros(shape) for name, shape in self.shapes().items()}

    def forward(self, params: Arrays, x: Any, recompute: str = "none") -> tuple[np.ndarray, Arrays]:
        raise NotImplementedError

    def backward_input(self, params: Arrays, kept: Arrays, dy: np.ndarray) -> tuple[np.ndarray | None, Arrays]:
        raise NotImplementedError

    def backward_weight(self, params: Arrays, deferred: Arrays, grads: Arrays) -> None:
        raise NotImplementedError

    def flops(self, batch: int, seq_len: int, recompute: str = "none") -> acc.PassFlops:
        """Matrix-product FLOPs of the three passes on ``batch`` sequences of ``seq_len`` (none by default)."""
        return acc.PassFlops(0, 0, 0)

    def kept_bytes(self, batch: int, seq_len: int, itemsize: int, recompute: str = "none") -> int:
        """Bytes ``forward`` keeps for backward, from ``accounting``."""
        raise NotImplementedError

    def deferred_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        """Bytes ``backward_input`` leaves for W, from ``accounting``."""
        raise NotImplementedError

    def reused_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        """Of ``kept_bytes``, the arrays W needs again (the same arrays, so held once): by default only the input."""
        return batch * seq_len * self.config.hidden_size * itemsize

    def output_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        """Bytes of the layer's output, and so of the gradient that comes back to it (t h)."""
        return batch * seq_len * self.config.hidden_size * itemsize

    def _norm_shapes(self, prefix: str) -> dict[str, tuple[int, ...]]:
        h = self.config.hidden_size
        if self.config.norm == "layernorm":
            return {f"{prefix}gain": (h,), f"{prefix}bias": (h,)}
        return {f"{prefix}gain": (h,)}


@dataclass(frozen=True)
class Embedding(DecoderLayer):
    """Token embedding, plus a learned position embedding where the config has one (GPT-2).

    Input: token ids (b, s); output (b, s, h). No I (its input is data); W
    scatter-adds the output gradient into the rows of the tokens seen, and
    sums it over the batch into the first s rows of the position table.
    """

    def shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        shapes: dict[str, tuple[int, ...]] = {"token": (c.vocab_size, c.hidden_size)}
        if c.position == "learned":
            shapes["position"] = (c.max_positions, c.hidden_size)
        return shapes

    def forward(self, params: Arrays, x: Any, recompute: str = "none") -> tuple[np.ndarray, Arrays]:
        ids = np.asarray(x, dtype=np.int64)  # 8 bytes a token, as accounting.TOKEN_ID_BYTES counts them
        self.config.check_sequence(ids.shape[1])
        y = params["token"][ids]
        if "position" in params:
            y += params["position"][: ids.shape[1]]
        return y, {"ids": ids}

    def backward_input(self, params: Arrays, kept: Arrays, dy: np.ndarray) -> tuple[np.ndarray | None, Arrays]:
        return None, {"ids": kept["ids"], "dy": dy}

    def backward_weight(self, params: Arrays, deferred: Arrays, grads: Arrays) -> None:
        ids, dy = deferred["ids"], deferred["dy"]
        np.add.at(grads["token"], ids.ravel(), dy.reshape(-1, dy.shape[-1]))
        if "position" in grads:
            grads["position"][: ids.shape[1]] += dy.sum(axis=0)

    def kept_bytes(self, batch: int, seq_len: int, itemsize: int, recompute: str = "none") -> int:
        return acc.embedding_kept_bytes(self.config, batch, seq_len, itemsize)

    def deferred_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        return acc.embedding_deferred_bytes(self.config, batch, seq_len, itemsize)

    def reused_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        return acc.embedding_kept_bytes(self.config, batch, seq_len, itemsize)  # the token ids

    def __str__(self) -> str:
        c = self.config
        return f"Embedding({c.vocab_size}x{c.hidden_size}{', learned positions' if c.position == 'learned' else ''})"


@dataclass(frozen=True)
class Block(DecoderLayer):
    """One pre-norm decoder block: ``x + attention(norm(x))``, then ``+ mlp(norm(.))``.

    Attention is causal, multi-head or grouped-query, with rotary embeddings
    on q and k where the config says so; the MLP is ``down(gelu(up x))`` or
    SwiGLU's ``down(silu(gate x) * up x)``. ``index`` only names the block.

    I: the MLP's and attention's ``dy W^T``, the activation derivatives, the
    attention core (softmax and its matmuls), RoPE's inverse rotation and the
    norms' input gradients. W: every projection's ``x^T dy`` (and bias sums)
    and both norms' gains (and biases). ``recompute="selective"`` keeps no
    softmax probabilities; I recomputes them from q and k.
    """

    index: int = 0

    def shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        h, kv, f = c.hidden_size, c.kv_size, c.intermediate_size
        shapes = self._norm_shapes("attn_norm_")
        shapes.update({"wq": (h, h), "wk": (h, kv), "wv": (h, kv), "wo": (h, h)})
        if c.bias:
            shapes.update({"bq": (h,), "bk": (kv,), "bv": (kv,), "bo": (h,)})
        shapes.update(self._norm_shapes("mlp_norm_"))
        mlp = {"w_gate": (h, f)} if c.activation == "silu" else {}
        mlp.update({"w_up": (h, f), "w_down": (f, h)})
        shapes.update(mlp)
        if c.bias:
            shapes.update({"b" + name[1:]: (shape[1],) for name, shape in mlp.items()})
        return shapes

    def _rope(self, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        return rope_tables(seq_len, self.config.head_dim, self.config.rope_theta)

    def forward(self, params: Arrays, x: Any, recompute: str = "none") -> tuple[np.ndarray, Arrays]:
        c = self.config
        if recompute not in ("none", "selective"):
            # full recompute is the engine's: it keeps the block's input and runs this forward again
            raise ConfigError(f"a block's forward takes recompute 'none' or 'selective', not {recompute!r}")
        b, s, h = x.shape
        heads, kv, d = c.num_heads, c.num_kv_heads, c.head_dim
        h1 = norm(x, params["attn_norm_gain"], params.get("attn_norm_bias"), c.norm, c.norm_eps)
        q = linear(h1, params["wq"], params.get("bq")).reshape(b, s, heads, d).transpose(0, 2, 1, 3)
        k = linear(h1, params["wk"], params.get("bk")).reshape(b, s, kv, d).transpose(0, 2, 1, 3)
        v = linear(h1, params["wv"], params.get("bv")).reshape(b, s, kv, d).transpose(0, 2, 1, 3)
        if c.position == "rotary":
            cos, sin = self._rope(s)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        context, p = causal_attention(q, k, v)
        ctx = context.transpose(0, 2, 1, 3).reshape(b, s, h)
        x2 = x + linear(ctx, params["wo"], params.get("bo"))
        h2 = norm(x2, params["mlp_norm_gain"], params.get("mlp_norm_bias"), c.norm, c.norm_eps)
        kept: Arrays = {"x": x, "h1": h1, "q": q, "k": k, "v": v, "ctx": ctx, "x2": x2, "h2": h2}
        if recompute == "none":
            kept["p"] = p
        if c.activation == "silu":
            zg = linear(h2, params["w_gate"], params.get("b_gate"))
            zu = linear(h2, params["w_up"], params.get("b_up"))
            m = silu(zg) * zu
            kept.update(zg=zg, zu=zu, m=m)
        else:
            z = linear(h2, params["w_up"], params.get("b_up"))
            m = gelu(z)
            kept.update(z=z, g=m)
        y = x2 + linear(m, params["w_down"], params.get("b_down"))
        return y, kept

    def backward_input(self, params: Arrays, kept: Arrays, dy: np.ndarray) -> tuple[np.ndarray | None, Arrays]:
        c = self.config
        b, s, h = dy.shape
        deferred: Arrays = {"dmlp": dy, "h2": kept["h2"], "x2": kept["x2"], "ctx": kept["ctx"]}
        dm = matmul(dy, params["w_down"].T)
        if c.activation == "silu":
            zg, zu = kept["zg"], kept["zu"]
            dzg, dzu = dm * zu * silu_grad(zg), dm * silu(zg)
            dh2 = matmul(dzg, params["w_gate"].T) + matmul(dzu, params["w_up"].T)
            deferred.update(m=kept["m"], dzg=dzg, dzu=dzu)
        else:
            dz = dm * gelu_grad(kept["z"])
            dh2 = matmul(dz, params["w_up"].T)
            deferred.update(g=kept["g"], dz=dz)
        dx2 = dy + norm_backward_input(kept["x2"], params["mlp_norm_gain"], dh2, c.norm, c.norm_eps)
        dctx = matmul(dx2, params["wo"].T).reshape(b, s, c.num_heads, c.head_dim).transpose(0, 2, 1, 3)
        dq, dk, dv = causal_attention_backward(kept["q"], kept["k"], kept["v"], kept.get("p"), dctx)
        if c.position == "rotary":
            cos, sin = self._rope(s)
            dq, dk = rope_backward(dq, cos, sin), rope_backward(dk, cos, sin)
        dq = dq.transpose(0, 2, 1, 3).reshape(b, s, h)
        dk = dk.transpose(0, 2, 1, 3).reshape(b, s, c.kv_size)
        dv = dv.transpose(0, 2, 1, 3).reshape(b, s, c.kv_size)
        dh1 = matmul(dq, params["wq"].T) + matmul(dk, params["wk"].T) + matmul(dv, params["wv"].T)
        dx = dx2 + norm_backward_input(kept["x"], params["attn_norm_gain"], dh1, c.norm, c.norm_eps)
        deferred.update(dattn=dx2, dh2=dh2, x=kept["x"], h1=kept["h1"], dh1=dh1, dq=dq, dk=dk, dv=dv)
        return dx, deferred

    def backward_weight(self, params: Arrays, deferred: Arrays, grads: Arrays) -> None:
        c = self.config
        d = deferred
        norm_backward_weight(d["x"], d["dh1"], c.norm, c.norm_eps, grads["attn_norm_gain"], grads.get("attn_norm_bias"))
        linear_weight_grad(d["h1"], d["dq"], grads["wq"], grads.get("bq"))
        linear_weight_grad(d["h1"], d["dk"], grads["wk"], grads.get("bk"))
        linear_weight_grad(d["h1"], d["dv"], grads["wv"], grads.get("bv"))
        linear_weight_grad(d["ctx"], d["dattn"], grads["wo"], grads.get("bo"))
        norm_backward_weight(d["x2"], d["dh2"], c.norm, c.norm_eps, grads["mlp_norm_gain"], grads.get("mlp_norm_bias"))
        if c.activation == "silu":
            linear_weight_grad(d["h2"], d["dzg"], grads["w_gate"], grads.get("b_gate"))
            linear_weight_grad(d["h2"], d["dzu"], grads["w_up"], grads.get("b_up"))
            linear_weight_grad(d["m"], d["dmlp"], grads["w_down"], grads.get("b_down"))
        else:
            linear_weight_grad(d["h2"], d["dz"], grads["w_up"], grads.get("b_up"))
            linear_weight_grad(d["g"], d["dmlp"], grads["w_down"], grads.get("b_down"))

    def flops(self, batch: int, seq_len: int, recompute: str = "none") -> acc.PassFlops:
        return acc.block_flops(self.config, batch, seq_len, recompute)

    def kept_bytes(self, batch: int, seq_len: int, itemsize: int, recompute: str = "none") -> int:
        return acc.block_kept_bytes(self.config, batch, seq_len, itemsize, recompute)

    def deferred_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        return acc.block_deferred_bytes(self.config, batch, seq_len, itemsize)

    def reused_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        return acc.block_reused_bytes(self.config, batch, seq_len, itemsize)

    def __str__(self) -> str:
        c = self.config
        attention = "MHA" if c.num_kv_heads == c.num_heads else f"GQA {c.num_kv_heads} kv"
        return f"Block {self.index}({c.hidden_size}, {c.num_heads} heads {attention}, {c.activation})"


@dataclass(frozen=True)
class FinalNorm(DecoderLayer):
    """The norm after the last block. I: its input gradient; W: its gain (and bias)."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._norm_shapes("")

    def forward(self, params: Arrays, x: Any, recompute: str = "none") -> tuple[np.ndarray, Arrays]:
        c = self.config
        return norm(x, params["gain"], params.get("bias"), c.norm, c.norm_eps), {"x": x}

    def backward_input(self, params: Arrays, kept: Arrays, dy: np.ndarray) -> tuple[np.ndarray | None, Arrays]:
        c = self.config
        return norm_backward_input(kept["x"], params["gain"], dy, c.norm, c.norm_eps), {"x": kept["x"], "dy": dy}

    def backward_weight(self, params: Arrays, deferred: Arrays, grads: Arrays) -> None:
        c = self.config
        norm_backward_weight(deferred["x"], deferred["dy"], c.norm, c.norm_eps, grads["gain"], grads.get("bias"))

    def kept_bytes(self, batch: int, seq_len: int, itemsize: int, recompute: str = "none") -> int:
        return acc.final_norm_kept_bytes(self.config, batch, seq_len, itemsize)

    def deferred_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        return acc.final_norm_deferred_bytes(self.config, batch, seq_len, itemsize)

    def __str__(self) -> str:
        return f"FinalNorm({self.config.norm})"


@dataclass(frozen=True)
class Output(DecoderLayer):
    """The vocabulary projection ``logits = x W^T``, W of shape (V, h) like the token table, no bias.

    When the config ties embeddings, W *is* the embedding's ``token`` matrix:
    ``DecoderModel`` gives both layers the same array, and the two layers'
    gradients are summed before the step (``DecoderModel.ties`` names the
    pair, so that an engine placing them on two devices can sum them over a
    link, as Megatron-LM does). I: ``dx = dlogits W``; W: ``dlogits^T x``.
    """

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"weight": (self.config.vocab_size, self.config.hidden_size)}

    def forward(self, params: Arrays, x: Any, recompute: str = "none") -> tuple[np.ndarray, Arrays]:
        return matmul(x, params["weight"].T), {"x": x}

    def backward_input(self, params: Arrays, kept: Arrays, dy: np.ndarray) -> tuple[np.ndarray | None, Arrays]:
        return matmul(dy, params["weight"]), {"x": kept["x"], "dy": dy}

    def backward_weight(self, params: Arrays, deferred: Arrays, grads: Arrays) -> None:
        x, dy = deferred["x"], deferred["dy"]
        grads["weight"] += matmul(dy.reshape(-1, dy.shape[-1]).T, x.reshape(-1, x.shape[-1]))

    def flops(self, batch: int, seq_len: int, recompute: str = "none") -> acc.PassFlops:
        return acc.output_flops(self.config, batch, seq_len)

    def kept_bytes(self, batch: int, seq_len: int, itemsize: int, recompute: str = "none") -> int:
        return acc.output_kept_bytes(self.config, batch, seq_len, itemsize)

    def deferred_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        return acc.output_deferred_bytes(self.config, batch, seq_len, itemsize)

    def output_bytes(self, batch: int, seq_len: int, itemsize: int) -> int:
        return acc.loss_kept_bytes(self.config, batch, seq_len, itemsize)  # the logits, t V

    def __str__(self) -> str:
        tied = ", tied" if self.config.tie_embeddings else ""
        return f"Output({self.config.hidden_size}->{self.config.vocab_size}{tied})"


def cross_entropy(
    logits: np.ndarray, labels: np.ndarray, scale: float, grad: bool = True
) -> tuple[float, np.ndarray | None]:
    """Softmax cross-entropy over the vocabulary at every position, summed and times ``scale``.

    With ``scale = 1 / (tokens in the whole batch)`` the loss is the batch's
    mean per token, and the gradients of micro-batches add up to the
    full-batch gradient (``pipesched.model.cross_entropy`` does the work).
    Its backward needs the logits, which the stage holding the output layer
    keeps (``accounting.loss_kept_bytes``).
    """
    vocab = logits.shape[-1]
    value, dlogits = nn.cross_entropy(logits.reshape(-1, vocab), np.asarray(labels).reshape(-1), scale, grad)
    return value, None if dlogits is None else dlogits.reshape(logits.shape)
