"""The exact search for small pipelines: a constraint model solved by OR-Tools CP-SAT, with its proof.

Why CP-SAT: a schedule is intervals on machines (each device runs one
action at a time), precedences with delays (an input arrives a send after
its producer ends) and a memory reservoir (a forward adds a micro-batch in
flight, its W or B removes it). CP-SAT states all three directly (interval
variables, no-overlap, ``add_reservoir_constraint``) and proves optimality by
its lower bound; a MILP for HiGHS (SciPy) would need big-M disjunctions, whose
weak relaxation proves little at these sizes.

The model, for one stage per device or a V of two (``greedy.supported``),
M micro-batches and the times of ``ActionTimes``:

- per (stage s, micro-batch m) an interval F, and I and W (``split``) or B,
  on stage s's device, lasting the action's time (a re-materialized backward its
  recompute R first); no two intervals of a device overlap;
- F(s, m) starts after F(s-1, m) ends plus the activation's send (busy +
  latency); the backward of s < S-1 after the backward of s+1 plus the
  gradient's send; the last stage's backward after its own F; W after I;
- on each device the stage-micro-batches in flight (+1 at F's start, -1 at
  the end of W or B, over every stage it holds) stay within ``limit``,
  stated twice: as a reservoir of those events and as a cumulative of each
  micro-batch's span in flight. The second is redundant, yet without it
  CP-SAT's wall time per unit of its deterministic clock ran away on some
  V placements (84 s for 2 units at K = 3, M = 6 on LLaMA-2-7B costs; 4 s
  with it), and with it the K = 4, M = 8 LLaMA case is proved optimal;
- minimise the makespan, the latest end.

It relaxes the engine in two ways: a send here never waits for its link
(the engine's links are first in, first out, and a send can queue), and a
tied pair's all-reduce after the last actions (a decoder's tied embedding)
is left out. So the model's optimum is a lower bound on every schedule's
makespan, and the schedule it gives (each device's actions in start order)
is timed exactly by the fast evaluator: when that time equals the bound, the
schedule is proved optimal. Times are integers to the solver: they are
scaled to ``RESOLUTION`` units and rounded down, which keeps the model's
bound a lower bound. An action rounded to no time at all (a stage without
work, or compute far shorter than a send) may sit anywhere in the model,
even inside another action, so its start order can be an order the engine
would run otherwise; the schedule is therefore evaluated, and one that
deadlocks or holds more in flight than the limit is refused (``NoSolution``:
``search`` keeps the heuristic's). The time limit is in CP-SAT's
deterministic time units (its own count of work; a few seconds of wall
time each on the development machine, more or less with the model), so a search that
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
from typing import Any, Callable, Sequence, cast

from ..errors import ConfigError
from ..schedule import Action, Schedule
from .bounds import Bound, lower_bound, period_bound
from .evaluate import ActionTimes, evaluate
from .greedy import per_device, supported
from .synthesise import Found, synthesise

__all__ = ["EXACT_DEVICES", "EXACT_MICROBATCHES", "NoSolution", "RESOLUTION", "search", "solve"]

#: Solver time units per the longest action or send, at least (a power of ten per time unit, the largest that
#: keeps the longest under this): durations are rounded down to that unit.
RESOLUTION = 10_000_000


class NoSolution(ConfigError):
    """The solver found no schedule within its time limit, or none the engine runs within the limit.

    ``note`` says which in a few words, for the search's ``method``; ``bound``
    is the lower bound the solver proved all the same (its model relaxes the
    engine whatever order it returns), or None.
    """

    def __init__(self, message: str, note: str, bound: Bound | None = None) -> None:
        super().__init__(message)
        self.note = note
        self.bound = bound  # what the solver proved all the same, if anything


#: The sizes the search solves exactly by default (``search``): CP-SAT proves these in seconds.
EXACT_DEVICES, EXACT_MICROBATCHES = 4, 8


def search(
    times: ActionTimes,
    limit: int | Sequence[int],
    seconds: float = 2.0,
    exact: bool | None = None,
    objective: str = "makespan",
) -> Found:
    """The heuristic search (``synthesise``), and for small sizes (``exact``; default K <= 4 and M <= 8) the
    exact one too: the faster schedule of the two, and the higher of their lower bounds.

    The solver's model minimises one step's makespan; for
    ``objective="period"`` (steps back to back) its schedule is one more
    candidate, kept where its period is shorter, and the bound stays the
    period's (``bounds.period_bound``).
    """
    heuristic = synthesise(times, limit, objective=objective)
    small = times.devices <= EXACT_DEVICES and times.microbatches <= EXACT_MICROBATCHES
    if heuristic.optimal or not (small if exact is None else exact):
        return heuristic  # proved optimal by the lower bound already, or too large to solve
    if objective != "makespan":
        try:
            solved = replace(solve(times, limit, seconds, hint=heuristic.schedule), objective=objective)
        except NoSolution:
            return replace(heuristic, candidates=heuristic.candidates + 1)
        n = heuristic.candidates + 1
        if solved.value < heuristic.value:  # the model's verdict is on the makespan: say what it is kept for
            heuristic = replace(solved, method=solved.method.replace("exact: ", "exact for the makespan: ")
                                + ", the shortest period found")  # fmt: skip
        return replace(heuristic, bound=period_bound(times), candidates=n)
    try:
        solved = solve(times, limit, seconds, hint=heuristic.schedule)
    except NoSolution as exc:  # the heuristic's schedule stands, with what the solver proved; the output says why
        bound = max(heuristic.bound, exc.bound or heuristic.bound, key=lambda b: b.value)
        return replace(
            heuristic, bound=bound, method=f"{heuristic.method}; {exc.note}", candidates=heuristic.candidates + 1
        )
    bound = max(heuristic.bound, solved.bound, key=lambda b: b.value)
    best = min((solved, heuristic), key=lambda f: f.evaluation.makespan)  # the exact one among equals
    if best.value < bound.value <= best.value * (1 + 1e-12):  # the bound's own round-off, from the solver's units
        bound = Bound(best.value, bound.reason)
    method = best.method
    if best is heuristic and not solved.method.endswith("optimum"):
        method += "; CP-SAT found nothing faster within its time limit"
    return Found(best.schedule, best.evaluation, bound, method, heuristic.candidates + 1)


def _split_backwards(schedule: Schedule) -> list[list[tuple[str, int, int]]]:
    """Per device, ``schedule``'s (op, stage, micro-batch) with each full backward B as its two halves, I then
    W at once: the same order, in flight as long (a B frees its micro-batch when it ends, as the W right after
    it does). The schedule has F, B, I and W actions only, as every one the evaluator timed."""
    rows: list[list[tuple[str, int, int]]] = []
    for row in schedule.actions:
        rows.append([])
        for a in map(lambda x: cast(Action, x), row):
            m = int(a.microbatch or 0)
            rows[-1] += [("I", a.stage, m), ("W", a.stage, m)] if a.op == "B" else [(a.op, a.stage, m)]
    return rows


def _earliest(
    orders: list[list[tuple[str, int, int]]],
    lengths: dict[tuple[str, int, int], int],
    send: Callable[[str, int, int], int],
) -> dict[tuple[str, int, int], int]:
    """Each action's start in the model's ticks when every device runs its order in ``orders`` (split
    backwards) as early as the model's precedences allow: a complete solution of the model, to hint it with."""
    S = 1 + max(s for row in orders for _, s, _ in row)
    ends: dict[tuple[str, int, int], int] = {}
    starts: dict[tuple[str, int, int], int] = {}
    position, free = [0] * len(orders), [0] * len(orders)
    moved = True
    while moved:  # a valid schedule's every action is reached: each pass runs at least one
        moved = False
        for d, row in enumerate(orders):
            while position[d] < len(row):
                key = op, s, m = row[position[d]]
                after: tuple[str, int, int] | None
                if op == "F":
                    after, delay = (("F", s - 1, m), send("F", s - 1, m)) if s > 0 else (None, 0)
                elif op == "W":
                    after, delay = ("I", s, m), 0
                else:
                    after, delay = (("I", s + 1, m), send("B", s, m)) if s < S - 1 else (("F", s, m), 0)
                if after is not None and after not in ends:
                    break
                starts[key] = max(free[d], ends[after] + delay if after is not None else 0)
                free[d] = ends[key] = starts[key] + lengths[key]
                position[d] += 1
                moved = True
    return starts


def solve(
    times: ActionTimes,
    limit: int | Sequence[int],
    seconds: float = 2.0,
    split: bool = True,
    workers: int = 1,
    hint: Schedule | None = None,
) -> Found:
    """The optimal schedule for ``times`` and ``limit``, or the best found in ``seconds`` with its gap.

    ``hint``, a valid schedule within ``limit`` (the heuristic's), starts the
    solver from that schedule's orders run as early as the model allows, so
    it has a solution at once, at least as good in the model's time (which
    lets no send queue: in the engine's it can be slower, and ``search``
    keeps the faster). Raises ``ConfigError`` for a time limit that is not
    positive, a limit below the stages a device holds, or a placement other
    than one stage per device or a V (``greedy.supported``); ``NoSolution``
    when the solver finds no schedule within its limit, or its order is not
    one the engine runs within ``limit`` (see the module).
    """
    from ortools.sat.python import cp_model

    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--time-limit {seconds:g} is not allowed; give a positive number of work units, e.g. 2")
    S, M, K = times.stages, times.microbatches, times.devices
    mine = supported(times)
    limits = per_device(limit, K, len(mine[0]))
    placement = times.placement
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
    intervals: list[list[Any]] = [[] for _ in range(K)]
    for (op, s, m), t in lengths.items():
        a = model.new_int_var(0, horizon, f"s_{op}{s}_{m}")
        b = model.new_int_var(0, horizon, f"e_{op}{s}_{m}")
        intervals[placement[s]].append(model.new_interval_var(a, ticks(t), b, f"{op}{s}_{m}"))
        start[(op, s, m)], end[(op, s, m)] = a, b
    for d in range(K):
        model.add_no_overlap(intervals[d])
    done = "W" if split else "B"
    for d in range(K):  # the stage-micro-batches in flight on each device, over all the stages it holds
        held = []  # each from its F's start to its W's (or B's) end, one unit of the device's limit
        for s in mine[d]:
            for m in range(M):
                a, b = start[("F", s, m)], end[(done, s, m)]
                held.append(model.new_interval_var(a, model.new_int_var(0, horizon, f"h{s}_{m}"), b, f"held{s}_{m}"))
        model.add_cumulative(held, [1] * len(held), limits[d])
        events = [start[("F", s, m)] for s in mine[d] for m in range(M)]
        events += [end[(done, s, m)] for s in mine[d] for m in range(M)]
        n = len(events) // 2
        model.add_reservoir_constraint(events, [1] * n + [-1] * n, 0, limits[d])
    for s in range(S):
        for m in range(M):
            if s > 0:
                model.add(start[("F", s, m)] >= end[("F", s - 1, m)] + ticks(times.send("F", s - 1, m)))
            if s < S - 1:
                model.add(start[(backward, s, m)] >= end[(backward, s + 1, m)] + ticks(times.send("B", s, m)))
            else:
                model.add(start[(backward, s, m)] >= end[("F", s, m)])
            if split:
                model.add(start[("W", s, m)] >= end[("I", s, m)])
    if len(set(times.rows)) == 1 and len(set(times.recompute)) == 1:  # interchangeable micro-batches (same
        # size, all recomputed or none: not --remat except_last): number them in stage 0's forward order
        for m in range(M - 1):
            model.add(start[("F", 0, m)] <= start[("F", 0, m + 1)])
    makespan = model.new_int_var(0, horizon, "makespan")
    model.add_max_equality(makespan, list(end.values()))
    model.minimize(makespan)
    if hint is not None and split:  # (the full-backward model has no I and W to hint)
        tick_lengths = {k: ticks(t) for k, t in lengths.items()}
        starts = _earliest(_split_backwards(hint), tick_lengths, lambda d, s, m: ticks(times.send(d, s, m)))
        for k, at in starts.items():
            model.add_hint(start[k], at)
            model.add_hint(end[k], at + ticks(lengths[k]))
        model.add_hint(makespan, max(at + ticks(lengths[k]) for k, at in starts.items()))
    solver = cp_model.CpSolver()
    # deterministic time (CP-SAT's own work units, about seconds): the same answer on every machine and run,
    # where a wall-clock limit would stop at a different point each time
    solver.parameters.max_deterministic_time = float(seconds)
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = 0  # the same answer on every run
    # no linear relaxation: on these models CP-SAT's LP spends wall time its deterministic clock undercounts
    # (46 s for 2 units at K=3, M=6 on a V) and proves no more; without it the same limit takes 3-6 s
    # (measured on the test cases of tests/test_search_exact.py and test_search_v.py)
    solver.parameters.linearization_level = 0
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise NoSolution(
            f"the solver found no schedule within --time-limit {seconds:g}; allow more, or use the heuristic search",
            "CP-SAT reached its time limit before it returned a schedule",
        )
    orders = [
        [Action(s, op, m) for (op, s, m) in sorted((k for k in lengths if placement[k[1]] == d),
                                                    key=lambda k: (solver.value(start[k]), solver.value(end[k]),
                                                                   "FIWB".index(k[0]), k[2]))]
        for d in range(K)
    ]  # fmt: skip
    schedule = Schedule(orders)
    evaluation = evaluate(schedule, times)
    proved = solver.best_objective_bound / scale  # a lower bound: rounded-down times, sends without queues
    analytic = lower_bound(times, split=split)
    bound = (
        Bound(
            proved,
            "the solver's proof over every schedule ("
            + ("its model solved to the end" if status == cp_model.OPTIMAL else "as far as its time limit took it")
            + ")",
        )
        if proved > analytic.value
        else analytic
    )
    if evaluation.deadlock is not None or any(p > x for p, x in zip(evaluation.peak_inflight, limits)):
        raise NoSolution(
            "the solver's order puts actions of no time where the engine would not run them (it "
            + ("deadlocks" if evaluation.deadlock is not None else "holds more in flight than the limit")
            + "); use the heuristic search",
            "CP-SAT's order, with actions of no time, was not one the engine runs within the limit",
            bound,
        )
    verdict = "the model's optimum" if status == cp_model.OPTIMAL else "the best found within its time limit"
    return Found(schedule, evaluation, bound, f"exact: OR-Tools CP-SAT, {verdict}", 1)
