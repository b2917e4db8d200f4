"""The engine's fast path for shape-only runs: the same SimPy events, memory counted by arithmetic.

Under ``--no-compute`` nothing is computed: the engine (``pipesched.engine``)
moves stand-ins (``pipesched.compute.Buffer``) between devices and counts
them one by one, by reference, in each device's ``DeviceMemory``. For a
plain pipeline every stand-in's bytes are known in advance, so this path
keeps the engine's events and drops its objects: each action is the same
SimPy timeout, made in the same order, whose callback records the same span,
issues the same transfer and changes each device's bytes per role by the
amounts the engine's stand-ins would have moved (a ``ShapeWorkload``'s
widths times the micro-batch's rows; see ``ShapeWorkload``), then samples
memory exactly as the engine does. SimPy orders events by (time, order
made), so ties at one instant fall in the same order too: the trace, its
memory timelines and peaks are the engine's, field for field, which a
property test holds on every built-in strategy, random schedules, every
remat mode and every cost model (``tests/test_fastpath.py``).

What a stand-in's identity decides, arithmetic can only follow where no
array is counted twice on one device, so the path runs where it holds:

- the work is a ``ShapeWorkload`` (no tied weights), sends are asynchronous
  (``--p2p async``) and the schedule names only F, B, I and W (no SEND, RECV,
  REDUCE_GRAD or overlapped pairs);
- every stage runs on one device (no data-parallel replicas, so no
  collectives);
- no stage whose kept forward holds its output (a ReLU mask, the loss)
  hands that output to the next stage on the same device, where the engine
  counts the one array once in two roles (a V-shaped schedule's turn).

Elsewhere ``simulate_shapes`` returns None and the engine runs the step, as
it does to explain a deadlock, or a device out of memory that is an error
(without ``allow_oom``): the fast path then stops and leaves the run, and
its message, to the engine. With ``allow_oom`` it records the first device
over its memory, and when, in ``trace.oom``, as the engine does.

The rules, per (stage s, micro-batch m), with ``X`` the input's bytes, ``N``
the inner layer inputs', ``Y`` the output's if the stage keeps it, ``G`` the
pre-activation gradients' (``pipesched.memory`` gives the roles):

- F: activations += X (+ N + Y if the forward keeps them); an arrived input
  leaves the buffers (it is now an activation);
- R, a re-materialized backward's recompute: activations += N + Y;
- B: a device's first B or W of a stage adds its gradients; at its end
  activations -= X + N + Y and the arrived gradient leaves the buffers;
- I: deferred += G at its start; at its end X and N move from activations to
  deferred, Y leaves, the gradient leaves the buffers; W: deferred -= X + N + G;
- a message is a buffer on its receiver from arrival until used, and on its
  sender while queued or on the wire, unless the sender keeps it anyway.

Two micro-batches of 2 rows through widths 4, 4, 4 (a ReLU between), 8 bytes
an element: device 0 keeps each micro-batch's input and output (the mask),
2 · 2·4·8 = 128 bytes, so 256 with both in flight:

>>> from pipesched.model import layers_from_widths
>>> from pipesched.cost import UnitCost
>>> gpipe = Schedule.parse(["0F0 0F1 0B1 0B0", "1F0 1F1 1B1 1B0"])
>>> work = ShapeWorkload(layers_from_widths([4, 4, 4]), (range(0, 1), range(1, 2)), rows=[2, 2])
>>> trace = simulate_shapes(gpipe, work, UnitCost(), "never")
>>> [sample.activations for sample in trace.memory[0]], trace.peaks[0][0]
([128, 256, 256, 128, 0], 256)
"""

from __future__ import annotations

from typing import Any, Callable, cast

import simpy

from .collectives import optimizer_share
from .compute import ShapeWorkload
from .cost import CostModel
from .memory import DeviceMemory, finish_trace
from .remat import remat_keeps
from .schedule import Schedule
from .trace import MemorySample, Trace

__all__ = ["simulate_shapes", "applies"]

#: The ops the fast path runs: compute actions only
FAST_OPS = frozenset({"F", "B", "I", "W"})


def applies(schedule: Schedule, work: Any, remat: str, p2p: str = "async") -> bool:
    """Whether the fast path runs this step exactly as the engine would (see the module's text).

    >>> from pipesched.model import layers_from_widths
    >>> work = ShapeWorkload(layers_from_widths([4, 4, 4]), (range(0, 1), range(1, 2)), rows=[2])
    >>> applies(Schedule.parse(["0F0 0B0", "1F0 1B0"]), work, "never")
    True
    >>> applies(Schedule.parse(["0F0 1F0 1B0 0B0"]), work, "never")  # stage 0 hands its kept mask to stage 1
    False
    >>> applies(Schedule.parse(["0F0 1F0 1B0 0B0"]), work, "always")  # no forward keeps its output
    True
    """
    if (
        type(work) is not ShapeWorkload
        or p2p != "async"
        or schedule.replicas != 1
        or not schedule.ops <= FAST_OPS
        or schedule.overlaps
    ):
        return False
    placement = schedule.placement()
    if any(len(devices) != 1 for devices in placement.values()):
        return False
    if remat == "always":  # no forward keeps its output: nothing is counted twice
        return True
    on = [placement[s][0] for s in range(schedule.num_stages)]
    return not any(on[s] == on[s + 1] and work.widths[s].keeps_output for s in range(len(on) - 1))


class _Stop(Exception):
    """A device ran out of memory: the engine runs the step again and reports it."""


def simulate_shapes(
    schedule: Schedule,
    work: ShapeWorkload,
    cost: CostModel,
    remat: str,
    device_memory: int | None = None,
    p2p: str = "async",
    grad_sync: str = "allreduce",
    allow_oom: bool = False,
) -> Trace | None:
    """The engine's trace of ``schedule`` on shape-only ``work``, or None where the engine must run it.

    None where the fast path does not apply (``applies``), where the
    schedule deadlocks and where a device exceeds ``device_memory`` bytes
    without ``allow_oom``: ``pipesched.engine.simulate`` then runs the
    engine, which raises with its message. With ``allow_oom`` the first
    device over its memory is recorded in ``trace.oom``, as the engine
    records it. ``remat`` must be one of ``REMAT_MODES``.
    """
    if not applies(schedule, work, remat, p2p):
        return None
    try:
        return _run(schedule, work, cost, remat, device_memory, grad_sync, allow_oom)
    except _Stop:
        return None


def _run(
    schedule: Schedule,
    work: ShapeWorkload,
    cost: CostModel,
    remat: str,
    capacity: int | None,
    grad_sync: str,
    allow_oom: bool,
) -> Trace | None:
    """``simulate_shapes`` once it applies: the step's trace, None on a deadlock; raises ``_Stop`` past memory.

    The functions below are closures over tables built here (per stage, per
    micro-batch, per route), the engine's state machine with its state in
    lists indexed by device, stage, micro-batch or input key.
    """
    env = simpy.Environment()
    timeout = env.timeout
    devices, stages, total = schedule.devices, schedule.num_stages, schedule.microbatches
    microbatches = total // schedule.replicas  # one replica's M, as the engine's remat rule counts it
    placement = schedule.placement()
    on = [placement[s][0] for s in range(stages)]  # the device of each stage
    stage_units = devices / schedule.replicas / stages
    layers, itemsize = work.layers, work.itemsize
    row_bytes = [rows * itemsize for rows in work.rows]
    widths = work.widths
    # per stage, in elements per row: the input (the previous stage's output, or the data), the inner layer
    # inputs, the output where a kept forward holds it, the pre-activation gradients, the input gradient
    x_w = [widths[0].first] + [w.out for w in widths[:-1]]
    n_w = [w.inner for w in widths]
    y_w = [w.out if w.keeps_output else 0 for w in widths]
    g_w = [w.gradients for w in widths]
    dx_w = [w.first for w in widths]
    out_w = [w.out for w in widths]
    kept_w = [x + n + y for x, n, y in zip(x_w, n_w, y_w)]
    keeps = [remat_keeps(remat, m % microbatches, microbatches) for m in range(total)]

    hosted: list[set[int]] = [set() for _ in range(devices)]
    for s, d in enumerate(on):
        hosted[d].add(s)
    trace = Trace(devices=devices, time_unit=cost.time_unit)

    def exceeded(d: int) -> Callable[[MemorySample], None]:
        """What device d does past its memory: as the engine's ``_exceeded``, except that it stops instead of
        raising, so that the engine runs the step and raises with its message."""

        def on_exceed(sample: MemorySample) -> None:
            if not allow_oom:
                raise _Stop
            if trace.oom is None:
                trace.oom = (d, sample)

        return on_exceed

    memory = [
        DeviceMemory(
            sum(work.param_bytes(s) for s in stages_of),
            capacity,
            None if capacity is None else exceeded(d),
            optimizer=sum(optimizer_share(work.optimizer_bytes(s), 1, grad_sync) for s in stages_of),
            itemsize=itemsize,
        )
        for d, stages_of in enumerate(hosted)
    ]
    by_role = [m.by_role for m in memory]  # [activations, deferred, buffers] per device, changed in place
    sample = [m.sample for m in memory]
    add_span, add_transfer = trace.spans.add, trace.transfers.add
    has_grads = [False] * stages

    # durations by (stage, micro-batch size): a micro-batch's size is one of a few (``pipesched.microbatch``), so
    # each op's are a table indexed stage · sizes + the size's index, filled as first asked
    sizes = list(dict.fromkeys(work.rows))
    kinds = len(sizes)
    kind = [sizes.index(rows) for rows in work.rows]
    f_times: list[float | None] = [None] * (stages * kinds)
    by_op: dict[str, list[float | None]] = {"F": f_times}
    by_op.update((op, [None] * (stages * kinds)) for op in ("B", "I", "W", "R"))

    def timed(op: str, s: int, m: int) -> float:
        """The duration of ``op`` of (stage s, micro-batch m), asked of the cost model once per stage and size."""
        table, j = by_op[op], s * kinds + kind[m]
        time = table[j]
        if time is None:
            time = table[j] = cost.compute_time(op, layers[s], work.rows[m], stage_units, s, on[s])
        return time

    # Each stage sends on two routes, its output forward (route 2s) and its input gradient back (2s + 1): per
    # route the receiving device, the message's width, the boundary it crosses, the first input key it fills
    # (an input is key 2(s·M + m), an activation into stage s, or that + 1, the gradient into it), and its
    # link's index (-1 within a device); the link's busy time and latency by route and size, as first asked
    dst_of, width_of, boundary_of, key_of, route_link = (
        [0] * 2 * stages,
        [0] * 2 * stages,
        [0] * 2 * stages,
        [0] * 2 * stages,
        [-1] * 2 * stages,
    )
    links: dict[tuple[int, int], int] = {}
    for s in range(stages):
        for route, to, width in ((2 * s, s + 1, out_w[s]), (2 * s + 1, s - 1, dx_w[s])):
            if 0 <= to < stages:
                dst_of[route], width_of[route], boundary_of[route] = on[to], width, min(s, to)
                key_of[route] = 2 * to * total + route % 2
                if on[to] != on[s]:
                    route_link[route] = links.setdefault((on[s], on[to]), len(links))
    link_free = [0.0] * len(links)  # when each link is next free; times start at 0
    link_times: list[tuple[float, float] | None] = [None] * (2 * stages * kinds)

    # applies(): actions of F, B, I and W only, each naming a micro-batch
    programs = cast("tuple[tuple[tuple[int, str, int], ...], ...]", schedule.actions)
    position = [0] * devices
    arrived = bytearray(2 * stages * total)  # by input key, as key_of numbers them
    waiting = [-1] * devices  # the input each device waits for, -1 for none

    def advance(d: int) -> None:
        program, i = programs[d], position[d]
        if i >= len(program):
            return
        s, op, m = program[i]
        if op == "F":
            key = 2 * (s * total + m) if s > 0 else -1
        elif op == "W":
            key = -1
        else:
            key = 2 * (s * total + m) + 1 if s < stages - 1 else -1
        if key >= 0:
            if not arrived[key]:
                waiting[d] = key
                return
            arrived[key] = 0
        waiting[d] = -1
        position[d] = i + 1
        now = env.now
        if op == "F":
            forward(d, s, m, now)
        elif op == "W":
            weights_only(d, s, m, now)
        elif keeps[m]:
            backward(d, s, m, op, now)
        else:
            recompute(d, s, m, now)

    # A device runs one action at a time, so what its running action's callback needs is kept per device (when
    # it began, when it ends; the action itself is the one before its position), and each device has one
    # callback per kind of action, made once, instead of a closure made per action
    begun, ending = [0.0] * devices, [0.0] * devices

    def forward(d: int, s: int, m: int, now: float) -> None:
        rb, counts = row_bytes[m], by_role[d]
        counts[0] += rb * (kept_w[s] if keeps[m] else x_w[s])
        if s > 0:
            counts[2] -= rb * x_w[s]  # the arrived input is an activation now
        sample[d](now)
        time = f_times[s * kinds + kind[m]]  # ``timed``'s table read inline: forwards are half of all actions
        if time is None:
            time = timed("F", s, m)
        begun[d], ending[d] = now, now + time
        timeout(time).callbacks.append(forward_done[d])

    def recompute(d: int, s: int, m: int, now: float) -> None:
        by_role[d][0] += row_bytes[m] * (n_w[s] + y_w[s])  # the input is held already
        sample[d](now)
        time = timed("R", s, m)
        begun[d], ending[d] = now, now + time
        timeout(time).callbacks.append(recomputed[d])

    def grads(d: int, s: int, now: float) -> None:
        if not has_grads[s]:  # the gradient buffer appears with the stage's first B or W
            has_grads[s] = True
            memory[d].add_grads(work.param_bytes(s))
            sample[d](now)

    def backward(d: int, s: int, m: int, op: str, now: float) -> None:
        if op == "B":
            if not has_grads[s]:
                grads(d, s, now)
        else:  # I: the pre-activation gradients appear, and stay with the layer inputs for W
            by_role[d][1] += row_bytes[m] * g_w[s]
            sample[d](now)
        time = timed(op, s, m)
        begun[d], ending[d] = now, now + time
        timeout(time).callbacks.append(backward_done[d])

    def weights_only(d: int, s: int, m: int, now: float) -> None:
        grads(d, s, now)
        time = timed("W", s, m)
        begun[d], ending[d] = now, now + time
        timeout(time).callbacks.append(weights_done[d])

    def callbacks(d: int) -> tuple[Callable[[Any], None], ...]:
        """Device d's callbacks, one per kind of action: each finishes the action the device is running."""
        program, counts, sample_d = programs[d], by_role[d], sample[d]

        def forward_done(_: Any) -> None:
            s, _, m = program[position[d] - 1]
            end = ending[d]
            add_span(d, "F", s, m, begun[d], end)
            if s + 1 < stages:
                send(d, 2 * s, "F", m, end, keeps[m] and y_w[s] > 0)
            advance(d)

        def recomputed(_: Any) -> None:
            s, op, m = program[position[d] - 1]
            end = ending[d]
            add_span(d, "R", s, m, begun[d], end)
            backward(d, s, m, op, end)

        def backward_done(_: Any) -> None:
            s, op, m = program[position[d] - 1]
            rb, end = row_bytes[m], ending[d]
            add_span(d, op, s, m, begun[d], end)
            counts[0] -= rb * kept_w[s]
            if op == "I":
                counts[1] += rb * (x_w[s] + n_w[s])
            if s < stages - 1:
                counts[2] -= rb * dx_w[s + 1]  # the arrived gradient, used
            sample_d(end)
            if s > 0:
                send(d, 2 * s + 1, op, m, end, False)
            advance(d)

        def weights_done(_: Any) -> None:
            s, _, m = program[position[d] - 1]
            end = ending[d]
            add_span(d, "W", s, m, begun[d], end)
            counts[1] -= row_bytes[m] * (x_w[s] + n_w[s] + g_w[s])
            sample_d(end)
            advance(d)

        return forward_done, recomputed, backward_done, weights_done

    forward_done, recomputed, backward_done, weights_done = (
        list(kind) for kind in zip(*map(callbacks, range(devices)))
    )

    def send(src: int, route: int, op: str, m: int, now: float, kept: bool) -> None:
        """As ``pipesched.links.Links._move`` moves an output sent as it is made; ``kept``: the sender holds it."""
        dst, size, key, link = (
            dst_of[route],
            row_bytes[m] * width_of[route],
            key_of[route] + 2 * m,
            route_link[route],
        )
        if link < 0:  # within the device
            deliver(dst, key, size, now)
            return
        j = route * kinds + kind[m]
        times = link_times[j]
        if times is None:
            times = link_times[j] = cost.transfer_times(size, src, dst, boundary_of[route])
        busy, latency = times
        free = link_free[link]
        start = free if free > now else now  # first in, first out on this link
        end = link_free[link] = start + busy
        add_transfer(src, dst, route // 2, op, m, size, start, end, end + latency)
        if end + latency == now:  # a free transfer lands at once
            deliver(dst, key, size, now)
            return
        if not kept:
            by_role[src][2] += size  # queued or on the wire, still the sender's
        sample[src](now)

        def left(_: Any) -> None:
            if not kept:
                by_role[src][2] -= size  # the bytes have left the sender
            sample[src](env.now)
            if latency == 0:
                deliver(dst, key, size, env.now)
            else:
                timeout(latency).callbacks.append(lambda _: deliver(dst, key, size, env.now))

        timeout(end - now).callbacks.append(left)

    def deliver(d: int, key: int, size: int, now: float) -> None:
        arrived[key] = 1
        by_role[d][2] += size  # an arrived buffer waits on its device
        sample[d](now)
        if waiting[d] == key:
            advance(d)

    try:
        for d in range(devices):
            advance(d)
        env.run()
        if any(position[d] < len(programs[d]) for d in range(devices)):
            return None  # a deadlock: the engine finds and explains it
        finish_trace(trace, memory, cost)
        return trace
    finally:
        # the functions above call each other through their closures' cells, cycles only the collector would
        # free, with the tables they hold: emptied, reference counting frees them as the run returns
        _empty_cells(advance, forward, recompute, grads, backward, weights_only, callbacks, send, deliver, timed)


def _empty_cells(*functions: Callable[..., Any]) -> None:
    """Empty every cell of ``functions``' closures (the enclosing function's variables they share)."""
    for function in functions:
        for cell in function.__closure__ or ():
            cell.cell_contents = None
