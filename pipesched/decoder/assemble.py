"""What a run needs of a decoder (``--model``): its config, layers, checks, token data and workload.

``pipesched.pipeline`` calls these where a run names a model instead of MLP
widths, so the rest of the run (plan, partition, cost model, engine, metrics)
is the same path as the MLP's.

>>> config = resolve("tiny-gpt", seq_len=None)
>>> config.name, default_seq_len(config), len(chain(config))  # embedding, 8 blocks, final norm, output
('tiny-gpt', 128, 11)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..limits import machine_memory
from ..units import format_bytes
from . import accounting as acc
from .config import DecoderConfig, load_config

if TYPE_CHECKING:
    from .layers import DecoderLayer
    from .workload import CostedLayer

__all__ = ["resolve", "default_seq_len", "chain", "costed_chain", "check_run", "MODEL_DTYPE", "MODEL_OPTIMIZER"]

#: A decoder's own training precision and optimizer: mixed-precision Adam in bf16, as GPT-3, LLaMA and
#: Megatron-LM train (Brown et al. 2020; Touvron et al. 2023); the seed MLP's own are fp64 and SGD.
MODEL_DTYPE = "bf16"
MODEL_OPTIMIZER = "adam"


def resolve(spec: str, seq_len: int | None) -> DecoderConfig:
    """The decoder ``--model`` names (a preset or a config.json), with ``--seq-len`` checked against it."""
    config = load_config(spec)
    config.check_sequence(default_seq_len(config) if seq_len is None else seq_len)
    return config


def default_seq_len(config: DecoderConfig) -> int:
    """Tokens per sequence when ``--seq-len`` is not given: the model's context length."""
    return config.max_positions


def chain(config: DecoderConfig) -> tuple[DecoderLayer, ...]:
    """The layers a partition splits: embedding, blocks, final norm, output layer."""
    from .model import decoder_layers  # the layers' NumPy numerics: imported by a decoder's run, not the MLP's

    return decoder_layers(config)


def costed_chain(config: DecoderConfig, seq_len: int) -> tuple[CostedLayer, ...]:
    """``chain`` at a sequence length, as the cost model and the balancer's layer graph read it."""
    from .workload import CostedLayer

    return tuple(CostedLayer(layer, seq_len) for layer in chain(config))


def check_run(config: DecoderConfig, seq_len: int, batch: int, compute: bool, loss: str) -> None:
    """Refuse what a decoder run cannot do, before any work, each in one sentence."""
    if loss != "cross_entropy":
        raise ConfigError(f"--loss {loss} is the MLP's; a decoder's loss is next-token cross-entropy: leave --loss out")
    available = machine_memory()
    if compute and available is not None:
        # float64 weights, their gradients and the reference pass's, plus the logits of the whole batch
        needed = 3 * 8 * acc.total_parameters(config) + 8 * batch * seq_len * config.vocab_size
        if needed > available:
            raise ConfigError(
                f"--model {config.name} with real NumPy compute needs at least {format_bytes(needed)} of float64 "
                f"arrays but this machine has {format_bytes(available)}; use --no-compute, a smaller model such "
                "as tiny-gpt, or a smaller --batch"
            )
