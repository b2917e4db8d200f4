"""Synthesise a schedule for given times and an in-flight limit: the best of the built-ins and greedy orders.

The candidates are every built-in strategy with one stage per device (GPipe,
1F1B, ZB-H1, ZB-H2) whose peak in flight fits the limit, and the list
scheduler's orders (``pipesched.search.greedy``) over its variants: full or
split backward, W deferred or not, forwards or backwards first, and every
in-flight limit of the given one and half of it. Each is timed exactly by the fast
evaluator (``pipesched.search.evaluate``, equal to the engine); the fastest
wins, the leaner among equals. So the result is never slower than the best
built-in that fits. Its distance from optimal is bounded by the lower bound
(``pipesched.search.bounds``): ``gap = makespan / bound - 1``, and a gap of
zero proves the schedule optimal.

>>> from pipesched import RunConfig
>>> from pipesched.pipeline import prepare
>>> from pipesched.search import from_prepared
>>> times = from_prepared(prepare(RunConfig(strategy="1f1b", devices=4, microbatches=8, cost="unit", compute=False)))
>>> found = synthesise(times, limit=4)
>>> found.evaluation.makespan, found.bound.value, found.optimal  # ZB-H1's 3M + K - 1, proved optimal
(27.0, 27.0, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Sequence

from ..errors import ConfigError, PipeschedError
from ..schedule import Schedule
from ..strategy import load_strategy, make_plan
from .bounds import Bound, lower_bound, period_bound
from .evaluate import ActionTimes, Evaluation, evaluate
from .greedy import greedy, per_device, supported

__all__ = ["BUILTINS", "BUILTINS_V", "OBJECTIVES", "Fixed", "Found", "ranked", "synthesise"]

#: What a search minimises: one step's makespan, or the period of steps run back to back.
OBJECTIVES = ("makespan", "period")

#: The built-in strategies the search starts from: those with one stage per device.
BUILTINS = ("gpipe", "1f1b", "zb-h1", "zb-h2")
#: Those of them with full backwards only (for ``split=False``).
FULL_BACKWARD = ("gpipe", "1f1b")
#: Those with a V of two stages per device (DualPipeV's overlapped pairs are not the evaluator's to time).
BUILTINS_V = ("zb-v",)


@dataclass
class Fixed:
    """A found schedule as a strategy, so ``pipesched.run`` runs it like any other (name ``auto``)."""

    schedule: Schedule
    name: str = "auto"

    def __str__(self) -> str:  # in headings and tables, the strategy's name as the user gave it
        return self.name

    @property
    def default_chunks(self) -> int:
        """Stages per device: 1, or 2 for a V."""
        return self.schedule.stages_per_device

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        found = (self.schedule.devices, self.schedule.microbatches, self.default_chunks)
        if (devices, microbatches, chunks) != found:
            raise ConfigError(
                f"the schedule found is for {found[0]} devices, {found[1]} micro-batches and {found[2]} stage(s) per "
                f"device; search again for {devices}, {microbatches} and --chunks {chunks}"
            )
        return self.schedule


@dataclass(frozen=True)
class Found:
    """The schedule a search chose, its exact time, the lower bound, and how it was made."""

    schedule: Schedule
    evaluation: Evaluation
    bound: Bound
    method: str  # e.g. "built-in zb-h1" or "greedy: limit 4, split, W deferred, backwards first"
    candidates: int  # how many schedules were timed
    objective: str = "makespan"  # or "period": steps back to back

    @property
    def value(self) -> float:
        """What the search minimised: one step's makespan, or the period of steps back to back."""
        return self.evaluation.makespan if self.objective == "makespan" else self.evaluation.period

    @property
    def gap(self) -> float:
        """value / lower bound - 1, at least 0 (the bound may exceed an equal value by round-off)."""
        return max(0.0, self.value / self.bound.value - 1) if self.bound.value > 0 else 0.0

    @property
    def optimal(self) -> bool:
        """Proved optimal: the value equals the lower bound (to round-off, 1e-12)."""
        return self.gap <= 1e-12


def ranked(
    times: ActionTimes, limit: int | Sequence[int], split: bool = True, objective: str = "makespan"
) -> list[Found]:
    """Every candidate that runs within ``limit``, fastest first (the leaner among equals), each as a ``Found``.

    ``objective`` is ``"makespan"`` (one step) or ``"period"`` (steps back to
    back, ``Trace.period``; its bound is ``bounds.period_bound``).

    Raises ``ConfigError`` for a limit below 1 or a placement other than one
    stage per device.
    """
    K, M = times.devices, times.microbatches
    held = len(supported(times)[0])  # stages per device: 1, or 2 in a V
    limits = per_device(limit, K, held)
    candidates: list[tuple[Schedule, str]] = []
    names = (BUILTINS if split else FULL_BACKWARD) if held == 1 else (BUILTINS_V if split else ())
    for name in names:
        try:
            candidates.append((make_plan(load_strategy(name), K, M, held), f"built-in {name}"))
        except PipeschedError:
            continue  # a strategy refusing these sizes
    # the limit itself, and half of it (a shorter warm-up sometimes queues less on the links); smaller limits
    # only slow a pipeline down, and each greedy order costs a third of a second at K=32, M=256
    tried = sorted({limits, tuple(max(held, x // 2) for x in limits)})
    for lim, parts, defer, eager in product(tried, (True, False) if split else (False,), (True, False), (False, True)):
        if not parts and not defer:
            continue  # without a split backward there is no W to defer
        describe = (
            f"greedy: limit {lim[0] if len(set(lim)) == 1 else '/'.join(map(str, lim))}, "
            f"{'split' if parts else 'full'} backward"
            + (f", W {'deferred' if defer else 'after its I'}" if parts else "")
            + f", {'forwards' if eager else 'backwards'} first"
        )
        candidates.append((greedy(times, lim, split=parts, defer=defer, eager=eager), describe))
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    bound = lower_bound(times, split=split) if objective == "makespan" else period_bound(times, split=split)
    keyed = []
    for i, (schedule, method) in enumerate(candidates):
        evaluation = evaluate(schedule, times)
        if evaluation.deadlock is None and all(p <= x for p, x in zip(evaluation.peak_inflight, limits)):
            value = evaluation.makespan if objective == "makespan" else evaluation.period
            keyed.append(((value, max(evaluation.peak_inflight), i), schedule, evaluation, method))
    keyed.sort(key=lambda k: k[0])
    n = len(candidates)
    return [Found(schedule, evaluation, bound, method, n, objective) for _, schedule, evaluation, method in keyed]


def synthesise(
    times: ActionTimes, limit: int | Sequence[int], split: bool = True, objective: str = "makespan"
) -> Found:
    """The fastest schedule found for ``times`` with at most ``limit`` micro-batches in flight per device
    (``ranked``'s first).

    ``split=False`` keeps to full backwards (B: no I and W apart), and the
    lower bound is then the one for such schedules. Raises ``ConfigError`` for
    a limit below 1 or a placement other than one stage per device.
    """
    found = ranked(times, limit, split, objective)
    if not found:  # the greedy order at limit 1 always runs; kept for safety
        raise ConfigError(f"no schedule runs with --max-inflight {limit}; allow more micro-batches in flight")
    return found[0]
