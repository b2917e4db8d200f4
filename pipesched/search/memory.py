"""A memory limit in bytes as micro-batches in flight: what ``--device-memory`` leaves the search.

A device holds its weights, gradients and optimizer state whatever the
order, and each micro-batch in flight adds the activations its stage keeps
(``pipesched.memory``). One shape-only run of 1F1B on the same stages
(``pipesched.pipeline``) measures both per device: the bytes beside the
activations at its peak, and the activations per micro-batch in flight
(its peak activations over its peak count in flight). The limit is then the
most micro-batches each device can hold:
``floor((memory - fixed) / per micro-batch)``, at least 1. For a V the run
is ZB-V's and the count is of stage-micro-batches, two per micro-batch.
Buffers on the links and a split backward's deferred tensors can add a
little at other instants, so the candidates run in the engine, fastest
first, until one fits (``fit_memory``).

>>> from pipesched import RunConfig
>>> from pipesched.pipeline import prepare
>>> config = RunConfig(strategy="1f1b", devices=4, microbatches=8, compute=False, device_memory=3_300_000)
>>> inflight_limit(prepare(config))  # devices 1 and 2 hold the widest layers' weights
(8, 3, 3, 8)
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

from ..errors import ConfigError
from ..units import format_bytes

__all__ = ["inflight_limit", "fit_memory"]


def _key(schedule: Any) -> tuple[tuple[Any, ...], ...]:
    """A schedule's orders, to tell candidates apart."""
    return tuple(tuple(row) for row in schedule.actions)


def inflight_limit(prepared: Any) -> tuple[int, ...]:
    """Per device, the stage-micro-batches in flight that ``prepared.config.device_memory`` allows (see the
    module), at least one per stage the device holds (whether that fits, ``fit_memory`` finds out in the
    engine). ``prepared`` is a run of 1F1B, or of ZB-V for a V."""
    from ..pipeline import execute  # the pipeline imports the search: import it when asked

    config = prepared.config
    memory = config.device_memory
    if memory is None:
        raise ConfigError("a memory limit in bytes needs --device-memory (or a --hardware preset's memory)")
    probe = execute(replace(prepared, config=replace(config, compute=False, reference=False, allow_oom=True)))
    m = probe.metrics
    held = prepared.schedule.stages_per_device  # a V's device: two stages, each counted
    limits = []
    for peak, acts, count in zip(m.peak_memory_bytes, m.peak_activation_bytes, m.peak_inflight_microbatches):
        per = acts / max(count, 1)
        fixed = peak - acts
        most = math.floor((memory - fixed) / per) if per > 0 else config.microbatches
        limits.append(min(max(most, held), config.microbatches * held))
    return tuple(limits)


def fit_memory(
    prepared: Any,
    times: Any,
    objective: str = "makespan",
    refine: Callable[[tuple[int, ...]], Any] | None = None,
    cap: int | None = None,
) -> Any:
    """The fastest candidate (``synthesise.ranked``, by ``objective``) whose schedule fits ``prepared``'s
    device memory in the engine's own count (a shape-only run of each, fastest first).

    The candidates are those within ``inflight_limit`` (the estimate), then
    the faster ones that hold more in flight (up to ``cap`` stage-micro-batches
    per device, or all): the estimate comes from one 1F1B run, and a schedule
    that holds more micro-batches may still fit where 1F1B's split of the
    memory misjudges it (link buffers, re-materialization of all but the
    last micro-batch), so the engine decides. ``refine(limits)``, where
    given, is a search of its own within the estimate (the exact one,
    ``exact.search``); its schedule is tried first when it is faster than
    every candidate. ``cap`` is ``--max-inflight``'s, in stage-micro-batches.

    Raises ``ConfigError`` if no candidate fits, naming the memory the leanest needs.
    """
    from ..pipeline import execute, prepare
    from .synthesise import Fixed, ranked

    config = replace(prepared.config, compute=False, reference=False, allow_oom=True)
    held = prepared.schedule.stages_per_device
    most = times.microbatches * held if cap is None else cap
    estimate = tuple(min(x, most) for x in inflight_limit(prepared))
    leanest = None
    for first, limits in ((True, estimate), (False, (held,) * times.devices)):
        # then one micro-batch in flight everywhere, the leanest, where only fitting matters
        candidates = ranked(times, limits, objective=objective)
        better = refine(limits) if refine else None
        if better is not None and (not candidates or better.value < candidates[0].value):
            candidates.insert(0, better)
        if first and min(limits) < most:  # and those beyond the estimate, in order of speed
            seen = {_key(f.schedule) for f in candidates}
            candidates += [f for f in ranked(times, most, objective=objective) if _key(f.schedule) not in seen]
            candidates.sort(key=lambda f: f.value)  # stable: the estimate's first among equals
        for found in candidates:
            check = execute(prepare(replace(config, strategy=Fixed(found.schedule), chunks=held)))
            peak = max(check.metrics.peak_memory_bytes)
            if check.trace.oom is None:
                return found
            leanest = peak if leanest is None else min(leanest, peak)
    raise ConfigError(
        f"--device-memory {config.device_memory} bytes ({format_bytes(config.device_memory or 0)}) is below what "
        f"every schedule the search tried needs: the leanest needs {leanest} bytes ({format_bytes(leanest or 0)}); "
        f"give --device-memory {leanest} or more"
    )
