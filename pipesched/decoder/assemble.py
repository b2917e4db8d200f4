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

if TYPE_CHECKING:
    from .config import DecoderConfig
    from .layers import DecoderLayer
    from .workload import CostedLayer

__all__ = [
    "resolve",
    "default_seq_len",
    "chain",
    "costed_chain",
    "check_run",
    "check_tensor_parallel",
    "MODEL_DTYPE",
    "MODEL_OPTIMIZER",
]

#: A decoder's own training precision and optimizer: mixed-precision Adam in bf16, as GPT-3, LLaMA and
#: Megatron-LM train (Brown et al. 2020; Touvron et al. 2023); the seed MLP's own are fp64 and SGD.
MODEL_DTYPE = "bf16"
MODEL_OPTIMIZER = "adam"


def resolve(spec: str, seq_len: int | None) -> DecoderConfig:
    """The decoder ``--model`` names (a preset or a config.json), with ``--seq-len`` checked against it."""
    from .config import load_config  # the decoder's modules load for a decoder's run only (issue 20: start-up)

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
    from . import accounting as acc

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


def check_tensor_parallel(
    tensor_parallel: object, sequence_parallel: bool, config: DecoderConfig | None, seq_len: int
) -> None:
    """Refuse a tensor-parallel size that cannot split ``config`` (None: the MLP), each in one sentence."""
    t = tensor_parallel
    if not isinstance(t, int) or isinstance(t, bool):
        raise ConfigError(f"--tensor-parallel {t!r} is not a whole number; give e.g. 2")
    if t < 1:
        raise ConfigError(f"--tensor-parallel {t} is not allowed; use 1 (no tensor parallelism) or more")
    if config is None:
        if t > 1 or sequence_parallel:
            flag = f"--tensor-parallel {t}" if t > 1 else "--sequence-parallel"
            raise ConfigError(
                f"{flag} splits a decoder's heads and MLP; the seed MLP has no heads to split: give --model, "
                "or drop the flag"
            )
        return
    if sequence_parallel and t == 1:
        raise ConfigError(
            "--sequence-parallel splits activations over a tensor-parallel group; add --tensor-parallel 2 or "
            "more, or drop it"
        )
    for what, count in (
        ("attention heads", config.num_heads),
        ("key/value heads", config.num_kv_heads),
        ("hidden size", config.hidden_size),
        ("MLP width", config.intermediate_size),
    ):
        if count % t:
            raise ConfigError(
                f"--tensor-parallel {t} does not divide --model {config.name}'s {count} {what}; give a divisor "
                f"of {count}"
            )
    if sequence_parallel and seq_len % t:
        raise ConfigError(
            f"--sequence-parallel splits the {seq_len} tokens of a sequence over --tensor-parallel {t}, which "
            "does not divide them; give a --seq-len that is a multiple of it"
        )
