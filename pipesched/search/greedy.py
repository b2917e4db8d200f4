"""A list scheduler: per-device orders of F, I and W (or F and B) built greedily for given times and a memory limit.

The Zero Bubble paper's automatic scheduler (Qi et al., ICLR 2024, section 3)
builds its schedules the same way: each device starts a forward as early as
its memory allows, runs the backward for the input (I) as soon as its
gradient arrives, since every stage before waits on it, and fills the time
it would otherwise idle with deferred weight-gradient work (W). This module
plays that out event by event on the times a cost model gives
(``ActionTimes``), for one stage per device:

- a device is free at its clock; its candidates are its next forward (in
  micro-batch order, allowed while fewer than ``limit`` micro-batches are in
  flight on it: F run, B or W not yet), its next backward (B, or I with
  ``split``), and its oldest deferred W;
- a backward whose gradient has arrived runs first; then a forward whose
  input has arrived (``eager``: a forward first, as ZB-H2's longer warm-up);
  then a W, if any waits, rather than idling; else the device waits for the
  earliest input it knows will arrive;
- without ``defer``, each W runs right after its I.

Arrival times here ignore link queueing (a send lasts busy + latency), so
the result is a valid schedule whose exact time the evaluator gives
(``pipesched.search.evaluate``); the search keeps the best of several.

>>> from pipesched import RunConfig
>>> from pipesched.pipeline import prepare
>>> from pipesched.search import evaluate, from_prepared
>>> times = from_prepared(prepare(RunConfig(strategy="1f1b", devices=4, microbatches=8, cost="unit", compute=False)))
>>> evaluate(greedy(times, limit=8), times).makespan  # with M in flight: 3M + K - 1, the lower bound
27.0
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import ConfigError
from ..schedule import Action, Schedule
from .evaluate import ActionTimes

__all__ = ["greedy", "per_device"]


def per_device(limit: int | Sequence[int], devices: int) -> tuple[int, ...]:
    """An in-flight limit as one number per device; ``ConfigError`` for one below 1 or a list of another length.

    >>> per_device(3, 2), per_device([4, 2], 2)
    ((3, 3), (4, 2))
    """
    limits = (limit,) * devices if isinstance(limit, int) else tuple(limit)
    if len(limits) != devices or min(limits) < 1:
        shown = limit if isinstance(limit, int) else ",".join(map(str, limits))
        raise ConfigError(
            f"--max-inflight {shown} is not allowed; every schedule holds at least 1 micro-batch on each of the "
            f"{devices} devices"
        )
    return limits


def greedy(
    times: ActionTimes, limit: int | Sequence[int], split: bool = True, defer: bool = True, eager: bool = False
) -> Schedule:
    """Per-device orders for ``times`` with at most ``limit`` micro-batches in flight per device (one number for
    every device, or one per device).

    Raises ``ConfigError`` for a placement other than stage s on device s, or
    a ``limit`` below 1.
    """
    S, M = times.stages, times.microbatches
    if tuple(times.placement) != tuple(range(S)) or times.devices != S:
        raise ConfigError("the search plans one stage per device (stage s on device s); use such a placement")
    limits = per_device(limit, S)
    backward = "I" if split else "B"
    clock = [0.0] * S
    nxt_f, nxt_b = [0] * S, [0] * S
    inflight = [0] * S
    deferred: list[list[int]] = [[] for _ in range(S)]  # micro-batches whose I ran and W waits
    x_arrival: dict[tuple[int, int], float] = {(0, m): 0.0 for m in range(M)}  # stage input
    g_arrival: dict[tuple[int, int], float] = {}  # gradient of a stage's output
    f_end: dict[tuple[int, int], float] = {}
    orders: list[list[Action]] = [[] for _ in range(S)]
    remaining = S * M * (3 if split else 2)

    def run(d: int, op: str, m: int, start: float) -> None:
        nonlocal remaining
        duration = times.time(op, d, m) + (times.time("R", d, m) if op in "BI" and times.recompute[m] else 0.0)
        end = start + duration
        clock[d] = end
        orders[d].append(Action(d, op, m))
        remaining -= 1
        if op == "F":
            nxt_f[d] += 1
            inflight[d] += 1
            f_end[(d, m)] = end
            if d + 1 < S:
                x_arrival[(d + 1, m)] = end + times.send("F", d, m)
        elif op in "BI":
            nxt_b[d] += 1
            if op == "B":
                inflight[d] -= 1
            elif defer:
                deferred[d].append(m)
            else:
                run(d, "W", m, end)
            if d > 0:
                g_arrival[(d - 1, m)] = end + times.send("B", d - 1, m)
        else:  # W
            inflight[d] -= 1

    while remaining:
        best: tuple[float, int, int, str, int] | None = None  # (decision time, priority, device, op, mb)
        for d in range(S):
            c = clock[d]
            options: list[tuple[float, int, str, int]] = []  # (start, priority, op, mb)
            mb = nxt_b[d]
            if mb < nxt_f[d]:  # its forward ran here
                ready = f_end[(d, mb)] if d == S - 1 else g_arrival.get((d, mb), math.inf)
                if ready < math.inf:
                    options.append((max(c, ready), 1 if eager else 0, backward, mb))
            mf = nxt_f[d]
            if mf < M and inflight[d] < limits[d] and (d, mf) in x_arrival:
                options.append((max(c, x_arrival[(d, mf)]), 0 if eager else 1, "F", mf))
            if not options and not deferred[d]:
                continue
            start, priority, op, m = min(options) if options else (math.inf, 9, "", -1)
            if deferred[d] and start > c:  # it would idle: a deferred W fills the gap
                start, priority, op, m = c, 2, "W", deferred[d][0]
            if best is None or (start, priority, d) < (best[0], best[1], best[2]):
                best = (start, priority, d, op, m)
        if best is None:  # only happens for a limit the pipeline cannot run with
            raise ConfigError(f"no order runs with {limit} micro-batches in flight per device; allow more")
        start, _, d, op, m = best
        if op == "W":
            deferred[d].remove(m)
        run(d, op, m, start)
    return Schedule(orders)
