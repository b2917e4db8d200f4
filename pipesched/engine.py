"""The SimPy engine: devices walk their action lists, links carry the real arrays, memory is counted.

Each device runs its actions in order. An action starts once its input has
arrived: a forward of stage s > 0 waits for stage s-1's output, a backward (B
or I) of a stage other than the last waits for the gradient from the stage
after it. Its own earlier F (and I before W) are guaranteed by validation.

Every action is one SimPy timeout whose callback finishes it and starts the
device's next action, a state machine per device rather than a process: a
process costs a generator and several events per action, and this engine
must not be slower than a hand-written SimPy loop. Outputs for another device
travel over the link ``src -> dst``, a first-in first-out server of capacity
one: a send occupies it for bytes / bandwidth from when it and the link are
free, and lands latency later, so sends queue on a link and overlap compute.
Queueing times are known when a send is issued, so each send is one or two
timeouts instead of a resource request; free transfers (unit cost) land at once.

Sends and receives mean what PyTorch's runtime means by them: see ``pipesched.links``.

A stage whose forwards run on several devices is replicated (data
parallelism); after its last action each replica joins a ring all-reduce of
that stage's gradients: 2(R-1) steps, each sending 1/R of the bytes to the
next replica over the links (Patarasuk and Yuan 2009). ``grad_sync="sharded"``
replaces it by the distributed optimizer's reduce-scatter of the gradients
and all-gather of the updated parameters, each device then holding 1/R of
the stage's optimizer state; ``collective`` says whether a ring that spans
nodes runs in two levels (``pipesched.collectives``).

A workload may state tied weights (``ties``: (stage a, stage b, bytes), a
tied embedding and output layer): their two gradients are summed as
Megatron-LM sums them, by an all-reduce over its "embedding group", the
devices holding the two stages, after the backward and before the optimizer
step (``finalize_model_grads``, after the data-parallel reduction). Here it
is the same ring, each pipeline replica's over its own two devices
(``collectives.tie_rings``), after each one's last action and its replica
all-reduces; its chunks are transfers with op
``"tie"``. Where a device holds both stages there is nothing to send.

When no event is left but a device has not finished, the schedule deadlocked:
``DeadlockError`` names every blocked device and what it waits for.

A run makes a few objects per action, all freed by reference counting, so
Python's cyclic collector is paused while it runs (``collector_paused``): its
passes, set off by the allocations, found nothing and cost a quarter of a
large run, scanning the activations in flight again and again.

>>> from pipesched.model import layers_from_widths
>>> from pipesched.compute import ShapeWorkload
>>> from pipesched.cost import UnitCost
>>> from pipesched.schedule import Schedule
>>> schedule = Schedule.parse(["0F0 0F1 0B1 0B0", "1F0 1F1 1B1 1B0"])
>>> work = ShapeWorkload(layers_from_widths([4, 4, 4]), (range(0, 1), range(1, 2)), rows=[2, 2])
>>> trace = simulate(schedule, work, UnitCost(), remat="never")
>>> trace.makespan  # (M + K - 1) * (F + B) = 3 * 3
9.0
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import simpy

from .collectives import Collectives, ReduceStep, check_collective, check_grad_sync, optimizer_share, plan_collectives
from .compute import Held, ShapeWorkload, Workload
from .cost import CostModel, check_overlap, overlapped_time
from .diagnose import deadlock_message, oom_message
from .errors import DeadlockError, OutOfMemoryError
from .fastpath import simulate_shapes
from .links import P2P_MODES, Links, Message, check_p2p
from .links import Key as _Key
from .memory import ACTIVATIONS, BUFFERS, DEFERRED, DeviceMemory, finish_trace
from .remat import REMAT_MODES, check_remat, remat_keeps
from .schedule import Action, Item, Overlap, Schedule, expand
from .symmetry import asymmetry, one_replica
from .trace import MemorySample, Trace

__all__ = ["simulate", "collector_paused", "check_remat", "check_p2p", "remat_keeps", "REMAT_MODES", "P2P_MODES"]


class _Engine(Links, Collectives):
    def __init__(
        self,
        schedule: Schedule,
        work: Workload,
        cost: CostModel,
        remat: str,
        device_memory: int | None = None,
        allow_oom: bool = False,
        p2p: str = "async",
        grad_sync: str = "allreduce",
        collective: str = "auto",
        mirror: bool = False,
    ):
        # remat, p2p, the overlap rule, grad_sync and collective are checked by simulate, before either path
        self.blocking = p2p == "blocking"
        self.schedule, self.work, self.cost, self.remat = schedule, work, cost, remat
        self.rows = work.rows
        self.overlap = getattr(cost, "overlap", "sum")  # a cost model without the rule runs pairs in sequence
        self.allow_oom, self.device_memory = allow_oom, device_memory
        self.env = simpy.Environment()
        devices = schedule.devices
        self.num_stages = schedule.num_stages
        # M of one pipeline replica: replica r runs micro-batches r·M .. r·M + M-1 (pipesched.layout), so
        # --remat except_last keeps each replica's own last micro-batch
        self.microbatches = schedule.microbatches // schedule.replicas
        # [stage][micro-batch] -> the device of its forward, of its backward (B or I); F, B and I always name a
        # micro-batch. Tables rather than dicts keyed by pairs: a step of 64 stages and 4096 micro-batches has
        # 262,144 pairs, each a tuple and a dict entry, where a table holds a pointer
        self.forward_on: list[list[int | None]] = [[None] * schedule.microbatches for _ in range(self.num_stages)]
        self.backward_on: list[list[int | None]] = [[None] * schedule.microbatches for _ in range(self.num_stages)]
        # outputs whose send waits for an explicit SEND action: (stage, "F" or "B", micro-batch)
        self.explicit_sends: set[tuple[int, str, int | None]] = set()
        # inputs whose receive is posted by an explicit RECV action: until then their message cannot move
        self.explicit_recvs: set[_Key] = set()
        self.hosted: list[list[int]] = []
        for d, actions in enumerate(schedule.actions):  # one pass over every action: a large step has millions
            hosted = set()
            for a in expand(actions):
                op = a.op
                if op == "F":
                    self.forward_on[a.stage][a.microbatch] = d  # type: ignore[index]  # F names a micro-batch
                elif op == "B" or op == "I":
                    self.backward_on[a.stage][a.microbatch] = d  # type: ignore[index]
                elif op == "SEND_F" or op == "SEND_B":
                    self.explicit_sends.add((a.stage, op[-1], a.microbatch))
                elif op == "RECV_F" or op == "RECV_B":
                    self.explicit_recvs.add(("x" if op == "RECV_F" else "g", a.stage, a.microbatch))
                hosted.add(a.stage)
            self.hosted.append(sorted(hosted))
        placement = schedule.placement()  # read once per schedule, in the pass that counts its stages
        # the unit cost model's F of one stage: K / S, K the devices of one pipeline replica (pipesched.layout)
        self.stage_units = devices / schedule.replicas / self.num_stages
        replicas = {s: ds for s, ds in placement.items() if len(ds) > 1}
        syncs, ties = plan_collectives(placement, work, cost, grad_sync, collective)  # checks both
        self.program = [self._program(d, actions, syncs, ties) for d, actions in enumerate(schedule.actions)]
        # replica 0 alone, the others mirrored, where they provably run alike (pipesched.symmetry)
        collectives = [c for stage in syncs.values() for c in stage]
        self.mirror = mirror and asymmetry(schedule, work, cost, self.stage_units, collectives, ties) is None
        self.running = range(0, devices, schedule.replicas) if self.mirror else range(devices)
        self.outbox: dict[tuple[int, str, int | None], Message] = {}
        self.direct = not (self.explicit_sends or self.explicit_recvs or self.blocking)
        self.posted: set[_Key] = set()  # receives posted so far
        self.parked: dict[_Key, tuple[Message, Callable[[], None] | None]] = {}  # sends waiting for their receive
        self.send_queue: list[list[Message]] = [[] for _ in range(devices)]  # blocking sends not yet issued
        self.in_send: list[Message | None] = [None] * devices  # the blocking send a device is held in

        self.arrived: dict[_Key, Any] = {}
        self.blocked: dict[_Key, int] = {}  # an input not yet arrived -> the device waiting for it
        self.link_free: dict[tuple[int, int], float] = {}
        self.transfer_cache: dict[tuple[int, int, int, int | None], tuple[float, float]] = {}
        # [stage][micro-batch] -> what its forward (or I) left for its backward (or W); a table, as forward_on
        self.held: list[list[Held | None]] = [[None] * schedule.microbatches for _ in range(self.num_stages)]
        self.has_grads: set[tuple[int, int]] = set()
        self.position = [0] * devices  # next action (then all-reduce step) of each device
        # what each device waits for: (action, key) or text
        self.waiting: list[tuple[Item, _Key] | str | None] = [None] * devices
        self.finished = [False] * devices
        self.trace = Trace(devices=devices, time_unit=cost.time_unit)
        self._add_span = self.trace.spans.add  # (device, op, stage, micro-batch, start, end)
        self.itemsize = work.itemsize
        self.memory = [
            DeviceMemory(
                sum(work.param_bytes(s) for s in hosted),
                device_memory,
                self._exceeded(d),
                # each replica holds its own, or its shard of it (the distributed optimizer)
                optimizer=sum(
                    optimizer_share(work.optimizer_bytes(s), len(replicas.get(s, (d,))), grad_sync) for s in hosted
                ),
                itemsize=work.itemsize,
            )
            for d, hosted in enumerate(self.hosted)
        ]
        self.durations: dict[tuple[str, int, int, int], float] = {}  # (op, stage, rows, device) -> time

    # -- bookkeeping -------------------------------------------------------
    def _exceeded(self, device: int) -> Callable[[MemorySample], None]:
        def on_exceed(sample: MemorySample) -> None:
            if self.trace.oom is None:
                self.trace.oom = (device, sample)
            if not self.allow_oom:
                raise OutOfMemoryError(oom_message(device, sample, self.device_memory, self.trace))

        return on_exceed

    def _keep(self, device: int, held: Held) -> None:
        hold, role = self.memory[device].hold_one, DEFERRED if held.dzs else ACTIVATIONS
        for array in held.buffers():
            hold(array, role)

    def _drop(self, device: int, held: Held) -> None:
        release, role = self.memory[device].release_one, DEFERRED if held.dzs else ACTIVATIONS
        for array in held.buffers():
            release(array, role)

    def _sample(self, device: int) -> None:
        self.memory[device].sample(self.env.now)

    def _after(self, delay: float, then: Callable[[Any], None]) -> None:
        """Call ``then`` once ``delay`` has passed: one SimPy event."""
        self.env.timeout(delay).callbacks.append(then)

    def _duration(self, device: int, op: str, stage: int, mb: int) -> float:
        rows = self.rows[mb]
        duration = self.durations.get((op, stage, rows, device))
        if duration is None:  # the same for every repeat of a stage, micro-batch size and device: ask once
            duration = self.durations[(op, stage, rows, device)] = self.cost.compute_time(
                op, self.work.layers[stage], rows, self.stage_units, stage, device
            )
        return duration

    # -- one device, action by action ------------------------------------------
    def _advance(self, device: int) -> None:
        """Start the device's next action, or its next all-reduce step, if its input is there."""
        if self.blocking:  # only blocking sends hold a device between actions: async runs skip both tests
            if self.in_send[device] is not None:
                return  # held in a blocking send until its bytes have left
            if self.send_queue[device]:
                self._blocking_send(device)
                return
        program = self.program[device]
        position = self.position[device]
        if position >= len(program):
            self.finished[device] = True
            self.waiting[device] = None
            return
        item = program[position]
        if type(item) is ReduceStep:
            self._reduce(device, item)
            return
        if type(item) is Overlap:
            self._start_pair(device, position, item)
            return
        stage, op, mb = item
        if op == "F":  # the common cases first: this runs once per action
            key: _Key | None = ("x", stage, mb) if stage > 0 else None
        elif op == "B" or op == "I":
            key = ("g", stage, mb) if stage < self.num_stages - 1 else None
        elif op == "W":
            key = None
        else:
            self._communicate(device, position, item)
            return
        if key is not None and key not in self.arrived:
            if self.blocking:
                self._post(key)  # a blocking receive, right before the action that needs it
            if key not in self.arrived:  # posting can land a parked message at once (a free link)
                self.blocked[key] = device
                self.waiting[device] = (item, key)  # described only if it turns out to be a deadlock
                return
        self.waiting[device] = None
        self.position[device] = position + 1
        payload = self.arrived.pop(key) if key is not None else None
        if op == "F":
            self._forward(device, stage, mb, payload)
        elif op == "W":
            self._weight_only(device, stage, mb)
        else:
            self._backward(device, stage, mb, payload, op)

    def _start_pair(self, device: int, position: int, pair: Overlap) -> None:
        """Start an overlapped pair once both its forward's input and its backward's gradient are here."""
        (fs, _, fm), (bs, _, bm) = pair
        x_key = ("x", fs, fm) if fs > 0 else None
        g_key = ("g", bs, bm) if bs < self.num_stages - 1 else None
        if self.blocking:  # both receives posted together, as a batched send/receive would
            for key in (x_key, g_key):
                if key is not None:
                    self._post(key)
        for key in (x_key, g_key):
            if key is not None and key not in self.arrived:
                self.blocked[key] = device
                self.waiting[device] = (pair, key)  # a deadlock names the pair, and which input it lacks
                return
        self.waiting[device] = None
        self.position[device] = position + 1
        x = self.arrived.pop(x_key) if x_key is not None else None
        dy = self.arrived.pop(g_key) if g_key is not None else None
        self._overlap(device, pair, x, dy)

    def _communicate(self, device: int, position: int, action: Action) -> None:
        """A SEND or RECV action: where a send is issued or a receive posted (see the module's text)."""
        stage, op, mb = action
        if op.startswith("RECV"):
            key: _Key = ("x", stage, mb) if op == "RECV_F" else ("g", stage, mb)
            self._post(key)
            if self.blocking and key not in self.arrived:
                self.blocked[key] = device
                self.waiting[device] = (action, key)
                return
        else:  # SEND: the output waited in the outbox until this point
            send = self.outbox.pop((stage, op[-1], mb))
            if self.blocking:
                self.send_queue[device].append(send)  # still held; _advance issues it and holds the device
            else:
                self.memory[device].release([send.payload], "buffers")
                self._sample(device)
                self._issue(send)
        self.waiting[device] = None
        self.position[device] = position + 1
        self._advance(device)

    def _pass_on(self, src: int, dst: int, key: _Key, payload: Any, what: tuple[int, str, int]) -> None:
        """A finished action's output for device ``dst``, as ``key``: sent now, or as ``_output`` says."""
        if self.direct:  # no SEND or RECV actions and asynchronous: every output is sent as it is made
            self._move(src, dst, key, payload, what)
        else:
            self._output(Message(src, dst, key, payload, what))

    def _output(self, send: Message) -> None:
        """Send a finished action's output now, or keep it for the SEND action that sends it."""
        stage, op, mb = send.what
        explicit = (stage, "F" if op == "F" else "B", mb)
        if self.explicit_sends and explicit in self.explicit_sends:
            self.outbox[explicit] = send
            self.memory[send.src].hold([send.payload], "buffers")
            self._sample(send.src)
        elif self.blocking and send.src != send.dst:
            self.send_queue[send.src].append(send)  # sent before the device's next action, held until then
            self.memory[send.src].hold([send.payload], "buffers")
            self._sample(send.src)
        else:
            self._issue(send)

    # Each action below runs once per simulated action: ``now`` is read once and passed on, and an action's
    # end is now + its duration, which is exactly the time SimPy gives its timeout (the same addition).
    def _forward(self, device: int, stage: int, mb: int, x: Any) -> None:
        now = self.env.now
        y = self._start_forward(device, stage, mb, x, now)
        duration = self._duration(device, "F", stage, mb)
        end = now + duration

        def done(_: Any) -> None:
            self._add_span(device, "F", stage, mb, now, end)
            self._finish_forward(device, stage, mb, y)
            self._advance(device)

        self.env.timeout(duration).callbacks.append(done)

    def _start_forward(self, device: int, stage: int, mb: int, x: Any, now: float) -> Any:
        """Compute the forward and hold what its backward needs; return its output."""
        keep = remat_keeps(self.remat, mb % self.microbatches, self.microbatches)
        y, held = self.work.forward(stage, mb, x, keep)
        self.held[stage][mb] = held
        self._keep(device, held)
        if x is not None:  # the arrived input is now held as part of ``held``
            self.memory[device].release_one(x, BUFFERS)
        self.memory[device].sample(now)
        return y

    def _finish_forward(self, device: int, stage: int, mb: int, y: Any) -> None:
        if stage + 1 < self.num_stages:
            dst = self.forward_on[stage + 1][mb]
            assert dst is not None  # validated: every (stage, micro-batch) has its forward
            self._pass_on(device, dst, ("x", stage + 1, mb), y, (stage, "F", mb))

    def _backward(self, device: int, stage: int, mb: int, dy: Any, op: str) -> None:
        held = self._take(stage, mb)
        now = self.env.now
        if not held.remat:
            self._backward_pass(device, stage, mb, dy, op, held, now)
            return
        full = self._recompute(device, stage, mb, held)
        duration = self._duration(device, "R", stage, mb)
        end = now + duration

        def recomputed(_: Any) -> None:
            self._add_span(device, "R", stage, mb, now, end)
            self._backward_pass(device, stage, mb, dy, op, full, end)

        self.env.timeout(duration).callbacks.append(recomputed)

    def _take(self, stage: int, mb: int) -> Held:
        """What the forward (or I) of (stage, micro-batch) left, now taken by its backward (or W)."""
        held = self.held[stage][mb]
        assert held is not None  # validated: a backward follows its forward, W its I, on the same device
        self.held[stage][mb] = None
        return held

    def _recompute(self, device: int, stage: int, mb: int, held: Held) -> Held:
        """One micro-batch's full activations exist again during recompute and backward."""
        full = self.work.recompute(stage, mb, held)
        self._keep(device, full)
        self._drop(device, held)
        self._sample(device)
        return full

    def _backward_pass(self, device: int, stage: int, mb: int, dy: Any, op: str, held: Held, now: float) -> None:
        dx, for_weights = self._start_backward(device, stage, mb, dy, op, held)
        duration = self._duration(device, op, stage, mb)
        end = now + duration

        def done(_: Any) -> None:
            self._add_span(device, op, stage, mb, now, end)
            self._finish_backward(device, stage, mb, op, held, for_weights, dy, dx, end)
            self._advance(device)

        self.env.timeout(duration).callbacks.append(done)

    def _start_backward(self, device: int, stage: int, mb: int, dy: Any, op: str, held: Held) -> tuple[Any, Held]:
        """Compute the input gradient (and with B the weight gradient); return it and what W needs."""
        dx, for_weights = self.work.backward_input(stage, mb, held, dy)
        if op == "B":
            self._weights(device, stage, mb, for_weights)
        else:  # I: the pre-activation gradients appear now and stay, with the layer inputs, for W
            self._keep(device, for_weights)
            self._sample(device)
        return dx, for_weights

    def _finish_backward(
        self, device: int, stage: int, mb: int, op: str, held: Held, for_weights: Held, dy: Any, dx: Any, now: float
    ) -> None:
        if op == "I":
            self.held[stage][mb] = for_weights
        self._drop(device, held)
        if dy is not None:
            self.memory[device].release_one(dy, BUFFERS)
        self.memory[device].sample(now)
        if stage > 0:
            dst = self.backward_on[stage - 1][mb]
            assert dst is not None  # validated: every (stage, micro-batch) has its backward
            self._pass_on(device, dst, ("g", stage - 1, mb), dx, (stage, op, mb))

    def _overlap(self, device: int, pair: Overlap, x: Any, dy: Any) -> None:
        """An overlapped pair: both parts start now and end together, after the cost model's overlap rule."""
        (fs, _, fm), (bs, op, bm) = pair
        assert fm is not None and bm is not None  # validated: a pair's F and its B or I each name a micro-batch
        y = self._start_forward(device, fs, fm, x, self.env.now)
        held = self._take(bs, bm)
        parts = [("F", fs, fm, self._duration(device, "F", fs, fm))]
        if held.remat:
            held = self._recompute(device, bs, bm, held)
            parts.append(("R", bs, bm, self._duration(device, "R", bs, bm)))
        dx, for_weights = self._start_backward(device, bs, bm, dy, op, held)
        parts.append((op, bs, bm, self._duration(device, op, bs, bm)))
        forward, backward = parts[0][3], sum(p[3] for p in parts[1:])
        length = overlapped_time(self.overlap, forward, backward)
        start = self.env.now

        def done(_: Any) -> None:
            # the pair's time, shown split among its parts in proportion to what each would take alone;
            # the last part ends exactly at the pair's end, whatever the rounding
            scale = length / (forward + backward) if forward + backward else 0.0
            at = start
            for i, (part_op, stage, mb, alone) in enumerate(parts):
                end = self.env.now if i == len(parts) - 1 else at + alone * scale
                self._add_span(device, part_op, stage, mb, at, end)
                at = end
            self._finish_forward(device, fs, fm, y)
            self._finish_backward(device, bs, bm, op, held, for_weights, dy, dx, self.env.now)
            self._advance(device)

        self._after(length, done)

    def _weights(self, device: int, stage: int, mb: int, held: Held) -> None:
        self.work.backward_weight(device, stage, mb, held)
        if (device, stage) not in self.has_grads:  # the gradient buffer appears with the first W
            self.has_grads.add((device, stage))
            self.memory[device].add_grads(self.work.param_bytes(stage))
            self._sample(device)

    def _weight_only(self, device: int, stage: int, mb: int) -> None:
        held = self._take(stage, mb)
        self._weights(device, stage, mb, held)
        start = self.env.now

        def done(_: Any) -> None:
            self._add_span(device, "W", stage, mb, start, self.env.now)
            self._drop(device, held)
            self._sample(device)
            self._advance(device)

        self._after(self._duration(device, "W", stage, mb), done)

    def run(self) -> Trace:
        for device in self.running:
            self._advance(device)
        self.env.run()
        finish_trace(self.trace, self.memory, self.cost)
        # its callback refers to this engine: without it, no cycle outlives a run that finishes (one that raises
        # OutOfMemoryError from the callback keeps it, and the collector frees it later)
        for memory in self.memory:
            memory.on_exceed = None
        blocked = [d for d in self.running if not self.finished[d]]
        if blocked:
            raise DeadlockError(deadlock_message(self, blocked))
        return one_replica(self.trace, self.schedule.replicas) if self.mirror else self.trace


def simulate(
    schedule: Schedule,
    work: Workload,
    cost: CostModel,
    remat: str = "never",
    device_memory: int | None = None,
    allow_oom: bool = False,
    p2p: str = "async",
    grad_sync: str = "allreduce",
    collective: str = "auto",
    mirror: bool = False,
    fast: bool = True,
) -> Trace:
    """Run a validated ``schedule`` on ``work`` (a ``NumpyWorkload`` or ``ShapeWorkload``).

    Returns the trace; numerical results (loss, gradients) stay in ``work``.
    Raises ``DeadlockError`` if the schedule cannot finish, and
    ``OutOfMemoryError`` when a device exceeds ``device_memory`` bytes, unless
    ``allow_oom``: then ``trace.oom`` records the first time it happened.
    ``p2p`` is ``async`` (PyTorch's isend/irecv) or ``blocking`` (rendezvous);
    see the module's text.

    A replicated stage's gradients are summed by a ring all-reduce
    (``grad_sync="allreduce"``), or (``"sharded"``, the distributed optimizer,
    ZeRO-1) by a ring reduce-scatter, then an all-gather of the updated
    parameters, each replica holding 1/R of the stage's optimizer state.
    ``collective`` is ``auto`` (two levels, inside nodes then across, where a
    ring spans nodes with as many of its devices on each; else one flat ring),
    ``ring`` (always one flat ring, as before nodes) or ``hierarchical`` (two
    levels, a ring spread unevenly over nodes refused). See
    ``pipesched.collectives``; their times are ``pipesched.formulas``'s
    ``ring_*_time`` and ``hierarchical_*_time``.

    ``mirror`` runs replica 0 alone where every replica provably runs alike
    (``pipesched.symmetry``; else all of them) and returns its K devices'
    trace, whose metrics are the full step's. Shape-only work only: the other
    replicas' gradients are never computed.

    A shape-only step that ``pipesched.fastpath`` can run exactly runs there
    (the same events, memory counted by arithmetic: the same trace, field for
    field); ``fast=False`` runs the engine itself, as its tests do.
    """
    # what both paths need checked, before either runs: cheap checks first
    check_remat(remat)
    check_p2p(p2p)
    check_overlap(getattr(cost, "overlap", "sum"))
    check_grad_sync(grad_sync)
    check_collective(collective)
    with collector_paused():
        if fast and isinstance(work, ShapeWorkload):
            trace = simulate_shapes(schedule, work, cost, remat, device_memory, p2p, grad_sync, allow_oom)
            if trace is not None:
                return trace
        # the engine is dropped as the run returns: what the collector later scans is the trace alone
        return _Engine(schedule, work, cost, remat, device_memory, allow_oom, p2p, grad_sync, collective, mirror).run()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block; it runs again once the last paused block ends.

    A simulation makes a few short-lived objects per action (a Held, the
    arrays or their stand-ins, a message, the event's callback), all freed by
    reference counting: none forms a cycle, so the collector finds nothing,
    yet its passes, triggered by the allocations, cost a quarter of a large
    run's time, scanning the activations in flight again and again. A test
    holds that what a run leaves for the collector does not grow with the run.
    The collector's switch is the process's: blocks in several threads count
    as one pause, and it is switched back on (if it was on) when the last ends.

    >>> import gc
    >>> with collector_paused():
    ...     gc.isenabled()
    False
    """
    with _pause_lock:
        if _pauses[0] == 0:
            _pauses[1] = gc.isenabled()
            gc.disable()
        _pauses[0] += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses[0] -= 1
            if _pauses[0] == 0 and _pauses[1]:
                gc.enable()


_pause_lock = threading.Lock()
_pauses: list[Any] = [0, False]  # blocks paused now, and whether the collector was on before the first
