"""A decoder's shape, read from a Hugging Face-style ``config.json`` or a named preset, checked key by key.

Two families of keys are read, as the files people already have spell them:
Hugging Face's ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
``num_key_value_heads``, ``intermediate_size``, ``vocab_size``,
``max_position_embeddings``, ``tie_word_embeddings``, ``hidden_act`` (LLaMA,
Mistral), and GPT-2's ``n_embd``, ``n_layer``, ``n_head``, ``n_positions``,
``n_inner`` (GPT-2, and GPT-3 which keeps GPT-2's architecture). The family
sets what a config.json does not say: a GPT-2-keyed file describes a decoder
with learned position embeddings, LayerNorm, biases, GELU and tied
embeddings; a LLaMA-keyed one rotary positions (RoPE), RMSNorm, no biases,
SwiGLU and untied embeddings. A bad value fails with its key, in the style of
the study files: ``config.json: num_key_value_heads: 3 does not divide
num_attention_heads 4; ...``.

Not modelled (they change no shape, so no count): dropout, ``rope_scaling``,
Mistral's sliding window, GPT-3's alternating locally banded sparse attention.

>>> config = preset("tiny-gpt")
>>> config.hidden_size, config.num_layers, config.head_dim, config.activation, config.tie_embeddings
(64, 8, 16, 'gelu', True)
>>> DecoderConfig.from_dict({"n_embd": 8, "n_layer": 2, "n_head": 3, "n_positions": 4, "vocab_size": 10})
Traceback (most recent call last):
pipesched.errors.ConfigError: model config: n_head: 3 does not divide n_embd 8; use a number of heads that divides 8
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any, NoReturn

from pydantic import AliasChoices, AliasGenerator, BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic.functional_validators import ModelWrapValidatorHandler

from ..errors import ConfigError
from ..schema import Count, PositiveNumber, one_of, show, validate

__all__ = [
    "DecoderConfig",
    "ACTIVATIONS",
    "POSITIONS",
    "NORMS",
    "preset",
    "preset_names",
    "preset_source",
    "load_config",
]

#: ``activation``: GELU (GPT-2's tanh form) in a two-matrix MLP, or SiLU in a gated three-matrix MLP (SwiGLU).
ACTIVATIONS = ("gelu", "silu")
#: ``position``: a learned table added to the token embedding (GPT-2), or rotary embeddings (RoPE) inside attention.
POSITIONS = ("learned", "rotary")
#: ``norm``: LayerNorm (gain and bias) or RMSNorm (gain only).
NORMS = ("layernorm", "rmsnorm")

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
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


@dataclass(frozen=True)
class DecoderConfig:
    """The shape of a pre-norm transformer decoder: sizes, and which of each variant its parts are.

    ``num_kv_heads`` below ``num_heads`` is grouped-query attention (GQA);
    ``tie_embeddings`` makes the output layer share the token embedding matrix;
    ``bias`` puts a bias on every linear map (attention and MLP), as GPT-2 does.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    tie_embeddings: bool
    activation: str = "gelu"
    position: str = "learned"
    norm: str = "layernorm"
    bias: bool = True
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    name: str = field(default="decoder", compare=False)  # names the model in messages; not part of its shape

    def __post_init__(self) -> None:
        # A config built in Python is checked like a file, its field names standing for the keys.
        validate(_Keys, {f.name: getattr(self, f.name) for f in fields(self)}, f"DecoderConfig {self.name!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, hidden_size / num_heads."""
        return self.hidden_size // self.num_heads

    @property
    def kv_size(self) -> int:
        """Width of the keys (and of the values): num_kv_heads x head_dim; hidden_size without GQA."""
        return self.num_kv_heads * self.head_dim

    def check_sequence(self, seq_len: int) -> None:
        """Refuse a sequence the model has no positions for (or an empty one).

        >>> preset("tiny-gpt").check_sequence(1000)
        Traceback (most recent call last):
        pipesched.errors.ConfigError: sequence length 1000 is longer than the 128 positions of tiny-gpt \
(max_position_embeddings); use at most 128 tokens
        """
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ConfigError(f"sequence length {seq_len!r} is not a whole number of at least 1; give e.g. 128")
        if seq_len > self.max_positions:
            raise ConfigError(
                f"sequence length {seq_len} is longer than the {self.max_positions} positions of {self.name} "
                f"(max_position_embeddings); use at most {self.max_positions} tokens"
            )

    @classmethod
    def from_dict(cls, data: Any, where: str = "model config", name: str | None = None) -> "DecoderConfig":
        """The config a Hugging Face-style dict describes; ``where`` (a path, a preset) starts every error."""
        if not isinstance(data, dict):
            kind = _JSON_KINDS.get(type(data), type(data).__name__)
            raise ConfigError(
                f"{where}: holds a JSON {kind}, not an object of config keys; "
                'write {"hidden_size": ..., ...} as in a Hugging Face config.json'
            )
        keys = validate(_Keys, data, where)
        return cls(**keys.model_dump(exclude_none=True), name=name or where)

    @classmethod
    def from_file(cls, path: str) -> "DecoderConfig":
        """The config in a JSON file at ``path`` (a Hugging Face ``config.json``)."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(
                f"model config file {path!r} does not exist; give the path to a config.json "
                f"or a preset name ({', '.join(preset_names())})"
            ) from None
        except IsADirectoryError:
            raise ConfigError(f"model config file {path!r} is a folder; give the path to its config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc}); fix the syntax") from None
        except OSError as exc:
            raise ConfigError(
                f"model config file {path!r} cannot be read ({exc.strerror}); check its permissions"
            ) from None
        # Hugging Face's layout names the model by its folder (Llama-2-7b-hf/config.json); else the file names it
        stem = os.path.splitext(os.path.basename(path))[0]
        folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
        return cls.from_dict(data, where=path, name=folder if stem == "config" and folder else stem)


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


# -- presets ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _presets() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("presets.json").read_text(encoding="utf-8")
    return json.loads(text)["presets"]


def preset_names() -> list[str]:
    """The names of the built-in presets, sorted.

    >>> preset_names()
    ['bloom-176b', 'gpt3-175b', 'llama2-70b', 'llama2-7b', 'llama3-8b', 'tiny-gpt']
    """
    return sorted(_presets())


def preset_source(name: str) -> str:
    """Where a preset's numbers come from (a paper's table, a model card)."""
    return _entry(name)["source"]


def _unknown(name: str) -> NoReturn:
    raise ConfigError(
        f"unknown model preset {name!r}; use one of {', '.join(preset_names())}, or the path to a config.json"
    )


def _entry(name: str) -> dict[str, Any]:
    entry = _presets().get(name)
    if entry is None:
        _unknown(name)
    return entry


def preset(name: str) -> DecoderConfig:
    """The built-in preset ``name``, read by the same checks as a user's file."""
    return DecoderConfig.from_dict(_entry(name)["config"], where=f"preset {name!r}", name=name)


def load_config(spec: str) -> DecoderConfig:
    """A preset name, or the path to a config.json (anything ending in .json or naming a file).

    >>> load_config("llama2-7b").num_kv_heads
    32
    """
    if spec in _presets():
        return preset(spec)
    if spec.endswith(".json") or os.path.exists(spec) or os.sep in spec:
        return DecoderConfig.from_file(spec)
    _unknown(spec)
