"""Closed forms for pipeline schedules, each with its source, and the one definition of "bubble".

**Bubble fraction** is the idle share of the devices' time: with K devices
busy (computing, recompute included) for ``busy_d`` during a step of length
``makespan``, bubble = 1 - sum(busy_d) / (K * makespan). Megatron-LM (Narayanan
et al., 2021) reports instead the ratio of bubble time to ideal time,
(K-1)/M for GPipe; the two are related by fraction = ratio / (1 + ratio).

>>> gpipe_bubble(4, 8)
0.2727272727272727
>>> bubble_from_ratio((4 - 1) / 8) == gpipe_bubble(4, 8)
True
"""

from __future__ import annotations

from typing import Sequence

__all__ = [
    "gpipe_bubble",
    "bubble_from_ratio",
    "pipeline_speedup",
    "flow_shop_makespan",
    "gpipe_unit_makespan",
    "gpipe_unit_bubble",
]


def gpipe_bubble(devices: int, microbatches: int) -> float:
    """(K-1)/(K-1+M): GPipe F-then-B under equal stage costs, no communication.

    Source: Huang et al., "GPipe", NeurIPS 2019, section 2.3 (bubble overhead
    O((K-1)/(M+K-1))). Holds exactly under unit cost with or without
    re-materialization ``always`` (recompute lengthens every backward alike).
    """
    return (devices - 1) / (devices - 1 + microbatches)


def bubble_from_ratio(ratio: float) -> float:
    """Megatron's bubble-time / ideal-time ratio as pipesched's idle fraction."""
    return ratio / (1.0 + ratio)


def pipeline_speedup(devices: int, microbatches: int) -> float:
    """K / (1 + (K-1)/M): step-time speedup of a K-stage pipeline over one device, equal stages."""
    return devices / (1.0 + (devices - 1) / microbatches)


def flow_shop_makespan(costs: Sequence[float], devices: int) -> float:
    """sum(c) + (K-1) * max(c): K devices each running jobs of costs ``costs`` in order.

    The proportionate flow shop (every job costs the same on every device): the
    critical path runs the longest job across all K devices and every job once.
    """
    return sum(costs) + (devices - 1) * max(costs)


def _backward_costs(microbatches: int, remat: str) -> list[float]:
    """Unit-cost backward of each micro-batch, in GPipe's order (last micro-batch first)."""
    recompute = {"never": [False] * microbatches, "always": [True] * microbatches,
                 "except_last": [m != microbatches - 1 for m in range(microbatches)]}[remat]
    return [2.0 + recompute[m] for m in reversed(range(microbatches))]


def gpipe_unit_makespan(devices: int, microbatches: int, remat: str = "never") -> float:
    """GPipe's step length under unit cost: a forward flow shop, then a backward one.

    Forwards (F=1) finish on the last device at M + K - 1; the backward wave
    (B=2, plus 1 where a micro-batch is recomputed) is a flow shop of its own.

    >>> gpipe_unit_makespan(4, 8), gpipe_unit_makespan(4, 8, "always")
    (33.0, 44.0)
    """
    return flow_shop_makespan([1.0] * microbatches, devices) + flow_shop_makespan(
        _backward_costs(microbatches, remat), devices
    )


def gpipe_unit_bubble(devices: int, microbatches: int, remat: str = "never") -> float:
    """Idle fraction of GPipe under unit cost for any re-materialization mode.

    >>> gpipe_unit_bubble(4, 8, "always") == gpipe_bubble(4, 8)
    True
    """
    busy = microbatches + sum(_backward_costs(microbatches, remat))
    return 1.0 - busy / gpipe_unit_makespan(devices, microbatches, remat)
