"""Optimizers: the state each device holds for its parameters, and the update ``train`` applies.

``--optimizer`` names the optimizer of the training run. Its state is a
memory role of its own, ``optimizer``, held on each device for the parameters
of the stages it runs from the start of the step to its end:

- ``sgd`` (the seed MLP's default; ``train`` runs plain SGD, w ← w − lr·g):
  no state, 0 bytes.
- ``adam`` (Kingma and Ba 2015): two moments per parameter. With 16-bit
  weights (``bf16``, ``fp16``) it is mixed-precision Adam, which keeps an
  fp32 master copy of the weights and both moments in fp32: 4 + 4 + 4 = 12
  bytes per parameter (Rajbhandari et al. 2020, ZeRO, section 3.1: with the
  16-bit weights and gradients, 2 + 2 + 12 = 16 bytes per parameter). With
  ``fp32`` or ``fp64`` weights there is no master copy, and the two moments
  are in that precision: 8 or 16 bytes per parameter.

``train --optimizer adam`` runs real Adam steps in float64 (Algorithm 1 of
Kingma and Ba 2015, with bias correction; β₁ = 0.9, β₂ = 0.999, ε = 1e-8,
``--lr`` the step size α).

>>> [state_bytes_per_parameter("adam", d) for d in ("bf16", "fp16", "fp32", "fp64")]
[12, 12, 8, 16]
>>> state_bytes_per_parameter("sgd", "bf16")
0
>>> import numpy as np
>>> w = np.array([1.0]); adam = make_optimizer("adam", lr=0.1)
>>> adam.step([w], [np.array([3.0])]); w  # the first step moves each weight by lr against its gradient's sign
array([0.9])
"""

from __future__ import annotations

from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np

from .errors import ConfigError
from .precision import DTYPES, check_dtype

__all__ = [
    "OPTIMIZERS",
    "MLP_OPTIMIZER",
    "check_optimizer",
    "state_bytes_per_parameter",
    "Optimizer",
    "SGD",
    "Adam",
    "make_optimizer",
    "distinct_arrays",
]

#: The optimizers a run can name.
OPTIMIZERS = ("sgd", "adam")

#: The seed MLP's own optimizer: ``train`` has always run plain SGD.
MLP_OPTIMIZER = "sgd"

#: Precisions whose weights mixed-precision training keeps an fp32 master copy of (ZeRO, section 3.1).
_HALF = ("bf16", "fp16")


def check_optimizer(optimizer: str) -> None:
    """Raise ``ConfigError`` unless ``optimizer`` is one of ``OPTIMIZERS``."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}")


def state_bytes_per_parameter(optimizer: str, dtype: str) -> int:
    """Bytes of optimizer state per parameter for weights in ``dtype`` (see the module's text for the sources)."""
    check_optimizer(optimizer)
    check_dtype(dtype)
    if optimizer == "sgd":
        return 0
    if dtype in _HALF:  # an fp32 master copy of the weights and two fp32 moments
        return 3 * DTYPES["fp32"]
    return 2 * DTYPES[dtype]  # two moments in the weights' own precision, no master copy


class Optimizer(Protocol):
    """Updates parameters in place from their gradients, once per step."""

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None: ...


class SGD:
    """Plain stochastic gradient descent: w ← w − lr·g."""

    def __init__(self, lr: float):
        self.lr = lr

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        for w, g in zip(params, grads):
            w -= self.lr * g


class Adam:
    """Adam (Kingma and Ba 2015, Algorithm 1), with bias-corrected moments.

    m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ),
    w ← w − α·m̂/(√v̂ + ε), with the paper's defaults β₁ = 0.9, β₂ = 0.999, ε = 1e-8.
    """

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.t = 0
        self.m: list[np.ndarray] = []
        self.v: list[np.ndarray] = []

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if not self.m:  # the moments start at zero, one pair per parameter array
            self.m = [np.zeros_like(w) for w in params]
            self.v = [np.zeros_like(w) for w in params]
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        for w, g, m, v in zip(params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            w -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def distinct_arrays(
    params: Iterable[Mapping[str, np.ndarray] | Sequence[np.ndarray]],
    grads: Iterable[Mapping[str, np.ndarray] | Sequence[np.ndarray]],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every parameter array, layer by layer, paired with its gradient, each array once, for ``Optimizer.step``.

    A layer's parameters are a tuple (the MLP's weight and bias) or a dict of
    named arrays (a decoder's), and its gradients are shaped the same. A tied
    matrix is one array held by two layers (a decoder's embedding and output
    layer, ``pipesched.decoder.DecoderModel``), whose gradient is already the
    pair's sum in both places (``DecoderModel.tie_gradients``): it is stepped
    once, at its first place, so that an update is not applied twice.

    >>> shared = np.zeros(2)
    >>> params, grads = distinct_arrays([{"token": shared}, {"weight": shared}], [{"token": 1}, {"weight": 1}])
    >>> len(params), params[0] is shared
    (1, True)
    """
    seen: set[int] = set()
    out_params, out_grads = [], []
    for layer_params, layer_grads in zip(params, grads):
        if isinstance(layer_params, Mapping):
            assert isinstance(layer_grads, Mapping)  # shaped as the parameters
            pairs = [(layer_params[name], layer_grads[name]) for name in layer_params]
        else:
            assert not isinstance(layer_grads, Mapping)
            pairs = list(zip(layer_params, layer_grads))
        for array, grad in pairs:
            if id(array) not in seen:
                seen.add(id(array))
                out_params.append(array)
                out_grads.append(grad)
    return out_params, out_grads


def make_optimizer(optimizer: str, lr: float) -> Optimizer:
    """The optimizer named ``optimizer`` with learning rate (Adam: step size) ``lr``."""
    check_optimizer(optimizer)
    return SGD(lr) if optimizer == "sgd" else Adam(lr)
