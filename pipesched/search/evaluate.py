"""A fast exact evaluator of one pipeline's schedule: the engine's makespan without SimPy, for a search.

A schedule search evaluates many candidate orders of the same actions under
the same costs. The engine (``pipesched.engine``) answers each with SimPy
events, memory samples and a trace; this module answers the three numbers a
search needs, makespan, each device's busy time and each device's peak
count of micro-batches in flight, in plain Python over precomputed times.

What it runs is what the engine runs for one pipeline (no data-parallel
replicas) under asynchronous sends (``--p2p async``), for schedules of F, B,
I and W actions (no SEND, RECV, REDUCE_GRAD or overlapped pairs):

- a device runs its actions in order; an action starts at the later of its
  device's previous action's end (0 for the first) and the arrival of its
  input: stage s-1's output for F of s > 0, stage s+1's input gradient for B
  or I of s < S-1 (its own F, and I before W, are earlier on the same device
  in a valid schedule);
- it lasts its compute time, a B or I of a re-materialized micro-batch
  first recomputing its forward (R, then B or I: two spans, as the engine's);
- an output for another device goes over the first-in first-out link
  ``src -> dst`` as ``pipesched.links.Links._send`` moves it: it occupies the
  link for ``busy`` from the later of its ready time and the link's free
  time, and lands ``latency`` after that; to the same device it lands at once;
- a tied pair's gradients (a decoder's tied embedding) are all-reduced after
  each device's last action in ring steps, as ``pipesched.collectives`` plans
  them: a step sends its chunk on, then waits for the one before's.

Since each link has one sending device, whose sends leave in its own action
order, every time depends only on the times before it along the schedule's
dependencies: the evaluator walks each device as far as its inputs allow,
and wakes a device when the input it waits for is sent. When no device can
move and some have actions left, the schedule deadlocks; ``Evaluation.deadlock``
says which devices wait for which inputs.

Every time is computed with the same floating-point operations, in the same
order, as the engine computes it (a SimPy timeout of ``d`` at ``now`` ends at
``now + d``; a transfer leaves at ``now + (end - now)`` and lands ``latency``
after that), so the makespan and busy times equal the engine's exactly, not
to a tolerance; the property tests hold them to ``==``.

>>> from pipesched import RunConfig, run
>>> from pipesched.pipeline import prepare
>>> config = RunConfig(strategy="1f1b", devices=4, microbatches=8, cost="unit", compute=False)
>>> prepared = prepare(config)
>>> result = evaluate(prepared.schedule, from_prepared(prepared))
>>> result.makespan, run(config).metrics.makespan  # (M + K - 1)(F + B) = 11 * 3
(33.0, 33.0)
>>> result.peak_inflight  # 1F1B's warm-up: K - d micro-batches on device d
(4, 3, 2, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from ..collectives import plan_collectives
from ..compute import ShapeWorkload, Workload
from ..cost import CostModel
from ..engine import check_remat, remat_keeps
from ..errors import ConfigError, DeadlockError, ScheduleError
from ..precision import nbytes
from ..schedule import Action, Schedule, validate

__all__ = ["ActionTimes", "TieStep", "Evaluation", "action_times", "from_prepared", "evaluate", "placement_of"]

#: The ops the evaluator runs.
EVALUATED_OPS = ("F", "B", "I", "W")

# one compiled action: (input key or -1, recompute time or 0, duration or None (no span), in-flight change,
# output key or -1, link index or -1 (the same device), the link's busy time, latency)
_Compiled = tuple[int, float, "float | None", int, int, int, float, float]


class TieStep(NamedTuple):
    """One ring step of a tied pair's all-reduce on a device: send a chunk to ``to``, then wait for one.

    ``key`` names the step (collective op, first stage, step number), as the
    engine's ``ReduceStep`` does; the chunk sent lands on ``to`` under the same
    key and the one awaited comes from the ring's previous device.
    """

    key: tuple[str, int, int]
    to: int
    busy: float
    latency: float


@dataclass(frozen=True)
class ActionTimes:
    """The times the engine would use for one pipeline: per action and per stage boundary.

    ``compute[(op, stage, rows)]`` is the duration of ``op`` (F, B, I, W or R,
    the recompute) of ``stage`` on a micro-batch of ``rows`` samples on the
    stage's device; ``forward[(s, rows)]`` the (busy, latency) of stage s's
    output sent to stage s + 1, ``backward[(s, rows)]`` of stage s + 1's input
    gradient sent back to s (both as ``CostModel.transfer_times`` gives them
    for the bytes the workload sends between the stages' devices).
    ``recompute[m]`` says whether micro-batch m's backward recomputes its
    forward first (re-materialization); ``ties[d]`` are device d's tied-weight
    all-reduce steps, run after its last action. ``overlap`` is the cost
    model's rule for overlapped pairs (the bounds need ``sum``), ``time_unit``
    its unit of time.
    """

    devices: int
    placement: tuple[int, ...]  # stage -> device
    rows: tuple[int, ...]  # micro-batch -> its rows
    compute: dict[tuple[str, int, int], float]
    forward: dict[tuple[int, int], tuple[float, float]]
    backward: dict[tuple[int, int], tuple[float, float]]
    recompute: tuple[bool, ...]
    ties: tuple[tuple[TieStep, ...], ...] = ()
    overlap: str = "sum"
    time_unit: str = "s"  # the cost model's: seconds, or "unit" for unit cost (how the bounds print times)
    # per action the compiled form the evaluator's loop reads; built on first use
    _table: dict[Action, _Compiled] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def stages(self) -> int:
        return len(self.placement)

    @property
    def microbatches(self) -> int:
        return len(self.rows)

    def time(self, op: str, stage: int, mb: int) -> float:
        """The duration of ``op`` (F, B, I, W or R) of ``stage`` on micro-batch ``mb``."""
        return self.compute[(op, stage, self.rows[mb])]

    def send(self, direction: str, boundary: int, mb: int) -> float:
        """busy + latency of micro-batch ``mb``'s activation (``"F"``) or gradient (``"B"``) across ``boundary``.

        Zero where both stages share a device: such an output lands at once.
        """
        if self.placement[boundary] == self.placement[boundary + 1]:
            return 0.0
        busy, latency = (self.forward if direction == "F" else self.backward)[(boundary, self.rows[mb])]
        return busy + latency

    def compiled(self) -> dict[Action, _Compiled]:
        """Per action, what the evaluator's loop reads, built once for every (stage, op, micro-batch).

        Keys of inputs: stage s's input of micro-batch m is ``s·M + m``, the
        gradient of stage s's output ``(S + s)·M + m``.
        """
        if self._table:
            return self._table
        S, M, K = self.stages, self.microbatches, self.devices
        for s in range(S):
            here = self.placement[s]
            for m in range(M):
                r = self.rows[m]
                for op in EVALUATED_OPS:
                    out: tuple[int, int, dict[tuple[int, int], tuple[float, float]], int] | None = None
                    if op == "F":
                        key, pre, delta = (s * M + m if s > 0 else -1), 0.0, 1
                        if s + 1 < S:  # the output goes to stage s + 1 as its input
                            out = ((s + 1) * M + m, self.placement[s + 1], self.forward, s)
                    elif op == "W":
                        key, pre, delta = -1, 0.0, -1
                    else:
                        key = (S + s) * M + m if s < S - 1 else -1
                        pre = self.compute[("R", s, r)] if self.recompute[m] else 0.0
                        delta = -1 if op == "B" else 0
                        if s > 0:  # the input gradient goes back to stage s - 1
                            out = ((S + s - 1) * M + m, self.placement[s - 1], self.backward, s - 1)
                    if out is None:
                        target, link, busy, latency = -1, -1, 0.0, 0.0
                    else:
                        target, to, sends, boundary = out
                        busy, latency = sends[(boundary, r)]
                        link = -1 if to == here else here * K + to
                    duration = self.compute[(op, s, r)]
                    self._table[Action(s, op, m)] = (key, pre, duration, delta, target, link, busy, latency)
        return self._table


def action_times(
    placement: Sequence[int],
    devices: int,
    work: Workload,
    cost: CostModel,
    remat: str = "never",
    collective: str = "auto",
) -> ActionTimes:
    """The times the engine would use for ``work`` under ``cost`` with stage s on device ``placement[s]``.

    The same calls as the engine's: ``cost.compute_time(op, work.layers[s],
    rows, K / S, s, device)`` (``_Engine._duration``; K the devices, S the
    stages), ``cost.transfer_times(nbytes, src, dst, boundary)`` for the bytes
    of the stage's output (``work.forward``) and of its input gradient
    (``work.backward_input``) in the workload's precision (``Links._send``),
    ``remat_keeps`` for which micro-batches recompute, and
    ``plan_collectives`` for a tied pair's all-reduce.
    """
    check_remat(remat)
    stages = len(placement)
    microbatches = len(work.rows)
    units = devices / 1 / stages  # the engine's stage_units, K / replicas / S, in its order of operations
    sizes = sorted(set(work.rows))
    first = {r: work.rows.index(r) for r in sizes}  # a micro-batch of each size: bytes depend on its rows only
    compute: dict[tuple[str, int, int], float] = {}
    forward: dict[tuple[int, int], tuple[float, float]] = {}
    backward: dict[tuple[int, int], tuple[float, float]] = {}
    for s, device in enumerate(placement):
        for r in sizes:
            for op in ("F", "B", "I", "W", "R"):
                compute[(op, s, r)] = cost.compute_time(op, work.layers[s], r, units, s, device)
            y, held = work.forward(s, first[r], None, True)
            if s + 1 < stages:
                forward[(s, r)] = cost.transfer_times(nbytes(y, work.itemsize), device, placement[s + 1], s)
            if s > 0:
                dx, _ = work.backward_input(s, first[r], held, None)
                backward[(s - 1, r)] = cost.transfer_times(nbytes(dx, work.itemsize), device, placement[s - 1], s - 1)
    recompute = tuple(not remat_keeps(remat, m, microbatches) for m in range(microbatches))
    _, ties = plan_collectives({s: (d,) for s, d in enumerate(placement)}, work, cost, "allreduce", collective)
    steps: list[list[TieStep]] = [[] for _ in range(devices)]
    for d in range(devices):
        for step in (step for c in ties for step in c.steps(d)):
            ring = step.ring
            to = ring[(ring.index(d) + 1) % len(ring)]
            busy, latency = cost.transfer_times(-(-step.nbytes // len(ring)), d, to, None)  # a chunk: 1/R, rounded up
            steps[d].append(TieStep((step.op, step.stage, step.step), to, busy, latency))
    return ActionTimes(
        devices,
        tuple(placement),
        tuple(work.rows),
        compute,
        forward,
        backward,
        recompute,
        tuple(tuple(s) for s in steps) if any(steps) else (),
        str(getattr(cost, "overlap", "sum")),
        cost.time_unit,
    )


def from_prepared(prepared: Any) -> ActionTimes:
    """The times of a prepared run (``pipesched.pipeline.prepare``) of one pipeline under asynchronous sends.

    Refuses, in one sentence each, what the evaluator does not run: data
    parallelism, blocking sends, a stage on several devices. Memory is not
    counted: a run the engine stops out of memory (``--device-memory``, a
    preset's memory) still gets its times here.
    """
    from ..pipeline import training_sizes  # pipeline imports the engine and strategies; import it when asked

    config = prepared.config
    if config.data_parallel != 1:
        raise ConfigError(
            f"--data-parallel {config.data_parallel}: the fast evaluator runs one pipeline; use --data-parallel 1"
        )
    if config.p2p != "async":
        raise ConfigError(f"--p2p {config.p2p}: the fast evaluator runs asynchronous sends only; use --p2p async")
    schedule = prepared.schedule
    placement = placement_of(schedule)
    size, state = training_sizes(config)
    rows = [s.stop - s.start for s in prepared.slices]
    work: Workload
    if prepared.decoder is not None:  # the decoder's own shape-only workload, as pipeline.execute builds it
        from ..decoder.tensor import Split
        from ..decoder.workload import DecoderShapeWorkload

        split = Split(config.tensor_parallel, config.sequence_parallel)
        work = DecoderShapeWorkload(prepared.layers, prepared.partition, rows, config.seq_len or 0, size, state, split)
    else:
        work = ShapeWorkload(prepared.layers, prepared.partition, rows, size, state)
    return action_times(placement, schedule.devices, work, prepared.cost, config.remat, config.collective)


def placement_of(schedule: Schedule) -> tuple[int, ...]:
    """Stage -> the one device running its forwards; ``ConfigError`` for a replicated stage."""
    placement = schedule.placement()
    for s, devices in placement.items():
        if len(devices) > 1:
            raise ConfigError(
                f"stage {s} runs on devices {', '.join(map(str, devices))}; the fast evaluator runs one pipeline, "
                "each stage on one device"
            )
    return tuple(placement[s][0] for s in range(len(placement)))


@dataclass(frozen=True)
class Evaluation:
    """What a schedule takes, as the engine's ``Trace.makespan``, ``Trace.busy_time`` and ``peak_inflight`` say.

    ``deadlock`` is None for a schedule that finishes; otherwise it says which
    devices wait for what, and ``makespan`` is infinite.
    """

    makespan: float
    busy: tuple[float, ...]
    peak_inflight: tuple[int, ...]
    deadlock: str | None = None
    period: float = float("inf")  # steps back to back: ``Trace.period``, the longest device or link window

    def check(self) -> Evaluation:
        """Itself, or ``DeadlockError`` with the deadlock's description."""
        if self.deadlock is not None:
            raise DeadlockError(self.deadlock)
        return self


def _describe(key: int, times: ActionTimes, ties: dict[int, tuple[str, int, int]]) -> str:
    """What the input ``key`` is and where it comes from, in the engine's words (``pipesched.diagnose``)."""
    if key in ties:
        _, stage, step = ties[key]
        return f"step {step} of the tied-weight all-reduce of stage {stage}"
    which, m = divmod(key, times.microbatches)
    if which < times.stages:
        return f"the activation of micro-batch {m} from {which - 1}F{m} (on device {times.placement[which - 1]})"
    s = which - times.stages + 1
    return f"the gradient of micro-batch {m} from stage {s}'s backward (on device {times.placement[s]})"


def _programs(schedule: Schedule, times: ActionTimes) -> tuple[list[list[_Compiled]], dict[int, tuple[str, int, int]]]:
    """Per device its compiled actions, then its tied-weight steps; and what each tie key is."""
    table = times.compiled()
    programs: list[list[_Compiled]] = []
    for d, row in enumerate(schedule.actions):
        try:
            programs.append([table[a] for a in row])  # type: ignore[index]  # an Overlap is refused below
        except (KeyError, TypeError):
            a = next(a for a in row if type(a) is not Action or a not in table)
            raise ScheduleError(
                f"device {d} runs {a}; the fast evaluator runs only F, B, I and W actions (no SEND, RECV, "
                "REDUCE_GRAD or overlapped pairs): simulate this schedule with pipesched.run"
            ) from None
    base = 2 * times.stages * times.microbatches
    key_of: dict[tuple[Any, ...], int] = {}
    for d, steps in enumerate(times.ties):
        for step in steps:  # a send (no input, no span), then a wait for the chunk from before (an input, no span)
            sent = key_of.setdefault((step.key, step.to), base + len(key_of))
            awaited = key_of.setdefault((step.key, d), base + len(key_of))
            programs[d].append((-1, 0.0, None, 0, sent, d * times.devices + step.to, step.busy, step.latency))
            programs[d].append((awaited, 0.0, None, 0, -1, -1, 0.0, 0.0))
    return programs, {v: k[0] for k, v in key_of.items()}


def evaluate(schedule: Schedule, times: ActionTimes, check: bool = True) -> Evaluation:
    """Run ``schedule`` under ``times``: its makespan, busy time and peak in flight per device, or its deadlock.

    With ``check`` the schedule is first validated (``pipesched.schedule.validate``)
    and its placement compared with the times'; a search that only reorders
    a valid schedule's per-device actions may skip both. Raises
    ``ScheduleError`` for an action the evaluator does not run.
    """
    K, S, M = times.devices, times.stages, times.microbatches
    if check:
        validate(schedule, K, M)
        if placement_of(schedule) != times.placement:
            raise ConfigError(
                f"the schedule places stages on devices {list(placement_of(schedule))} but the times were built "
                f"for {list(times.placement)}; build the times for this schedule's placement"
            )
    programs, tie_keys = _programs(schedule, times)
    arrived: list[float | None] = [None] * (2 * S * M + len(tie_keys))
    waiter = [-1] * len(arrived)
    link_free: list[float | None] = [None] * (K * K)
    link_first: list[float | None] = [None] * (K * K)  # when the link's first transfer leaves
    position, free, busy = [0] * K, [0.0] * K, [0.0] * K
    first = [0.0] * K  # when the device's first action starts (its window, ``Trace.period``, opens)
    held, peak = [0] * K, [0] * K
    makespan = 0.0
    ready = list(range(K - 1, -1, -1))
    while ready:
        d = ready.pop()
        program, p, t, b, h, top = programs[d], position[d], free[d], busy[d], held[d], peak[d]
        n = len(program)
        while p < n:
            key, pre, duration, delta, out, link, cost, latency = program[p]
            if key >= 0:
                at = arrived[key]
                if at is None:
                    waiter[key] = d
                    break
                if at > t:
                    t = at
            if duration is not None:
                start = t
                if not p:
                    first[d] = start
                if pre:  # R, then the backward: two spans, as the engine records them
                    t = start + pre
                    b += t - start
                    start = t
                t = start + duration
                b += t - start
                if t > makespan:
                    makespan = t
                if delta:
                    h += delta
                    if h > top:
                        top = h
            if out >= 0:
                if link < 0:  # to the same device: it lands at once
                    arrival = t
                else:
                    last = link_free[link]
                    leaves = t if last is None or last < t else last  # first in, first out on this link
                    if last is None:
                        link_first[link] = leaves
                    end = leaves + cost
                    link_free[link] = end
                    landed = end + latency
                    if landed > makespan:
                        makespan = landed
                    if landed == t:
                        arrival = t
                    else:  # the engine's events: the bytes leave at now + (end - now), land latency later
                        arrival = t + (end - t)
                        if latency != 0:
                            arrival = arrival + latency
                arrived[out] = arrival
                w = waiter[out]
                if w >= 0:
                    waiter[out] = -1
                    ready.append(w)
            p += 1
        position[d], free[d], busy[d], held[d], peak[d] = p, t, b, h, top
    stuck = [d for d in range(K) if position[d] < len(programs[d])]
    if stuck:
        waits = "; ".join(
            f"device {d} waits"
            + (f" at {schedule.actions[d][position[d]]}" if position[d] < len(schedule.actions[d]) else "")
            + f" for {_describe(programs[d][position[d]][0], times, tie_keys)}"
            for d in stuck
        )
        return Evaluation(
            float("inf"),
            tuple(busy),
            tuple(peak),
            f"the schedule deadlocks: {waits}; reorder the actions so that every input is produced before a "
            "device waits for it",
        )
    # back to back (``Trace.period``): a device's window ends at its last action or at the last all-reduce chunk
    # landing on it, which it waits for, so at ``free``; a link's from its first transfer's leaving to its last's end
    windows = [free[d] - first[d] for d in range(K) if programs[d]]
    windows += [end - begin for end, begin in zip(link_free, link_first) if end is not None and begin is not None]
    return Evaluation(makespan, tuple(busy), tuple(peak), None, max(windows, default=0.0))
