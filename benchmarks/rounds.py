"""Timing in rounds: several things timed in turns within each round, so that a shared machine's drift over
minutes falls on all of them alike; each one's median.

    from rounds import medians
    theirs, ours = medians([lambda: simulate(order), lambda: run(config)], repeat=7)
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence


def medians(fns: Sequence[Callable[[], object]], repeat: int) -> list[float]:
    """Each function's median wall time over ``repeat`` rounds, the functions taking turns within a round."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, own in zip(fns, times):
            start = time.perf_counter()
            fn()
            own.append(time.perf_counter() - start)
    return [statistics.median(own) for own in times]
