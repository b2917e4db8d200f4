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
from typing import Any, NoReturn

from ..errors import ConfigError

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
_GPT2_TYPES = ("gpt2",)
_LLAMA_TYPES = ("llama", "mistral")


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
        _check({f.name: getattr(self, f.name) for f in fields(self)}, {}, f"DecoderConfig {self.name!r}")

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
        values, keys = _read(data, where)
        _check(values, keys, where)
        return cls(**values, name=name or where)

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

# field -> (Hugging Face key, GPT-2 key or None, what the number is, for the "missing" message)
_SIZES = {
    "hidden_size": ("hidden_size", "n_embd", "the width of the residual stream"),
    "num_layers": ("num_hidden_layers", "n_layer", "the number of decoder blocks"),
    "num_heads": ("num_attention_heads", "n_head", "the number of attention heads"),
    "max_positions": ("max_position_embeddings", "n_positions", "the longest sequence the model takes"),
    "vocab_size": ("vocab_size", None, "the tokenizer's vocabulary size"),
}


def _show(value: Any) -> str:
    """A value as JSON writes it (true, not True), for messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _pick(data: dict[str, Any], hf: str, gpt2: str | None, where: str) -> tuple[str, Any] | None:
    """The (key, value) given under either spelling; both given must agree."""
    given = [(k, data[k]) for k in (hf, gpt2) if k is not None and k in data and data[k] is not None]
    if len(given) == 2 and given[0][1] != given[1][1]:
        (k1, v1), (k2, v2) = given
        raise ConfigError(f"{where}: {k1} {_show(v1)} and {k2} {_show(v2)} disagree; keep one of the two keys")
    return given[0] if given else None


def _read(data: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Fields and, per field, the key it was read from (for messages)."""
    model_type = data.get("model_type")
    if model_type is not None and model_type not in _GPT2_TYPES + _LLAMA_TYPES:
        raise ConfigError(
            f"{where}: model_type: {_show(model_type)} is not a decoder pipesched models; use one of "
            f"{', '.join(_GPT2_TYPES + _LLAMA_TYPES)}, or drop model_type to take the defaults of the keys' family"
        )
    gpt2 = model_type in _GPT2_TYPES or (model_type is None and "n_embd" in data and "hidden_size" not in data)
    values: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for attr, (hf, g2, what) in _SIZES.items():
        found = _pick(data, hf, g2, where)
        if found is None:
            spelled = f"{hf!r} (or GPT-2's {g2!r})" if g2 else repr(hf)
            raise ConfigError(f'{where}: no {spelled}; add {what}, e.g. "{hf}": {_EXAMPLES[attr]}')
        keys[attr], values[attr] = found
    found = _pick(data, "num_key_value_heads", None, where)
    keys["num_kv_heads"], values["num_kv_heads"] = found or (keys["num_heads"], values["num_heads"])
    found = _pick(data, "intermediate_size", "n_inner", where)
    if found is not None:
        keys["intermediate_size"], values["intermediate_size"] = found
    elif gpt2:
        # GPT-2's n_inner defaults to 4 x n_embd (Radford et al. 2019; GPT-3 keeps d_ff = 4 d_model);
        # a bad n_embd passes through, for its own message
        hidden = values["hidden_size"]
        keys["intermediate_size"], values["intermediate_size"] = (
            keys["hidden_size"],
            4 * hidden if _whole(hidden) else hidden,
        )
    else:
        raise ConfigError(
            f"{where}: no 'intermediate_size'; add the width of the MLP, e.g. \"intermediate_size\": 11008"
        )
    tie = data.get("tie_word_embeddings")
    keys["tie_embeddings"] = "tie_word_embeddings"
    values["tie_embeddings"] = gpt2 if tie is None else tie  # Hugging Face's defaults: GPT-2 ties, LLaMA does not
    act_key = "hidden_act" if "hidden_act" in data else "activation_function"
    act = data.get(act_key, "gelu_new" if gpt2 else "silu")
    if not isinstance(act, str) or act not in _ACT_NAMES:
        raise ConfigError(
            f"{where}: {act_key}: {_show(act)} is not an activation pipesched models; "
            "use gelu (or GPT-2's gelu_new) for a GELU MLP, or silu for SwiGLU"
        )
    keys["activation"], values["activation"] = act_key, _ACT_NAMES[act]
    values["position"] = "learned" if gpt2 else "rotary"
    values["norm"] = "layernorm" if gpt2 else "rmsnorm"
    values["bias"] = gpt2
    if not gpt2:
        biases = {k: data[k] for k in ("attention_bias", "mlp_bias") if k in data}
        if any(not isinstance(v, bool) for v in biases.values()) or len(set(biases.values())) > 1:
            raise ConfigError(
                f"{where}: attention_bias and mlp_bias are {_show(biases)}; pipesched's decoder has biases on "
                "every linear map or on none, so set both to true or both to false"
            )
        values["bias"] = next(iter(biases.values()), False)
        keys["bias"] = "attention_bias"
    eps_key = next((k for k in ("layer_norm_epsilon", "rms_norm_eps", "layer_norm_eps") if k in data), None)
    if eps_key is not None:
        keys["norm_eps"], values["norm_eps"] = eps_key, data[eps_key]
    if "rope_theta" in data:
        keys["rope_theta"], values["rope_theta"] = "rope_theta", data["rope_theta"]
    head_dim = data.get("head_dim")
    hidden, heads = values["hidden_size"], values["num_heads"]
    if head_dim is not None and _whole(hidden) and _whole(heads) and hidden % heads == 0:
        if head_dim != hidden // heads:
            raise ConfigError(
                f"{where}: head_dim: {_show(head_dim)} differs from {keys['hidden_size']} / {keys['num_heads']} "
                f"= {hidden // heads}; pipesched's decoder has heads of hidden_size / num_attention_heads, "
                "so drop head_dim or make it agree"
            )
    return values, keys


_EXAMPLES = {
    "hidden_size": 4096,
    "num_layers": 32,
    "num_heads": 32,
    "max_positions": 4096,
    "vocab_size": 32000,
}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _divisors(n: int) -> str:
    found = [str(d) for d in range(1, n + 1) if n % d == 0]
    return ", ".join(found[:-1]) + f" or {found[-1]}" if len(found) > 1 else found[0]


def _check(values: dict[str, Any], keys: dict[str, str], where: str) -> None:
    """Every value in range, heads dividing what they split; each failure names its key."""

    def key(attr: str) -> str:
        return keys.get(attr, attr)

    for attr in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size"):
        if not _whole(values[attr]):
            raise ConfigError(f"{where}: {key(attr)}: {_show(values[attr])} is not a whole number of at least 1")
    if not _whole(values["max_positions"]):
        raise ConfigError(
            f"{where}: {key('max_positions')}: {_show(values['max_positions'])} is not a whole number of at least 1"
        )
    hidden, heads, kv = values["hidden_size"], values["num_heads"], values["num_kv_heads"]
    if hidden % heads:
        raise ConfigError(
            f"{where}: {key('num_heads')}: {heads} does not divide {key('hidden_size')} {hidden}; "
            f"use a number of heads that divides {hidden}"
        )
    if heads % kv:
        raise ConfigError(
            f"{where}: {key('num_kv_heads')}: {kv} does not divide {key('num_heads')} {heads}; "
            f"use a divisor of {heads} ({_divisors(heads)})"
        )
    for attr, options in (("activation", ACTIVATIONS), ("position", POSITIONS), ("norm", NORMS)):
        if values[attr] not in options:
            raise ConfigError(f"{where}: {key(attr)}: {_show(values[attr])} is not one of {', '.join(options)}")
    if values["position"] == "rotary" and (hidden // heads) % 2:
        raise ConfigError(
            f"{where}: {key('num_heads')}: {heads} heads make heads of odd width {hidden // heads}, "
            "which rotary embeddings cannot rotate in pairs; use a head count that leaves an even width"
        )
    for attr in ("tie_embeddings", "bias"):
        if not isinstance(values[attr], bool):
            raise ConfigError(f"{where}: {key(attr)}: {_show(values[attr])} is not true or false; write one of them")
    for attr in ("norm_eps", "rope_theta"):
        value = values.get(attr)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ConfigError(f"{where}: {key(attr)}: {_show(value)} is not a positive finite number")


# -- presets ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _presets() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("presets.json").read_text(encoding="utf-8")
    return json.loads(text)["presets"]


def preset_names() -> list[str]:
    """The names of the built-in presets, sorted.

    >>> preset_names()
    ['gpt3-175b', 'llama2-70b', 'llama2-7b', 'llama3-8b', 'tiny-gpt']
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
