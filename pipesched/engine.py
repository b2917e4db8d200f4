"""The SimPy engine: devices walk their action lists, links carry the real arrays, memory is counted.

Each device is a SimPy process that runs its actions in order. An action
starts once its input has arrived: a forward of stage s > 0 waits for stage
s-1's output, a backward (B or I) of a stage other than the last waits for the
gradient from the stage after it. Its own earlier F (and I before W) are
guaranteed by validation. Outputs for another device travel over the link
``src -> dst``, a SimPy resource of capacity one, so transfers on one link queue
while sends overlap with compute.

A stage whose forwards run on several devices is replicated (data
parallelism); after its last action each replica joins a ring all-reduce of
that stage's gradients: 2(R-1) steps, each sending 1/R of the bytes to the
next replica over the links.

When no event is left but a device has not finished, the schedule deadlocked:
``DeadlockError`` names every blocked device and what it waits for.

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

from typing import Any, Generator

import simpy

from .compute import Held, Workload
from .cost import CostModel
from .errors import ConfigError, DeadlockError, OutOfMemoryError
from .schedule import Action, Schedule
from .memory import DeviceMemory
from .trace import MemorySample, Span, Trace, Transfer
from .units import format_bytes, format_time

__all__ = ["simulate", "check_remat", "REMAT_MODES"]

#: torchgpipe's checkpoint modes: ``always`` keeps only each stage input and
#: recomputes in backward, ``except_last`` does so for all but the last
#: micro-batch (whose backward comes first in F-then-B), ``never`` keeps all.
REMAT_MODES = ("never", "always", "except_last")

# ("x", stage, mb): input of a stage; ("g", stage, mb): gradient of its output;
# ("ar", stage, step, device): an all-reduce chunk arriving at a replica
_Key = tuple[Any, ...]


def check_remat(remat: str) -> None:
    """Raise ``ConfigError`` unless ``remat`` is one of ``REMAT_MODES``."""
    if remat not in REMAT_MODES:
        raise ConfigError(f"--remat {remat!r} is unknown; use one of {', '.join(REMAT_MODES)}")


class _Engine:
    def __init__(
        self,
        schedule: Schedule,
        work: Workload,
        cost: CostModel,
        remat: str,
        device_memory: int | None = None,
        allow_oom: bool = False,
    ):
        check_remat(remat)
        self.allow_oom = allow_oom
        self.schedule, self.work, self.cost, self.remat = schedule, work, cost, remat
        self.env = simpy.Environment()
        self.num_stages = schedule.num_stages
        self.microbatches = schedule.microbatches
        self.forward_on: dict[tuple[int, int], int] = {}
        self.backward_on: dict[tuple[int, int], int] = {}
        for d, actions in enumerate(schedule.actions):
            for a in actions:
                if a.op == "F":
                    self.forward_on[(a.stage, a.microbatch)] = d
                elif a.op in "BI":
                    self.backward_on[(a.stage, a.microbatch)] = d
        self.hosted = [sorted({a.stage for a in actions}) for actions in schedule.actions]
        self.stage_units = schedule.devices / self.num_stages  # the unit cost model's F of one stage
        self.replicas = {s: ds for s, ds in schedule.placement().items() if len(ds) > 1}

        self.arrived: dict[_Key, Any] = {}
        self.pending: dict[_Key, simpy.Event] = {}
        self.links: dict[tuple[int, int], simpy.Resource] = {}
        self.held: dict[tuple[int, int], Held] = {}
        self.has_grads: set[tuple[int, int]] = set()
        self.waiting: list[str | None] = [None] * schedule.devices
        self.finished = [False] * schedule.devices

        self.memory = [
            DeviceMemory(sum(work.param_bytes(s) for s in hosted), device_memory, self._exceeded(d))
            for d, hosted in enumerate(self.hosted)
        ]
        self.trace = Trace(devices=schedule.devices, time_unit=cost.time_unit)
        self.trace.memory = [m.timeline for m in self.memory]

    # -- bookkeeping -------------------------------------------------------
    def _exceeded(self, device: int) -> Any:
        def on_exceed(sample: MemorySample) -> None:
            if self.trace.oom is None:
                self.trace.oom = (device, sample)
            if not self.allow_oom:
                raise OutOfMemoryError(_oom_message(device, sample, self.memory[device].capacity, self.trace))

        return on_exceed

    def _keep(self, device: int, held: Held) -> None:
        self.memory[device].hold(held.buffers(), "deferred" if held.dzs else "activations")

    def _drop(self, device: int, held: Held) -> None:
        self.memory[device].release(held.buffers(), "deferred" if held.dzs else "activations")

    def _sample(self, device: int) -> None:
        self.memory[device].sample(self.env.now)

    def _run(self, device: int, op: str, stage: int, mb: int) -> Generator[simpy.Event, Any, None]:
        start = self.env.now
        duration = self.cost.compute_time(op, self.work.layers[stage], self.work.rows[mb], self.stage_units)
        yield self.env.timeout(duration)
        self.trace.spans.append(Span(device, op, stage, mb, start, self.env.now))

    def _deliver(self, device: int, key: _Key, payload: Any) -> None:
        self.arrived[key] = payload
        self.memory[device].hold([payload], "buffers")  # an arrived buffer waits on its device
        self._sample(device)
        event = self.pending.pop(key, None)
        if event is not None:
            event.succeed()

    def _link(self, src: int, dst: int) -> simpy.Resource:
        link = self.links.get((src, dst))
        if link is None:
            link = self.links[(src, dst)] = simpy.Resource(self.env, capacity=1)
        return link

    def _transfer(self, src: int, dst: int, name: str, payload: Any) -> Generator[simpy.Event, Any, None]:
        nbytes = payload.nbytes
        # The link is busy while the bytes go onto the wire; latency is flight time,
        # so the next send on the link need not wait for this one to land.
        busy, latency = self.cost.transfer_times(nbytes)
        with self._link(src, dst).request() as request:
            yield request
            start = self.env.now
            yield self.env.timeout(busy)
        end = self.env.now
        self.memory[src].release([payload], "buffers")  # the bytes have left the sender
        self._sample(src)
        yield self.env.timeout(latency)
        self.trace.transfers.append(Transfer(src, dst, name, nbytes, start, end, self.env.now))

    def _send(self, src: int, dst: int, key: _Key, payload: Any, name: str) -> None:
        if src == dst:
            self._deliver(dst, key, payload)
            return
        self.memory[src].hold([payload], "buffers")  # queued or on the wire, still the sender's
        self._sample(src)
        moving = self.env.process(self._transfer(src, dst, name, payload))
        moving.callbacks.append(lambda _: self._deliver(dst, key, payload))

    # -- actions -----------------------------------------------------------
    def _forward(self, device: int, stage: int, mb: int, x: Any) -> Generator[simpy.Event, Any, None]:
        keep = self.remat == "never" or (self.remat == "except_last" and mb == self.microbatches - 1)
        y, held = self.work.forward(stage, mb, x, keep)
        self.held[(stage, mb)] = held
        self._keep(device, held)
        if x is not None:  # the arrived input is now held as part of ``held``
            self.memory[device].release([x], "buffers")
        self._sample(device)
        yield from self._run(device, "F", stage, mb)
        if stage + 1 < self.num_stages:
            self._send(device, self.forward_on[(stage + 1, mb)], ("x", stage + 1, mb), y, f"{stage}F{mb}")

    def _backward(self, device: int, stage: int, mb: int, dy: Any, op: str) -> Generator[simpy.Event, Any, None]:
        held = self.held.pop((stage, mb))
        if held.remat:  # one micro-batch's full activations exist again during recompute and backward
            full = self.work.recompute(stage, mb, held)
            self._keep(device, full)
            self._drop(device, held)
            self._sample(device)
            yield from self._run(device, "R", stage, mb)
            held = full
        dx, for_weights = self.work.backward_input(stage, mb, held, dy)
        if op == "B":
            self._weights(device, stage, mb, for_weights)
            yield from self._run(device, "B", stage, mb)
        else:  # I: the pre-activation gradients appear now and stay, with the layer inputs, for W
            self._keep(device, for_weights)
            self._sample(device)
            yield from self._run(device, "I", stage, mb)
            self.held[(stage, mb)] = for_weights
        self._drop(device, held)
        if dy is not None:
            self.memory[device].release([dy], "buffers")
        self._sample(device)
        if stage > 0:
            self._send(device, self.backward_on[(stage - 1, mb)], ("g", stage - 1, mb), dx, f"{stage}{op}{mb}")

    def _weights(self, device: int, stage: int, mb: int, held: Held) -> None:
        self.work.backward_weight(device, stage, mb, held)
        if (device, stage) not in self.has_grads:  # the gradient buffer appears with the first W
            self.has_grads.add((device, stage))
            self.memory[device].add_grads(self.work.param_bytes(stage))
            self._sample(device)

    def _weight_only(self, device: int, stage: int, mb: int) -> Generator[simpy.Event, Any, None]:
        held = self.held.pop((stage, mb))
        self._weights(device, stage, mb, held)
        yield from self._run(device, "W", stage, mb)
        self._drop(device, held)
        self._sample(device)

    def _allreduce(self, device: int, stage: int) -> Generator[simpy.Event, Any, None]:
        ring = self.replicas[stage]
        r, size = ring.index(device), len(ring)
        nxt = ring[(r + 1) % size]
        chunk = -(-self.work.param_bytes(stage) // size)
        for step in range(2 * (size - 1)):
            self._send(device, nxt, ("ar", stage, step, nxt), _Chunk(chunk), f"allreduce {stage}")
            key = ("ar", stage, step, device)
            if key not in self.arrived:
                self.waiting[device] = f"step {step} of the all-reduce of stage {stage} (from device {ring[r - 1]})"
                yield self._event(key)
            self.memory[device].release([self.arrived.pop(key)], "buffers")  # summed into the gradient
            self._sample(device)
        self.waiting[device] = None

    def _event(self, key: _Key) -> simpy.Event:
        event = self.pending.get(key)
        if event is None:
            event = self.pending[key] = self.env.event()
        return event

    def _device(self, device: int) -> Generator[simpy.Event, Any, None]:
        last = self.num_stages - 1
        for action in self.schedule.actions[device]:
            stage, op, mb = action
            key: _Key | None = None
            if op == "F" and stage > 0:
                key = ("x", stage, mb)
            elif op in "BI" and stage < last:
                key = ("g", stage, mb)
            if key is not None and key not in self.arrived:
                self.waiting[device] = _describe_wait(action, key, self)
                yield self._event(key)
                self.waiting[device] = None
            payload = self.arrived.pop(key) if key is not None else None
            if op == "F":
                yield from self._forward(device, stage, mb, payload)
            elif op == "W":
                yield from self._weight_only(device, stage, mb)
            else:
                yield from self._backward(device, stage, mb, payload, op)
        for stage in self.hosted[device]:
            if stage in self.replicas:
                yield from self._allreduce(device, stage)
        self.finished[device] = True

    def run(self) -> Trace:
        for device in range(self.schedule.devices):
            self.env.process(self._device(device))
        self.env.run()
        blocked = [d for d in range(self.schedule.devices) if not self.finished[d]]
        if blocked:
            waits = "; ".join(f"device {d} waits at {self.waiting[d]}" for d in blocked)
            raise DeadlockError(
                f"the schedule deadlocks at time {self.env.now:g}: {waits}; reorder the actions so that "
                "every input is produced before a device waits for it"
            )
        return self.trace


class _Chunk:
    """One all-reduce chunk in flight (its values are summed exactly at the end)."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"_Chunk(nbytes={self.nbytes})"


def _oom_message(device: int, sample: MemorySample, capacity: int | None, trace: Trace) -> str:
    parts = ", ".join(
        f"{label} {format_bytes(value)}"
        for label, value in (
            ("parameters", sample.params), ("gradients", sample.grads), ("activations", sample.activations),
            ("kept for deferred W", sample.deferred), ("link buffers", sample.buffers),
        )
        if value
    )
    return (
        f"device {device} runs out of memory at {format_time(sample.time, trace.time_unit)}: it holds "
        f"{format_bytes(sample.total_bytes)} ({parts}) but --device-memory is {format_bytes(capacity or 0)}; "
        "use --remat always, more --devices, a schedule with fewer micro-batches in flight, "
        "or --allow-oom to report it instead"
    )


def _describe_wait(action: Action, key: _Key, engine: _Engine) -> str:
    kind, stage, mb = key
    if kind == "x":
        producer, where = f"{stage - 1}F{mb}", engine.forward_on.get((stage - 1, mb))
        what = f"the activation of micro-batch {mb} from {producer}"
    else:
        where = engine.backward_on.get((stage + 1, mb))
        what = f"the gradient of micro-batch {mb} from stage {stage + 1}'s backward"
    return f"{action} for {what} (on device {where})"


def simulate(
    schedule: Schedule,
    work: Workload,
    cost: CostModel,
    remat: str = "never",
    device_memory: int | None = None,
    allow_oom: bool = False,
) -> Trace:
    """Run a validated ``schedule`` on ``work`` (a ``NumpyWorkload`` or ``ShapeWorkload``).

    Returns the trace; numerical results (loss, gradients) stay in ``work``.
    Raises ``DeadlockError`` if the schedule cannot finish, and
    ``OutOfMemoryError`` when a device exceeds ``device_memory`` bytes, unless
    ``allow_oom``: then ``trace.oom`` records the first time it happened.
    """
    return _Engine(schedule, work, cost, remat, device_memory, allow_oom).run()
