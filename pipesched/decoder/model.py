"""A whole decoder as a chain of layers with its parameters, tied matrices, token data and reference gradient.

The chain is ``Embedding, Block 0 .. Block L-1, FinalNorm, Output`` and the
loss after it; ``forward``, ``backward_input`` and ``backward_weight`` run
any contiguous run of it (a pipeline stage), as ``pipesched.model`` does for
the MLP. With tied embeddings the output layer's ``weight`` is the same
array as the embedding's ``token``; each layer still accumulates its own
gradient, and ``tie_gradients`` sums the pair, which is what a step must
apply to the one matrix (``ties`` names the pair for an engine that holds
the two on different devices).

>>> from pipesched.decoder.config import preset
>>> model = DecoderModel.from_config(preset("tiny-gpt"), seed=0)
>>> [str(layer) for layer in model.layers[:2]], len(model.layers), model.parameter_count
(['Embedding(256x64, learned positions)', 'Block 0(64, 4 heads MHA, gelu)'], 11, 424576)
>>> model.ties
(Tie(first=(0, 'token'), second=(10, 'weight')),)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .config import DecoderConfig
from .layers import Arrays, Block, DecoderLayer, Embedding, FinalNorm, Output, cross_entropy

__all__ = [
    "Tie",
    "DecoderModel",
    "decoder_layers",
    "forward",
    "backward_input",
    "backward_weight",
    "make_tokens",
    "full_batch_gradients",
]


@dataclass(frozen=True)
class Tie:
    """Two parameters that are one matrix, as (layer index, parameter name): their gradients are summed."""

    first: tuple[int, str]
    second: tuple[int, str]


def decoder_layers(config: DecoderConfig) -> tuple[DecoderLayer, ...]:
    """The chain of layers of ``config``: embedding, the blocks, final norm, output."""
    blocks = tuple(Block(config, index=i) for i in range(config.num_layers))
    return (Embedding(config), *blocks, FinalNorm(config), Output(config))


@dataclass
class DecoderModel:
    """A decoder's layers, their parameters (one dict per layer) and its ties."""

    config: DecoderConfig
    layers: tuple[DecoderLayer, ...]
    params: list[Arrays]
    ties: tuple[Tie, ...]

    @classmethod
    def from_config(cls, config: DecoderConfig, seed: int = 0, std: float = 0.02) -> "DecoderModel":
        """Parameters drawn layer by layer from ``seed``; a tied output layer shares the token table."""
        rng = np.random.default_rng(seed)
        layers = decoder_layers(config)
        params = [layer.init(rng, std) for layer in layers]
        ties: tuple[Tie, ...] = ()
        if config.tie_embeddings:
            last = len(layers) - 1
            params[last]["weight"] = params[0]["token"]  # one array: an update to either is an update to both
            ties = (Tie((0, "token"), (last, "weight")),)
        return cls(config, layers, params, ties)

    @property
    def parameter_count(self) -> int:
        """Parameters counted from the arrays, each tied matrix once."""
        held = sum(layer.param_count for layer in self.layers)
        return held - sum(self.params[t.second[0]][t.second[1]].size for t in self.ties)

    def zeros_like_params(self) -> list[Arrays]:
        """Gradients of zero, one dict per layer (tied matrices get one each)."""
        return [layer.zeros() for layer in self.layers]

    def tie_gradients(self, grads: list[Arrays]) -> list[Arrays]:
        """``grads`` with each tied pair replaced, in both places, by the pair's sum (the gradient of the matrix)."""
        out = [dict(g) for g in grads]
        for tie in self.ties:
            (i, a), (j, b) = tie.first, tie.second
            total = grads[i][a] + grads[j][b]
            out[i][a], out[j][b] = total, total
        return out


def forward(
    layers: Sequence[DecoderLayer], params: Sequence[Arrays], x: Any, recompute: str = "none"
) -> tuple[np.ndarray, list[Arrays]]:
    """Run ``x`` through a run of layers: the output and each layer's kept arrays."""
    kept = []
    for layer, p in zip(layers, params):
        x, k = layer.forward(p, x, recompute)
        kept.append(k)
    return x, kept


def backward_input(
    layers: Sequence[DecoderLayer], params: Sequence[Arrays], kept: Sequence[Arrays], dy: np.ndarray
) -> tuple[np.ndarray | None, list[Arrays]]:
    """I over a run of layers, last to first: the input gradient (None from the embedding) and each W's arrays."""
    deferred: list[Arrays] = [{} for _ in layers]
    g: np.ndarray | None = dy
    for i in reversed(range(len(layers))):
        assert g is not None  # only the embedding, the first layer, returns no input gradient
        g, deferred[i] = layers[i].backward_input(params[i], kept[i], g)
    return g, deferred


def backward_weight(
    layers: Sequence[DecoderLayer], params: Sequence[Arrays], deferred: Sequence[Arrays], grads: Sequence[Arrays]
) -> None:
    """W over a run of layers: add every parameter gradient into ``grads``."""
    for layer, p, d, g in zip(layers, params, deferred, grads):
        layer.backward_weight(p, d, g)


def make_tokens(config: DecoderConfig, batch: int, seq_len: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable token data from a fixed seed: ``(inputs, labels)``, each (batch, seq_len) int64.

    Sequences follow a fixed random successor table (each token's successor
    with probability 0.9, else a uniform token), and the labels are the
    inputs shifted by one: next-token prediction.

    >>> from pipesched.decoder.config import preset
    >>> inputs, labels = make_tokens(preset("tiny-gpt"), batch=2, seq_len=4)
    >>> inputs.shape, bool((inputs[:, 1:] == labels[:, :-1]).all())
    ((2, 4), True)
    """
    config.check_sequence(seq_len)
    rng = np.random.default_rng(seed + 2_000_003)  # apart from the weights' stream
    successor = rng.permutation(config.vocab_size)
    tokens = np.empty((batch, seq_len + 1), dtype=np.int64)
    tokens[:, 0] = rng.integers(config.vocab_size, size=batch)
    for t in range(seq_len):
        follow = rng.random(batch) < 0.9
        tokens[:, t + 1] = np.where(follow, successor[tokens[:, t]], rng.integers(config.vocab_size, size=batch))
    return tokens[:, :-1], tokens[:, 1:]


def full_batch_gradients(model: DecoderModel, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, list[Arrays]]:
    """The reference: one unpartitioned forward and backward of the whole batch; tied gradients summed."""
    logits, kept = forward(model.layers, model.params, inputs)
    loss, dlogits = cross_entropy(logits, labels, 1.0 / labels.size)
    assert dlogits is not None
    _, deferred = backward_input(model.layers, model.params, kept, dlogits)
    grads = model.zeros_like_params()
    backward_weight(model.layers, model.params, deferred, grads)
    return loss, model.tie_gradients(grads)
