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
        from ..schema import validate  # pydantic: imported by a decoder's run, not by the MLP's
        from .config_file import _Keys

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
        from ..schema import validate
        from .config_file import _Keys

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
