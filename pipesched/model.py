"""NumPy model: dense layers whose forward, input-gradient (I) and weight-gradient (W) sit side by side.

A model is a chain of dense layers, each optionally followed by a ReLU. The
three passes are separate functions because zero-bubble schedules run the
input-gradient and the weight-gradient of a stage at different times:

- ``forward``          x -> y, keeping the activations backward needs;
- ``backward_input``   dy -> dx, keeping what the weight-gradient needs (I);
- ``backward_weight``  -> dW, db for every layer (W).

Losses are normalised by the size of the *whole* batch, so that the gradients
of micro-batches of any sizes simply add up to the full-batch gradient.

>>> model = Model.from_sizes([4, 3, 2], seed=0)
>>> [str(layer) for layer in model.layers]
['Dense(4->3, relu)', 'Dense(3->2)']
>>> y, acts = forward(model.layers, model.params, np.ones((5, 4)))
>>> y.shape, len(acts)
((5, 2), 3)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ConfigError

__all__ = [
    "Layer",
    "Model",
    "Params",
    "parse_layers",
    "layers_from_widths",
    "forward",
    "backward_input",
    "backward_weight",
    "keeps_output",
    "saved_widths",
    "mse",
    "cross_entropy",
    "LOSSES",
    "make_data",
    "full_batch_gradients",
]

#: Longest chain ``--layers`` accepts; far beyond any pipeline, short of exhausting memory.
MAX_LAYERS = 100_000

#: Per layer, its weight (in x out) and bias (out,).
Params = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Layer:
    """One dense layer ``y = x @ W + b``, followed by a ReLU when ``relu``."""

    in_features: int
    out_features: int
    relu: bool

    def forward_flops(self, rows: int) -> int:
        """Multiply-adds of the forward matmul, counted as 2 FLOPs each."""
        return 2 * rows * self.in_features * self.out_features

    @property
    def param_count(self) -> int:
        return (self.in_features + 1) * self.out_features

    @property
    def needs_output(self) -> bool:
        """Its backward needs its output when a ReLU follows (the mask)."""
        return self.relu

    def kept_bytes(self, rows: int, itemsize: int) -> int:
        """Bytes its backward keeps from the forward: its input (``saved_widths``)."""
        return rows * self.in_features * itemsize

    def output_bytes(self, rows: int, itemsize: int) -> int:
        """Bytes of its output, ``rows`` x ``out_features``."""
        return rows * self.out_features * itemsize

    def __str__(self) -> str:
        act = ", relu" if self.relu else ""
        return f"Dense({self.in_features}->{self.out_features}{act})"


def parse_layers(text: str) -> list[int]:
    """Parse a width list such as ``128,256x10,10`` (``WxN`` repeats W N times).

    >>> parse_layers("128,256x3,10")
    [128, 256, 256, 256, 10]
    """
    widths: list[int] = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:x(\d+))?", part)
        if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < 1):
            raise ConfigError(
                f"--layers {text!r} is malformed at {part!r}; write positive widths "
                "separated by commas, WxN for N repeats, e.g. 128,256x10,10"
            )
        repeat = int(match.group(2) or 1)
        if len(widths) + repeat > MAX_LAYERS:
            raise ConfigError(
                f"--layers {text!r} asks for more than {MAX_LAYERS} layers; give a model of at most {MAX_LAYERS}"
            )
        widths += [int(match.group(1))] * repeat
    if len(widths) < 2:
        raise ConfigError(
            f"--layers {text!r} gives {len(widths)} width; give at least an input and an output width, e.g. 128,10"
        )
    return widths


def layers_from_widths(widths: Sequence[int]) -> tuple[Layer, ...]:
    """The layers of a chain of these widths: ReLU after every layer but the last."""
    return tuple(Layer(widths[i], widths[i + 1], relu=i < len(widths) - 2) for i in range(len(widths) - 1))


@dataclass
class Model:
    """A chain of dense layers (ReLU after every layer but the last) and its parameters."""

    layers: tuple[Layer, ...]
    params: Params

    @classmethod
    def from_sizes(cls, widths: Sequence[int], seed: int = 0, dtype: type = np.float64) -> "Model":
        """He-initialised model with ``len(widths) - 1`` layers, deterministic in ``seed``."""
        rng = np.random.default_rng(seed)
        layers = layers_from_widths(widths)
        params: Params = [
            (
                (
                    rng.standard_normal((layer.in_features, layer.out_features)) * np.sqrt(2.0 / layer.in_features)
                ).astype(dtype, copy=False),
                np.zeros(layer.out_features, dtype=dtype),
            )
            for layer in layers
        ]
        return cls(layers, params)

    @property
    def widths(self) -> list[int]:
        return [self.layers[0].in_features] + [layer.out_features for layer in self.layers]

    def zeros_like_params(self) -> Params:
        return [(np.zeros_like(w), np.zeros_like(b)) for w, b in self.params]


def forward(layers: Sequence[Layer], params: Params, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run ``x`` through ``layers``; return the output and every activation ``[x0, ..., xn]``.

    ``acts[i]`` is the input of layer ``i`` and ``acts[-1]`` the output; backward
    needs ``acts[i]`` for the weight-gradient and ``acts[i + 1] > 0`` as the ReLU mask.
    """
    acts = [x]
    for layer, (w, b) in zip(layers, params):
        z = x @ w
        z += b
        if layer.relu:
            np.maximum(z, 0.0, out=z)
        x = z
        acts.append(x)
    return x, acts


def backward_input(
    layers: Sequence[Layer],
    params: Params,
    acts: Sequence[np.ndarray],
    dy: np.ndarray,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """Input-gradient pass (I): from ``dy`` return ``dx`` and each layer's pre-activation gradient.

    ``need_dx=False`` skips the last matmul, for the first stage whose input is data.
    """
    n = len(layers)
    dzs: list[np.ndarray] = [dy] * n
    g = dy
    for i in reversed(range(n)):
        if layers[i].relu:
            g = g * (acts[i + 1] > 0)
        dzs[i] = g
        if i > 0 or need_dx:
            g = g @ params[i][0].T
    return (g if need_dx else None), dzs


def backward_weight(acts: Sequence[np.ndarray], dzs: Sequence[np.ndarray], grads: Params) -> None:
    """Weight-gradient pass (W): add each layer's ``dW = x^T dz`` and ``db = sum(dz)`` into ``grads``."""
    for (gw, gb), x, dz in zip(grads, acts, dzs):
        gw += x.T @ dz
        gb += dz.sum(axis=0)


def keeps_output(layers: Sequence[Layer], last_stage: bool) -> bool:
    """Whether a stage keeps its output for backward: a final ReLU needs it as its mask, the loss as its input.

    >>> keeps_output([Layer(4, 3, True)], last_stage=False), keeps_output([Layer(3, 2, False)], last_stage=False)
    (True, False)
    """
    return layers[-1].relu or last_stage


def saved_widths(layers: Sequence[Layer], keep_output: bool) -> int:
    """Sum of the widths of the activations one forward keeps for backward (per row).

    The layer inputs always; the output too when a ReLU mask or the loss needs it.

    >>> saved_widths([Layer(4, 3, True), Layer(3, 2, False)], keep_output=False)
    7
    """
    widths = sum(layer.in_features for layer in layers)
    return widths + (layers[-1].out_features if keep_output else 0)


LossFn = Callable[..., tuple[float, Any]]


def mse(y: np.ndarray, target: np.ndarray, scale: float, grad: bool = True) -> tuple[float, np.ndarray | None]:
    """Mean squared error per sample (mean over outputs), times ``scale`` (1 / full batch).

    ``grad=False`` skips the gradient, for a forward that needs only the value.
    """
    diff = y - target
    width = y.shape[1]
    return float(scale * np.sum(diff * diff) / width), diff * (2.0 * scale / width) if grad else None


def cross_entropy(
    y: np.ndarray, labels: np.ndarray, scale: float, grad: bool = True
) -> tuple[float, np.ndarray | None]:
    """Softmax cross-entropy of logits ``y`` against integer ``labels``, times ``scale``."""
    shifted = y - y.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = float(scale * np.sum(np.log(total[:, 0]) - shifted[rows, labels]))
    if not grad:
        return loss, None
    exp /= total
    exp[rows, labels] -= 1.0
    exp *= scale
    return loss, exp


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


def make_data(widths: Sequence[int], batch: int, loss: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic, learnable data: inputs ~ N(0, 1), targets from a fixed random teacher.

    Labels are ``argmax(x @ T)`` for cross-entropy, ``tanh(x @ T)`` for MSE.
    """
    rng = np.random.default_rng(seed + 1_000_003)  # apart from the weights' stream
    x = rng.standard_normal((batch, widths[0]))
    teacher = rng.standard_normal((widths[0], widths[-1])) / np.sqrt(widths[0])
    logits = x @ teacher
    target = np.argmax(logits, axis=1) if loss == "cross_entropy" else np.tanh(logits)
    return x, target


def full_batch_gradients(model: Model, x: np.ndarray, target: np.ndarray, loss: str) -> tuple[float, Params]:
    """The reference: one unpartitioned forward and backward over the whole batch."""
    y, acts = forward(model.layers, model.params, x)
    value, dy = LOSSES[loss](y, target, 1.0 / len(x))
    _, dzs = backward_input(model.layers, model.params, acts, dy, need_dx=False)
    grads = model.zeros_like_params()
    backward_weight(acts, dzs, grads)
    return value, grads
