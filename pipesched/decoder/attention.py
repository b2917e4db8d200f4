"""Causal self-attention's core in NumPy, multi-head or grouped-query, and rotary position embeddings (RoPE).

The core takes queries ``q`` of shape (batch, heads, seq, head_dim) and keys
and values ``k``, ``v`` of shape (batch, kv_heads, seq, head_dim). With
grouped-query attention (Ainslie et al. 2023) each key/value head serves
``heads / kv_heads`` consecutive query heads (head ``h`` reads key/value head
``h // group``, as Hugging Face's ``repeat_kv`` does); ``kv_heads = heads`` is
plain multi-head attention (Vaswani et al. 2017). The causal mask lets
position t attend to positions 0..t only.

All of the core's backward is input-gradient (I): it has no parameters. Its
forward is two batched matmuls (scores, then the weighted values) and its
backward four (2x the forward); backward needs ``q``, ``k``, ``v`` and the
softmax output ``p``, or recomputes ``p`` from ``q`` and ``k`` (selective
recompute, Korthikanti et al. 2022, section 4.2).

RoPE (Su et al. 2021) rotates each query and key in pairs of coordinates by
angles that grow with the position, in the "rotate half" layout of LLaMA's
Hugging Face port: coordinate i pairs with i + head_dim/2. It has no
parameters and is orthogonal, so its backward is the inverse rotation.

>>> rng = np.random.default_rng(0)
>>> q, k, v = rng.standard_normal((1, 4, 3, 2)), rng.standard_normal((1, 2, 3, 2)), rng.standard_normal((1, 2, 3, 2))
>>> out, p = causal_attention(q, k, v)
>>> out.shape, p.shape, bool(p[0, 0, 0, 1] == 0.0)  # position 0 sees only itself
((1, 4, 3, 2), (1, 4, 3, 3), True)
"""

from __future__ import annotations

import math

import numpy as np

from .ops import matmul

__all__ = [
    "causal_attention",
    "attention_probabilities",
    "causal_attention_backward",
    "rope_tables",
    "rope",
    "rope_backward",
]


def _grouped(x: np.ndarray, kv_heads: int) -> np.ndarray:
    """(b, heads, s, d) -> (b, kv_heads, group, s, d): query heads grouped by the key/value head they read."""
    b, heads, s, d = x.shape
    return x.reshape(b, kv_heads, heads // kv_heads, s, d)


def attention_probabilities(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Softmax of the causally masked scores ``q k^T / sqrt(head_dim)``: (b, heads, s, s)."""
    b, heads, s, d = q.shape
    scores = matmul(_grouped(q, k.shape[1]), k[:, :, None].swapaxes(-1, -2)) * (1.0 / math.sqrt(d))
    causal = np.tril(np.ones((s, s), dtype=bool))
    scores = np.where(causal, scores, -np.inf)  # exp(-inf) = 0: nothing flows from later positions
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return p.reshape(b, heads, s, s)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``softmax(mask(q k^T / sqrt(d))) v`` per head: the context (b, heads, s, d) and the probabilities ``p``."""
    p = attention_probabilities(q, k)
    b, heads, s, d = q.shape
    kv = k.shape[1]
    out = matmul(_grouped(p, kv), v[:, :, None])
    return out.reshape(b, heads, s, d), p


def causal_attention_backward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, p: np.ndarray | None, dout: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """I of the core: ``(dq, dk, dv)`` from ``dout``; ``p=None`` recomputes the probabilities first.

    Softmax backward: ``ds = p (dp - sum(dp p))``; a key/value head's gradients
    sum over the query heads of its group.
    """
    if p is None:
        p = attention_probabilities(q, k)
    b, heads, s, d = q.shape
    kv = k.shape[1]
    pg, dg = _grouped(p, kv), _grouped(dout, kv)
    dp = matmul(dg, v[:, :, None].swapaxes(-1, -2))
    dv = matmul(pg.swapaxes(-1, -2), dg).sum(axis=2)
    ds = pg * (dp - (dp * pg).sum(axis=-1, keepdims=True))
    ds *= 1.0 / math.sqrt(d)
    dq = matmul(ds, k[:, :, None]).reshape(b, heads, s, d)
    dk = matmul(ds.swapaxes(-1, -2), _grouped(q, kv)).sum(axis=2)
    return dq, dk, dv


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` of the angles ``t / theta^(2i/head_dim)``, each (seq_len, head_dim), halves repeated."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(seq_len, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate ``x`` (..., seq, head_dim) by position: ``x cos + rotate_half(x) sin``."""
    return x * cos + _rotate_half(x) * sin


def rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """The transpose (inverse) rotation: ``dy cos - rotate_half(dy sin)``, since rotate_half^T = -rotate_half."""
    return dy * cos - _rotate_half(dy * sin)
