"""Transformer decoders (GPT-, LLaMA- and Mistral-style) from a config, with real NumPy numerics and closed forms.

- ``config``      ``DecoderConfig`` from a Hugging Face-style config.json or a named preset;
- ``ops``         counted matmuls, norms and activations, forward beside backward;
- ``attention``   the causal attention core (multi-head or grouped-query) and RoPE;
- ``layers``      embedding, decoder block, final norm, output layer and loss: forward, I, W;
- ``model``       the chain of layers, its parameters and ties, token data, the reference gradient;
- ``accounting``  parameters, FLOPs, activation and optimizer bytes in closed form, with sources;
- ``workload``    a decoder split into stages as the engine's workload (real NumPy, exact gradients);
- ``tensor``      one device's share under tensor (and sequence) parallelism, and its collectives' cost.

The engine runs a decoder through ``workload.DecoderWorkload``; not yet wired
into the command line (``pipesched run --model``). What a workload over these layers has, per
layer of the chain (a node of the layer graph) and per micro-batch of b
sequences of s tokens: ``forward`` -> (output, kept arrays), ``backward_input``
-> (input gradient, arrays W needs), ``backward_weight`` adding into a dict of
gradients; ``param_count`` (parameters role; gradients the same count;
optimizer state per ``accounting.adam_bytes_per_parameter``), ``kept_bytes``
(activations role, in any dtype's element size, byte-equal to the real
arrays at 8), ``deferred_bytes`` (deferred-W buffers) and ``flops`` (cost
model). Activations and gradients between layers are (b, s, h) arrays; the
embedding takes token ids, the output layer yields (b, s, V) logits, and the
last stage also keeps the logits for the loss (``accounting.loss_kept_bytes``).
``DecoderModel.ties`` names the embedding/output pair whose gradients must be
summed across their two devices before the step.

>>> from pipesched.decoder import DecoderModel, make_tokens, full_batch_gradients, preset
>>> model = DecoderModel.from_config(preset("tiny-gpt"), seed=0)
>>> inputs, labels = make_tokens(model.config, batch=2, seq_len=8)
>>> loss, grads = full_batch_gradients(model, inputs, labels)
>>> import math; abs(loss - math.log(256)) < 0.05  # near-uniform predictions at the start: about ln V
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:  # the names as the type checker sees them; at run time each loads on first use (below)
    from .accounting import adam_bytes_per_parameter, total_parameters
    from .config import DecoderConfig, load_config, preset, preset_names
    from .layers import Block, DecoderLayer, Embedding, FinalNorm, Output, cross_entropy
    from .model import DecoderModel, Tie, full_batch_gradients, make_tokens

#: Each public name and the submodule that defines it. They load on first use, so that a run of the seed MLP,
#: which imports ``decoder.assemble`` and ``decoder.tensor`` to check its flags, does not import the layers,
#: the model and their NumPy numerics (issue 20: start-up), as ``pipesched.balance`` does for networkx.
_HOME = {
    "adam_bytes_per_parameter": "accounting",
    "total_parameters": "accounting",
    "DecoderConfig": "config",
    "load_config": "config",
    "preset": "config",
    "preset_names": "config",
    "Block": "layers",
    "DecoderLayer": "layers",
    "Embedding": "layers",
    "FinalNorm": "layers",
    "Output": "layers",
    "cross_entropy": "layers",
    "DecoderModel": "model",
    "Tie": "model",
    "full_batch_gradients": "model",
    "make_tokens": "model",
}


#: PEP 562: a public name's submodule imported the first time the name is asked for
__getattr__ = lazy_attributes(__name__, _HOME)


__all__ = [
    "DecoderConfig",
    "load_config",
    "preset",
    "preset_names",
    "DecoderLayer",
    "Embedding",
    "Block",
    "FinalNorm",
    "Output",
    "cross_entropy",
    "DecoderModel",
    "Tie",
    "make_tokens",
    "full_batch_gradients",
    "total_parameters",
    "adam_bytes_per_parameter",
]
