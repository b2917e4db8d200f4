"""Transformer decoders (GPT-, LLaMA- and Mistral-style) from a config, with real NumPy numerics and closed forms.

- ``config``      ``DecoderConfig`` from a Hugging Face-style config.json or a named preset;
- ``ops``         counted matmuls, norms and activations, forward beside backward;
- ``attention``   the causal attention core (multi-head or grouped-query) and RoPE;
- ``layers``      embedding, decoder block, final norm, output layer and loss: forward, I, W;
- ``model``       the chain of layers, its parameters and ties, token data, the reference gradient;
- ``accounting``  parameters, FLOPs, activation and optimizer bytes in closed form, with sources.

>>> from pipesched.decoder import DecoderModel, make_tokens, full_batch_gradients, preset
>>> model = DecoderModel.from_config(preset("tiny-gpt"), seed=0)
>>> inputs, labels = make_tokens(model.config, batch=2, seq_len=8)
>>> loss, grads = full_batch_gradients(model, inputs, labels)
>>> import math; abs(loss - math.log(256)) < 0.05  # near-uniform predictions at the start: about ln V
True
"""

from .accounting import adam_bytes_per_parameter, total_parameters
from .config import DecoderConfig, load_config, preset, preset_names
from .layers import Block, DecoderLayer, Embedding, FinalNorm, Output, cross_entropy
from .model import DecoderModel, Tie, full_batch_gradients, make_tokens

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
