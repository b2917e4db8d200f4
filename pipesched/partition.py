"""Partition a chain of layers into contiguous stages: uniform or explicit counts."""

from __future__ import annotations

import re
from typing import Sequence

from .errors import ConfigError
from .units import count

__all__ = ["Partition", "uniform", "explicit", "parse_partition"]

#: Per stage, the range of layer indices it holds.
Partition = tuple[range, ...]


def _from_counts(counts: Sequence[int]) -> Partition:
    stages, start = [], 0
    for size in counts:
        stages.append(range(start, start + size))
        start += size
    return tuple(stages)


def uniform(num_layers: int, stages: int) -> Partition:
    """Layer counts that differ by at most one, larger stages first.

    >>> [len(s) for s in uniform(11, 4)]
    [3, 3, 3, 2]
    """
    if stages > num_layers:
        raise ConfigError(
            f"the schedule has {count(stages, 'stage')} but the model has only {count(num_layers, 'layer')}; "
            f"use at most {count(num_layers, 'stage')} (fewer --devices or --chunks) or more --layers"
        )
    base, extra = divmod(num_layers, stages)
    return _from_counts([base + (s < extra) for s in range(stages)])


def explicit(counts: Sequence[int], num_layers: int, stages: int) -> Partition:
    """Stages holding ``counts[s]`` layers each; the counts must cover the model.

    >>> [list(s) for s in explicit([1, 2], 3, 2)]
    [[0], [1, 2]]
    """
    text = ",".join(map(str, counts))
    if len(counts) != stages:
        raise ConfigError(
            f"--partition {text} has {count(len(counts), 'stage')} but the schedule has {stages}; "
            f"give {count(stages, 'layer count')}"
        )
    if any(c < 1 for c in counts):
        raise ConfigError(f"--partition {text} has an empty stage; give every stage at least one layer")
    if sum(counts) != num_layers:
        raise ConfigError(
            f"--partition {text} sums to {count(sum(counts), 'layer')} but the model has {num_layers}; "
            f"make the counts sum to {num_layers}"
        )
    return _from_counts(counts)


def parse_partition(text: str, num_layers: int, stages: int) -> Partition:
    """``uniform`` or comma-separated layer counts such as ``2,3,3,3`` (``balanced`` is the balancer's)."""
    if text == "uniform":
        return uniform(num_layers, stages)
    if not re.fullmatch(r"\d+(,\d+)*", text.replace(" ", "")):
        raise ConfigError(
            f"--partition {text!r} is neither 'uniform', 'balanced' nor comma-separated layer counts; "
            "write e.g. --partition balanced or --partition 2,3,3,3"
        )
    return explicit([int(c) for c in text.replace(" ", "").split(",")], num_layers, stages)
