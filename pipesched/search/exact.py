"""The exact search for small pipelines: a constraint model solved by OR-Tools CP-SAT, with its proof.

Why CP-SAT: a schedule is intervals on machines (each device runs one
action at a time), precedences with delays (an input arrives a send after
its producer ends) and a memory reservoir (a forward adds a micro-batch in
flight, its W or B removes it). CP-SAT states all three directly (interval
variables, no-overlap, ``add_reservoir_constraint``) and proves optimality by
its lower bound; a MILP for HiGHS (SciPy) would need big-M disjunctions, whose
weak relaxation proves little at these sizes.

The model, for one stage per device, M micro-batches and the times of
``ActionTimes``:

- per (stage s, micro-batch m) an interval F, and I and W (``split``) or B,
  on device s, lasting the action's time (a re-materialized backward its
  recompute R first); no two intervals of a device overlap;
- F(s, m) starts after F(s-1, m) ends plus the activation's send (busy +
  latency); the backward of s < S-1 after the backward of s+1 plus the
  gradient's send; the last stage's backward after its own F; W after I;
- on each device the micro-batches in flight (+1 at F's start, -1 at the end
  of W or B) stay within ``limit``;
- minimise the makespan, the latest end.

It relaxes the engine in one way only: a send here never waits for its link
(the engine's links are first in, first out, and a send can queue). So the
model's optimum is a lower bound on every schedule's makespan, and the
schedule it gives (each device's actions in start order) is timed exactly by
the fast evaluator: when that time equals the bound, the schedule is proved
optimal. Times are integers to the solver: they are scaled to ``RESOLUTION``
units and rounded down, which keeps the model's bound a lower bound. The
time limit is in CP-SAT's deterministic time units (its own count of work,
about 3 s of wall time each on the development machine), so a search that
stops at it stops at the same point on every run and machine.

>>> from pipesched import RunConfig
>>> from pipesched.pipeline import prepare
>>> from pipesched.search import from_prepared
>>> times = from_prepared(prepare(RunConfig(strategy="1f1b", devices=3, microbatches=3, cost="unit", compute=False)))
>>> found = solve(times, limit=3, seconds=10)
>>> found.evaluation.makespan, found.bound.value, found.optimal  # 3M + K - 1
(11.0, 11.0, True)
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

from ..errors import ConfigError
from ..schedule import Action, Schedule
from .bounds import Bound, lower_bound
from .evaluate import ActionTimes, evaluate
from .greedy import per_device
from .synthesise import Found, synthesise

__all__ = ["EXACT_DEVICES", "EXACT_MICROBATCHES", "NoSolution", "RESOLUTION", "search", "solve"]

#: Solver time units per the longest action or send, at least (a power of ten per time unit, the largest that
#: keeps the longest under this): durations are rounded down to that unit.
RESOLUTION = 10_000_000


class NoSolution(ConfigError):
    """The solver found no schedule within its time limit."""


#: The sizes the search solves exactly by default (``search``): CP-SAT proves these in seconds.
EXACT_DEVICES, EXACT_MICROBATCHES = 4, 8


def search(times: ActionTimes, limit: int | Sequence[int], seconds: float = 2.0, exact: bool | None = None) -> Found:
    """The heuristic search (``synthesise``), and for small sizes (``exact``; default K <= 4 and M <= 8) the
    exact one too: the faster schedule of the two, and the higher of their lower bounds."""
    heuristic = synthesise(times, limit)
    small = times.devices <= EXACT_DEVICES and times.microbatches <= EXACT_MICROBATCHES
    if heuristic.optimal or not (small if exact is None else exact):
        return heuristic  # proved optimal by the lower bound already, or too large to solve
    try:
        solved = solve(times, limit, seconds)
    except NoSolution:  # the heuristic's schedule and bound stand, and the output says why
        note = "; CP-SAT found no schedule within its time limit"
        return replace(heuristic, method=heuristic.method + note, candidates=heuristic.candidates + 1)
    bound = max(heuristic.bound, solved.bound, key=lambda b: b.value)
    best = min((solved, heuristic), key=lambda f: f.evaluation.makespan)  # the exact one among equals
    method = best.method
    if best is heuristic and not solved.method.endswith("optimum"):
        method += "; CP-SAT found nothing faster within its time limit"
    return Found(best.schedule, best.evaluation, bound, method, heuristic.candidates + 1)


def solve(
    times: ActionTimes, limit: int | Sequence[int], seconds: float = 2.0, split: bool = True, workers: int = 1
) -> Found:
    """The optimal schedule for ``times`` and ``limit``, or the best found in ``seconds`` with its gap.

    Raises ``ConfigError`` for a time limit that is not positive, a limit
    below 1, or a placement other than one stage per device.
    """
    from ortools.sat.python import cp_model

    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--time-limit {seconds:g} is not allowed; give a positive number of work units, e.g. 2")
    S, M = times.stages, times.microbatches
    limits = per_device(limit, times.devices)
    if tuple(times.placement) != tuple(range(S)) or times.devices != S:
        raise ConfigError("the search plans one stage per device (stage s on device s); use such a placement")
    backward = "I" if split else "B"
    ops = ("F", backward, "W") if split else ("F", backward)

    def length(op: str, s: int, m: int) -> float:
        extra = times.time("R", s, m) if op in "BI" and times.recompute[m] else 0.0
        return times.time(op, s, m) + extra

    lengths = {(op, s, m): length(op, s, m) for op in ops for s in range(S) for m in range(M)}
    sends = [times.send(d, s, m) for d in "FB" for s in range(S - 1) for m in range(M)]
    longest = max([*lengths.values(), *sends, 1e-300])
    # a power of ten, so that times in whole or decimal units stay exact (and the proof with them)
    scale = 10.0 ** math.floor(math.log10(RESOLUTION / longest))

    def ticks(t: float) -> int:  # rounded down: the model's times never exceed the real ones
        return math.floor(t * scale)

    horizon = ticks(sum(lengths.values()) + sum(sends)) + 1
    model = cp_model.CpModel()
    start: dict[tuple[str, int, int], Any] = {}
    end: dict[tuple[str, int, int], Any] = {}
    intervals: list[list[Any]] = [[] for _ in range(S)]
    for (op, s, m), t in lengths.items():
        a = model.new_int_var(0, horizon, f"s_{op}{s}_{m}")
        b = model.new_int_var(0, horizon, f"e_{op}{s}_{m}")
        intervals[s].append(model.new_interval_var(a, ticks(t), b, f"{op}{s}_{m}"))
        start[(op, s, m)], end[(op, s, m)] = a, b
    for s in range(S):
        model.add_no_overlap(intervals[s])
        for m in range(M):
            if s > 0:
                model.add(start[("F", s, m)] >= end[("F", s - 1, m)] + ticks(times.send("F", s - 1, m)))
            if s < S - 1:
                model.add(start[(backward, s, m)] >= end[(backward, s + 1, m)] + ticks(times.send("B", s, m)))
            else:
                model.add(start[(backward, s, m)] >= end[("F", s, m)])
            if split:
                model.add(start[("W", s, m)] >= end[("I", s, m)])
        done = "W" if split else "B"
        events = [start[("F", s, m)] for m in range(M)] + [end[(done, s, m)] for m in range(M)]
        model.add_reservoir_constraint(events, [1] * M + [-1] * M, 0, limits[s])
    if len(set(times.rows)) == 1 and len(set(times.recompute)) == 1:  # interchangeable micro-batches (same
        # size, all recomputed or none: not --remat except_last): number them in stage 0's forward order
        for m in range(M - 1):
            model.add(start[("F", 0, m)] <= start[("F", 0, m + 1)])
    makespan = model.new_int_var(0, horizon, "makespan")
    model.add_max_equality(makespan, list(end.values()))
    model.minimize(makespan)
    solver = cp_model.CpSolver()
    # deterministic time (CP-SAT's own work units, about seconds): the same answer on every machine and run,
    # where a wall-clock limit would stop at a different point each time
    solver.parameters.max_deterministic_time = float(seconds)
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = 0  # the same answer on every run
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise NoSolution(
            f"the solver found no schedule within --time-limit {seconds:g}; allow more, or use the heuristic search"
        )
    orders = [
        [Action(s, op, m) for (op, _, m) in sorted(((o, s2, m2) for (o, s2, m2) in lengths if s2 == s),
                                                     key=lambda k: (solver.value(start[k]), "FIWB".index(k[0]), k[2]))]
        for s in range(S)
    ]  # fmt: skip
    schedule = Schedule(orders)
    evaluation = evaluate(schedule, times)
    proved = solver.best_objective_bound / scale  # a lower bound: rounded-down times, sends without queues
    analytic = lower_bound(times, split=split)
    bound = (
        Bound(proved, f"the solver's proof over every schedule ({solver.status_name(status).lower()})")
        if proved > analytic.value
        else analytic
    )
    verdict = "the model's optimum" if status == cp_model.OPTIMAL else "the best found within its time limit"
    return Found(schedule, evaluation, bound, f"exact: OR-Tools CP-SAT, {verdict}", 1)
