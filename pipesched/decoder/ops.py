"""The decoder's NumPy primitives, each forward beside its backward: counted matmuls, norms, GELU and SiLU.

Every matrix product of the decoder goes through ``matmul``, which counts
2 FLOPs per multiply-add while a ``flop_counter`` is open: the FLOPs the
layers really execute, against which the closed forms of ``accounting`` are
held. Only matrix products are counted (the convention of Kaplan et al. 2020
and Narayanan et al. 2021); norms, softmax and activations are not.

Norms keep only their input for backward and recompute their statistics
from it, as Korthikanti et al. 2022 count them (one tensor per norm).

>>> x = np.arange(6.0).reshape(2, 3)
>>> with flop_counter() as counted:
...     y = matmul(x, np.ones((3, 4)))
>>> y.shape, counted.flops  # 2 x 4 outputs, 3 multiply-adds each
((2, 4), 48)
>>> np.round(norm(x, np.ones(3), np.zeros(3), "layernorm", 0.0)[0], 4)
array([-1.2247,  0.    ,  1.2247])
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = [
    "FlopCount",
    "flop_counter",
    "matmul",
    "linear",
    "linear_weight_grad",
    "norm",
    "norm_backward_input",
    "norm_backward_weight",
    "gelu",
    "gelu_grad",
    "silu",
    "silu_grad",
]


@dataclass
class FlopCount:
    """Matrix-product FLOPs counted while a ``flop_counter`` is open."""

    flops: int = 0


_counters: list[FlopCount] = []


@contextmanager
def flop_counter() -> Iterator[FlopCount]:
    """Count the FLOPs of every ``matmul`` inside the ``with`` block (nested counters each count)."""
    counted = FlopCount()
    _counters.append(counted)
    try:
        yield counted
    finally:
        _counters.remove(counted)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (batched as ``np.matmul``), counting 2 FLOPs per multiply-add: 2 x outputs x inner size."""
    out = np.matmul(a, b)
    for counted in _counters:
        counted.flops += 2 * out.size * a.shape[-1]
    return out


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``x @ weight (+ bias)`` over the last axis; ``weight`` is (in, out)."""
    y = matmul(x, weight)
    if bias is not None:
        y += bias
    return y


def linear_weight_grad(x: np.ndarray, dy: np.ndarray, grad_weight: np.ndarray, grad_bias: np.ndarray | None) -> None:
    """W of a linear map: add ``x^T dy`` over every token to ``grad_weight``, and ``sum(dy)`` to ``grad_bias``."""
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    grad_weight += matmul(x2.T, dy2)
    if grad_bias is not None:
        grad_bias += dy2.sum(axis=0)


def _normalized(x: np.ndarray, kind: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(xhat, 1/sigma)`` over the last axis: centred for LayerNorm, not for RMSNorm."""
    if kind == "layernorm":
        centred = x - x.mean(axis=-1, keepdims=True)
        rstd = 1.0 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)
        return centred * rstd, rstd
    rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return x * rstd, rstd


def norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray | None, kind: str, eps: float) -> np.ndarray:
    """LayerNorm (Ba et al. 2016) ``(x - mean) / sqrt(var + eps) * gain + bias``, or RMSNorm (Zhang and
    Sennrich 2019) ``x / sqrt(mean(x^2) + eps) * gain``, over the last axis."""
    xhat, _ = _normalized(x, kind, eps)
    y = xhat * gain
    if bias is not None:
        y += bias
    return y


def norm_backward_input(x: np.ndarray, gain: np.ndarray, dy: np.ndarray, kind: str, eps: float) -> np.ndarray:
    """I of a norm: ``dx`` from its input ``x`` (statistics recomputed) and ``dy``.

    With ``g = dy * gain``: LayerNorm ``dx = (g - mean(g) - xhat mean(g xhat)) / sigma``;
    RMSNorm ``dx = (g - xhat mean(g xhat)) / sigma``.
    """
    xhat, rstd = _normalized(x, kind, eps)
    g = dy * gain
    dx = g - xhat * (g * xhat).mean(axis=-1, keepdims=True)
    if kind == "layernorm":
        dx -= g.mean(axis=-1, keepdims=True)
    return dx * rstd


def norm_backward_weight(
    x: np.ndarray, dy: np.ndarray, kind: str, eps: float, grad_gain: np.ndarray, grad_bias: np.ndarray | None
) -> None:
    """W of a norm: add ``sum(dy * xhat)`` to the gain's gradient and ``sum(dy)`` to the bias's."""
    xhat, _ = _normalized(x, kind, eps)
    width = x.shape[-1]
    grad_gain += (dy * xhat).reshape(-1, width).sum(axis=0)
    if grad_bias is not None:
        grad_bias += dy.reshape(-1, width).sum(axis=0)


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(z: np.ndarray) -> np.ndarray:
    """GELU in the tanh form GPT-2 uses (Hendrycks and Gimpel 2016): ``z/2 (1 + tanh(c (z + 0.044715 z^3)))``."""
    return 0.5 * z * (1.0 + np.tanh(_GELU_C * z * (1.0 + 0.044715 * z * z)))  # z * z, not z**3: pow is slow


def gelu_grad(z: np.ndarray) -> np.ndarray:
    """d gelu / dz, elementwise."""
    t = np.tanh(_GELU_C * z * (1.0 + 0.044715 * z * z))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * z * z)


def silu(z: np.ndarray) -> np.ndarray:
    """SiLU (swish), ``z sigmoid(z)``: the gate of SwiGLU (Shazeer 2020)."""
    return z / (1.0 + np.exp(-z))


def silu_grad(z: np.ndarray) -> np.ndarray:
    """d silu / dz = ``sigmoid(z) (1 + z (1 - sigmoid(z)))``, elementwise."""
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 + z * (1.0 - s))
