"""A decoder config's keys as a pydantic model (pipesched.schema): how :mod:`pipesched.decoder.config` reads a
``config.json``, a preset, or a ``DecoderConfig`` built in Python.

Apart from that module so that a run of the seed MLP, which imports the decoder's modules but builds no
decoder, never imports pydantic (issue 20: start-up). The keys and the families' defaults are described in
:mod:`pipesched.decoder.config`.

>>> from pipesched.schema import validate
>>> keys = validate(_Keys, {"n_embd": 8, "n_layer": 2, "n_head": 2, "n_positions": 4, "vocab_size": 10}, "config.json")
>>> keys.hidden_size, keys.intermediate_size, keys.position, keys.norm  # GPT-2's keys: its family's defaults
(8, 32, 'learned', 'layernorm')
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, AliasGenerator, BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic.functional_validators import ModelWrapValidatorHandler

from ..schema import Count, PositiveNumber, one_of, show
from .config import ACTIVATIONS, NORMS, POSITIONS

__all__ = ["_Keys"]

# hidden_act / activation_function values that name each activation
_ACT_NAMES = {
    "gelu": "gelu",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "silu": "silu",
    "swish": "silu",
    "swiglu": "silu",
}

# -- reading the keys -------------------------------------------------------------------

# field -> the keys a config.json spells it with, Hugging Face's first; the field's own name is read too,
# which is how a DecoderConfig built in Python is checked
_KEYS = {
    "hidden_size": ("hidden_size", "n_embd"),
    "num_layers": ("num_hidden_layers", "n_layer"),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads",),
    "intermediate_size": ("intermediate_size", "n_inner"),
    "max_positions": ("max_position_embeddings", "n_positions"),
    "tie_embeddings": ("tie_word_embeddings",),
    "activation": ("hidden_act", "activation_function"),
    "bias": ("attention_bias", "mlp_bias"),
    "norm_eps": ("layer_norm_epsilon", "rms_norm_eps", "layer_norm_eps"),
}

# field every config.json gives -> (GPT-2's key, what it is, an example), for the message when it is missing
_REQUIRED = {
    "hidden_size": ("n_embd", "the width of the residual stream", 4096),
    "num_layers": ("n_layer", "the number of decoder blocks", 32),
    "num_heads": ("n_head", "the number of attention heads", 32),
    "max_positions": ("n_positions", "the longest sequence the model takes", 4096),
    "vocab_size": (None, "the tokenizer's vocabulary size", 32000),
    "intermediate_size": (None, "the width of the MLP", 11008),  # GPT-2's n_inner has a default (below)
}

# What a config.json leaves out, by its keys' family (Hugging Face's defaults): GPT-2 (and GPT-3, which keeps
# GPT-2's architecture) has learned positions, LayerNorm, biases, GELU and tied embeddings; LLaMA has rotary
# positions (RoPE), RMSNorm, no biases, SwiGLU and untied embeddings
_GPT2 = dict(position="learned", norm="layernorm", bias=True, activation="gelu", tie_embeddings=True)
_LLAMA = dict(position="rotary", norm="rmsnorm", bias=False, activation="silu", tie_embeddings=False)
_FAMILY_DEFAULTS = {"gpt2": _GPT2, "llama": _LLAMA, "mistral": _LLAMA}  # model_type -> its family's defaults


def _keys(name: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*_KEYS.get(name, ()), name)))


def _activation(value: Any) -> str:
    if not isinstance(value, str) or value not in _ACT_NAMES:
        raise ValueError(
            "is not an activation pipesched models; use gelu (or GPT-2's gelu_new) for a GELU MLP, or silu for SwiGLU"
        )
    return _ACT_NAMES[value]


def _divisors(n: int) -> str:
    found = [str(d) for d in range(1, n + 1) if n % d == 0]
    return ", ".join(found[:-1]) + f" or {found[-1]}" if len(found) > 1 else found[0]


def _with_defaults(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` with what its keys' family leaves out, and per field the key the file gives it under."""
    data = {k: v for k, v in data.items() if v is not None}  # Hugging Face writes null for "the default"
    model_type = data.get("model_type")
    if model_type is not None and model_type not in list(_FAMILY_DEFAULTS):  # a list: a JSON value may be unhashable
        raise ValueError(
            f"model_type: {show(model_type)} is not a decoder pipesched models; use one of "
            f"{', '.join(_FAMILY_DEFAULTS)}, or drop model_type to take the defaults of the keys' family"
        )
    biases = {k: data[k] for k in ("attention_bias", "mlp_bias") if k in data}
    if len(biases) == 2 and biases["attention_bias"] != biases["mlp_bias"]:  # two of Hugging Face's keys, one here
        raise ValueError(
            f"attention_bias and mlp_bias are {show(biases)}; pipesched's decoder has biases on every linear map "
            "or on none, so set both to true or both to false"
        )
    family = _FAMILY_DEFAULTS.get(model_type or "") or (
        _GPT2 if "n_embd" in data and "hidden_size" not in data else _LLAMA
    )
    key: dict[str, str] = {}
    for name in _Keys.model_fields:
        given = [(k, data[k]) for k in _keys(name) if k in data]
        for k, v in given[1:]:
            if v != given[0][1]:
                raise ValueError(
                    f"{given[0][0]} {show(given[0][1])} and {k} {show(v)} disagree; keep one of the two keys"
                )
        if given:
            key[name] = given[0][0]
        elif name in _REQUIRED and not (name == "intermediate_size" and family is _GPT2):
            gpt2_key, what, example = _REQUIRED[name]
            also = f" (or GPT-2's {gpt2_key!r})" if gpt2_key else ""
            raise ValueError(f'no {_keys(name)[0]!r}{also}; add {what}, e.g. "{_keys(name)[0]}": {example}')
    defaults = {**family, "num_kv_heads": data[key["num_heads"]]}  # no grouped-query attention unless given
    if family is _GPT2:
        hidden = data[key["hidden_size"]]  # GPT-2's d_ff = 4 d_model; a bad width passes, to be named by its key
        defaults["intermediate_size"] = 4 * hidden if isinstance(hidden, int) else hidden
    data.update({name: value for name, value in defaults.items() if name not in key})
    return data, key


class _Keys(BaseModel):
    """DecoderConfig's fields as a config.json gives them, each checked by its type, then together.

    A config.json carries many keys pipesched does not model (dropout, ``rope_scaling``, ``torch_dtype``):
    they are ignored, not refused. Each field is read under any of its spellings (``_KEYS``).
    """

    model_config = ConfigDict(
        strict=True, frozen=True, alias_generator=AliasGenerator(validation_alias=lambda f: AliasChoices(*_keys(f)))
    )

    hidden_size: Count
    num_layers: Count
    num_heads: Count
    num_kv_heads: Count
    intermediate_size: Count
    vocab_size: Count
    max_positions: Count
    tie_embeddings: bool
    activation: Annotated[str, BeforeValidator(_activation)]
    position: Annotated[str, one_of(POSITIONS)]
    norm: Annotated[str, one_of(NORMS)]
    bias: bool
    norm_eps: PositiveNumber | None = None  # None: DecoderConfig's default
    rope_theta: PositiveNumber | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _read(cls, data: dict[str, Any], handler: ModelWrapValidatorHandler[_Keys]) -> _Keys:
        """The family's defaults filled in, each key checked by pydantic, then the sizes checked together."""
        data, key = _with_defaults(data)
        keys = handler(data)
        # hidden_size and num_heads are always given; num_kv_heads is, when it can fail to divide
        hidden, heads, kv = keys.hidden_size, keys.num_heads, keys.num_kv_heads
        if hidden % heads:
            raise ValueError(
                f"{key['num_heads']}: {heads} does not divide {key['hidden_size']} {hidden}; "
                f"use a number of heads that divides {hidden}"
            )
        if heads % kv:
            raise ValueError(
                f"{key['num_kv_heads']}: {kv} does not divide {key['num_heads']} {heads}; "
                f"use a divisor of {heads} ({_divisors(heads)})"
            )
        if "head_dim" in data and data["head_dim"] != hidden // heads:
            raise ValueError(
                f"head_dim: {show(data['head_dim'])} differs from {key['hidden_size']} / {key['num_heads']} "
                f"= {hidden // heads}; pipesched's decoder has heads of hidden_size / num_attention_heads, "
                "so drop head_dim or make it agree"
            )
        if data.get("activation", keys.activation) != keys.activation:  # Hugging Face's names are for files
            raise ValueError(f"activation: {show(data['activation'])} is not one of {', '.join(ACTIVATIONS)}")
        if keys.position == "rotary" and (hidden // heads) % 2:
            raise ValueError(
                f"{key['num_heads']}: {heads} heads make heads of odd width {hidden // heads}, "
                "which rotary embeddings cannot rotate in pairs; use a head count that leaves an even width"
            )
        return keys
