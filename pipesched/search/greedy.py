"""A list scheduler: per-device orders of F, I and W (or F and B) built greedily for given times and a memory limit.

The Zero Bubble paper's automatic scheduler (Qi et al., ICLR 2024, section 3)
builds its schedules the same way: each device starts a forward as early as
its memory allows, runs the backward for the input (I) as soon as its
gradient arrives, since every stage before waits on it, and fills the time
it would otherwise idle with deferred weight-gradient work (W). This module
plays that out event by event on the times a cost model gives
(``ActionTimes``), for one stage per device or a V of two (stages d and
2K-1-d on device d, as ZB-V places them):

- a device is free at its clock; its candidates are, per stage it holds,
  its next forward (in micro-batch order, allowed while the device's
  stage-micro-batches in flight, F run and B or W not yet, stay within
  ``limit``) and its next backward (B, or I with ``split``), and its
  oldest deferred W;
- a backward whose gradient has arrived runs first; then a forward whose
  input has arrived (``eager``: a forward first, as ZB-H2's longer warm-up);
  then a W, if any waits, rather than idling; else the device waits for the
  earliest input it knows will arrive; among equals, the later stage
  first (it brings a micro-batch nearer its end);
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


def per_device(limit: int | Sequence[int], devices: int, held: int = 1) -> tuple[int, ...]:
    """An in-flight limit as one number per device; ``ConfigError`` for one below ``held`` (the stages a device
    holds: a micro-batch in flight on each) or a list of another length.

    >>> per_device(3, 2), per_device([4, 2], 2)
    ((3, 3), (4, 2))
    """
    limits = (limit,) * devices if isinstance(limit, int) else tuple(limit)
    if len(limits) != devices or min(limits) < held:
        shown = limit if isinstance(limit, int) else ",".join(map(str, limits))
        if held == 1:
            raise ConfigError(
                f"--max-inflight {shown} is not allowed; every schedule holds at least 1 micro-batch on each of "
                f"the {devices} devices"
            )
        raise ConfigError(
            f"an in-flight limit of {shown} stage-micro-batches is not allowed; each of the {devices} devices holds "
            f"{held} stages, so at least {held} (one micro-batch on each)"
        )
    return limits


def supported(times: ActionTimes) -> tuple[tuple[int, ...], ...]:
    """Per device, its stages, latest first, for a placement the search plans: one stage per device (stage d on
    device d) or a V of two (stages d and 2K-1-d on device d); ``ConfigError`` for any other.

    >>> from pipesched.search import ActionTimes
    >>> supported(ActionTimes(2, (0, 1, 1, 0), (1,), {}, {}, {}, (False,)))
    ((3, 0), (2, 1))
    """
    K, placement = times.devices, tuple(times.placement)
    line = tuple(range(K))
    if placement not in (line, line + line[::-1]):
        raise ConfigError(
            "the search plans one stage per device (--chunks 1) or a V of two (--chunks 2: stages d and 2K-1-d "
            "on device d); use one of those placements"
        )
    return tuple(tuple(sorted((s for s, p in enumerate(placement) if p == d), reverse=True)) for d in range(K))


def greedy(
    times: ActionTimes, limit: int | Sequence[int], split: bool = True, defer: bool = True, eager: bool = False
) -> Schedule:
    """Per-device orders for ``times`` with at most ``limit`` stage-micro-batches in flight per device (one
    number for every device, or one per device; a V's device counts each of its two stages' micro-batches).

    A device admits a new micro-batch (its first stage's forward) only when
    ``limit`` leaves room for it on every stage the device holds, so a V
    never fills a device with forwards going down while the ones coming
    back up wait for room: the oldest micro-batch can always move, and the
    orders never deadlock. Raises ``ConfigError`` for a placement other than
    one stage per device or a V (``supported``), or a ``limit`` below the
    stages a device holds.
    """
    S, M, K = times.stages, times.microbatches, times.devices
    mine = supported(times)
    limits = per_device(limit, K, len(mine[0]))
    backward = "I" if split else "B"
    clock = [0.0] * K
    nxt_f, nxt_b = [0] * S, [0] * S  # per stage: the next micro-batch's forward and backward
    inflight = [0] * K  # stage-micro-batches whose F ran and whose B or W has not
    reserved = [0] * K  # and those admitted micro-batches' forwards still to come on the device
    deferred: list[list[tuple[int, int]]] = [[] for _ in range(K)]  # (stage, micro-batch) whose I ran, W waits
    x_arrival: dict[tuple[int, int], float] = {(0, m): 0.0 for m in range(M)}  # stage input
    g_arrival: dict[tuple[int, int], float] = {}  # gradient of a stage's output
    f_end: dict[tuple[int, int], float] = {}
    orders: list[list[Action]] = [[] for _ in range(K)]
    remaining = S * M * (3 if split else 2)

    def run(d: int, op: str, s: int, m: int, start: float) -> None:
        nonlocal remaining
        duration = times.time(op, s, m) + (times.time("R", s, m) if op in "BI" and times.recompute[m] else 0.0)
        end = start + duration
        clock[d] = end
        orders[d].append(Action(s, op, m))
        remaining -= 1
        if op == "F":
            if s == min(mine[d]):  # a micro-batch enters the device: room for it on each of its stages
                reserved[d] += len(mine[d])
            nxt_f[s] += 1
            inflight[d] += 1
            f_end[(s, m)] = end
            if s + 1 < S:
                x_arrival[(s + 1, m)] = end + times.send("F", s, m)
        elif op in "BI":
            nxt_b[s] += 1
            if op == "B":
                inflight[d] -= 1
                reserved[d] -= 1
            elif defer:
                deferred[d].append((s, m))
            else:
                run(d, "W", s, m, end)
            if s > 0:
                g_arrival[(s - 1, m)] = end + times.send("B", s - 1, m)
        else:  # W
            inflight[d] -= 1
            reserved[d] -= 1

    while remaining:
        best: tuple[float, int, int, int, str, int, int] | None = None  # (time, priority, -stage, device, ...)
        for d in range(K):
            c = clock[d]
            options: list[tuple[float, int, int, str, int]] = []  # (start, priority, -stage, op, mb)
            for s in mine[d]:  # latest stage first among equals: it finishes a micro-batch soonest
                mb = nxt_b[s]
                if mb < nxt_f[s]:  # its forward ran here
                    ready = f_end[(s, mb)] if s == S - 1 else g_arrival.get((s, mb), math.inf)
                    if ready < math.inf:
                        options.append((max(c, ready), 1 if eager else 0, -s, backward, mb))
                mf = nxt_f[s]
                entering = s == min(mine[d])
                room = reserved[d] + len(mine[d]) <= limits[d] if entering else True  # others: reserved already
                if mf < M and room and (s, mf) in x_arrival:
                    options.append((max(c, x_arrival[(s, mf)]), 0 if eager else 1, -s, "F", mf))
            if not options and not deferred[d]:
                continue
            start, priority, neg, op, m = min(options) if options else (math.inf, 9, 0, "", -1)
            if deferred[d] and start > c:  # it would idle: a deferred W fills the gap
                (s, m), priority, op = deferred[d][0], 2, "W"
                start, neg = c, -s
            if best is None or (start, priority, d) < (best[0], best[1], best[3]):
                best = (start, priority, neg, d, op, -neg, m)
        if best is None:  # only happens for a limit the pipeline cannot run with
            raise ConfigError(f"no order runs with {limit} micro-batches in flight per device; allow more")
        start, _, _, d, op, s, m = best
        if op == "W":
            deferred[d].remove((s, m))
        run(d, op, s, m, start)
    return Schedule(orders)
