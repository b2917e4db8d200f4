"""The search for one run's configuration: its placement, its in-flight limit or memory, its costs.

``pipesched search`` and ``--strategy auto`` ask the same question, so they
share this answer (``find``): the same configuration gives the same schedule
from both.

- Placement: one stage per device (``--chunks 1``, the default) or a V of two
  (``--chunks 2``: stages d and 2K-1-d on device d, as ZB-V places them);
  any other is refused in one sentence (``greedy.supported``).
- Limit: ``--max-inflight N`` micro-batches of activations of one stage per
  device, as the Zero Bubble paper states its limits (ZB-1p: N = K, 1F1B's;
  ZB-2p: 2K). A V's two stages are half a stage each, so N allows 2N
  stage-micro-batches on a device, the engine's count. With a memory in
  bytes (``--device-memory``, or a ``--hardware`` preset's), the fastest
  candidate that fits it in the engine (``memory.fit_memory``), within N
  too where given; with neither, N = K.
- Times: the configuration prepared with 1F1B (one stage per device) or ZB-V
  (a V), for the stages' partition, costs and sends (``from_prepared``).
- Search: ``exact.search``, the heuristic and, for K <= 4 and M <= 8, CP-SAT.

>>> from pipesched import RunConfig
>>> outcome = find(RunConfig(devices=4, microbatches=8, cost="unit", compute=False, chunks=2, max_inflight=4))
>>> outcome.found.evaluation.makespan, outcome.limit  # ZB-V's 3M + (K-1)/2 within 1F1B's memory
(25.5, (8, 8, 8, 8))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError, PipeschedError
from ..units import format_bytes
from .evaluate import from_prepared
from .exact import EXACT_DEVICES, EXACT_MICROBATCHES, search
from .synthesise import Found

__all__ = ["Outcome", "find", "placement_base"]


@dataclass(frozen=True)
class Outcome:
    """What ``find`` chose, and under which limit.

    ``limit`` is per device in stage-micro-batches (the engine's count: a V's
    device counts each of its two stages), None where a memory in bytes set
    it; ``held`` the stages per device (1, or 2 in a V); ``within`` the limit
    in words, for the output.
    """

    found: Found
    limit: tuple[int, ...] | None
    held: int
    within: str


def placement_base(config: Any) -> tuple[str, int]:
    """The built-in whose placement the search plans for ``config.chunks`` (1F1B's or ZB-V's), and the stages
    per device; ``ConfigError`` for any other number of chunks."""
    if config.chunks in (None, 1):
        return "1f1b", 1
    if config.chunks == 2:
        return "zb-v", 2
    raise ConfigError(
        f"--chunks {config.chunks}: the search plans one stage per device (--chunks 1) or a V of two (--chunks 2: "
        "stages d and 2K-1-d on device d); give one of those"
    )


def find(config: Any, seconds: float = 2.0, exact: bool | None = None, objective: str = "makespan") -> Outcome:
    """The schedule the search finds for ``config`` (a ``RunConfig``; its strategy is ignored), minimising
    ``objective``: one step's ``"makespan"``, or the ``"period"`` of steps back to back.

    Raises ``ConfigError``, before any work, for data parallelism (one
    pipeline is planned), a placement other than one stage per device or a
    V, ``--max-inflight`` below 1 and a time limit that is not positive;
    after the search, for a memory limit no candidate fits (naming the
    memory the leanest needs).
    """
    if config.data_parallel != 1:
        raise ConfigError(
            f"the search plans one pipeline for its costs; run it with --data-parallel 1 (not "
            f"{config.data_parallel}), or give a built-in strategy for the replicas"
        )
    base, held = placement_base(config)
    if config.max_inflight is not None and config.max_inflight < 1:
        raise ConfigError(
            f"--max-inflight {config.max_inflight} is not allowed; every schedule holds at least 1 micro-batch in "
            "flight on each device (a V: one on each of its two half-stages)"
        )
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--time-limit {seconds:g} is not allowed; give a positive number of work units, e.g. 2")
    from ..pipeline import prepare  # the pipeline imports the search: import it when asked
    from .memory import fit_memory

    try:
        prepared = prepare(
            replace(config, strategy=base, chunks=held, max_inflight=None, compute=False, reference=False,
                    allow_oom=True)
        )  # fmt: skip
    except PipeschedError as exc:  # in the user's words: the placement they asked for, not the built-in it borrows
        placement = "a V of two stages per device (--chunks 2)" if held == 2 else "one stage per device"
        raise type(exc)(str(exc).replace(f"strategy {base!r}", f"the search's placement, {placement},")) from None
    times = from_prepared(prepared)
    memory = prepared.config.device_memory
    n = config.devices if config.max_inflight is None else config.max_inflight
    limit = (n * held,) * config.devices
    within = f"--max-inflight {n}" + (f": at most {n * held}, a V's half-stages counting as halves" if held > 1 else "")
    if memory is None:
        return Outcome(search(times, limit, seconds, exact, objective), limit, held, within)
    # a memory in bytes (--device-memory, or a preset's): the fastest candidate that fits it in the engine, within
    # --max-inflight too where given
    small = times.devices <= EXACT_DEVICES and times.microbatches <= EXACT_MICROBATCHES
    solver = small if exact is None else exact
    refine = (lambda limits: search(times, limits, seconds, True, objective)) if solver else None
    cap = None if config.max_inflight is None else n * held
    found = fit_memory(prepared, times, objective, refine, cap)
    bytes_ = f"--device-memory {format_bytes(memory)}"
    if cap is None:
        return Outcome(found, None, held, f"within {bytes_}")
    return Outcome(found, limit, held, f"{within}, within {bytes_}")
