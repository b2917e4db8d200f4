"""What went wrong, in one sentence: a deadlock's waits and cycles, a device out of memory.

>>> from pipesched import RunConfig, run
>>> run(RunConfig(strategy="1f1b", devices=2, microbatches=2, cost="unit", compute=False, p2p="blocking"))
Traceback (most recent call last):
    ...
pipesched.errors.DeadlockError: the schedule deadlocks at time 4: device 0 waits at 0SEND_F1, a blocking send \
that waits for device 1 to post 1F1; device 1 waits at 1SEND_B0, a blocking send that waits for device 0 to post \
0B0; devices 0 and 1 wait for each other: their sends 0SEND_F1 and 1SEND_B0 cross, each until the other device \
posts its receive; post one side's receive before its send, batch each send with its receive, or use --p2p async
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .links import Message
from .schedule import Action, Overlap, expand
from .trace import MemorySample, Trace
from .units import format_bytes, format_time

if TYPE_CHECKING:
    from .engine import _Engine

__all__ = ["oom_message", "deadlock_message"]

_ADVICE = "reorder the actions so that every input is produced before a device waits for it"


def deadlock_message(engine: _Engine, blocked: list[int]) -> str:
    """The devices that never finished, what each waits for, and any cycle among them with its fix."""
    waits = "; ".join(f"device {d} waits at {_describe(d, engine)}" for d in blocked)
    cycle = _cycle(blocked, engine)
    why, fix = cycle or ("", _ADVICE)
    return f"the schedule deadlocks at time {engine.env.now:g}: {waits}{'; ' + why if why else ''}; {fix}"


def oom_message(device: int, sample: MemorySample, capacity: int | None, trace: Trace) -> str:
    parts = ", ".join(
        f"{label} {format_bytes(value)}"
        for label, value in (
            ("parameters", sample.params),
            ("gradients", sample.grads),
            ("optimizer state", sample.optimizer),
            ("activations", sample.activations),
            ("kept for deferred W", sample.deferred),
            ("link buffers", sample.buffers),
        )
        if value
    )
    weights = sample.params + sample.grads + sample.optimizer
    held = "the weights and their optimizer state" if sample.optimizer else "the weights"
    advice = (
        f"use more --devices or a smaller model: {held} alone do not fit"
        if capacity is not None and weights > capacity
        else "use --remat always, more --devices, a schedule with fewer micro-batches in flight"
    )
    return (
        f"device {device} runs out of memory at {format_time(sample.time, trace.time_unit)}: it holds "
        f"{format_bytes(sample.total_bytes)} ({parts}) but the device has {format_bytes(capacity or 0)} "
        "(--device-memory, else the --hardware preset's memory); "
        f"{advice}, or --allow-oom to report it instead"
    )


def _describe(device: int, engine: _Engine) -> str:
    """What a device that never finished is held by: a blocking send, an input, or an all-reduce step."""
    send = engine.in_send[device]
    if send is not None:
        return (
            f"{_send_name(send)}, a blocking send that waits for device {send.dst} to post "
            f"{_receive_name(send.key, engine)}"
        )
    waiting = engine.waiting[device]
    assert waiting is not None  # a device neither finished nor in a send stopped at an input or an all-reduce step
    return waiting if isinstance(waiting, str) else _describe_wait(*waiting, engine)


def _send_name(send: Message) -> str:
    stage, op, mb = send.what
    return f"{stage}SEND_{'F' if op == 'F' else 'B'}{mb}"


def _receive_name(key: tuple[Any, ...], engine: _Engine) -> str:
    """The action that posts the receive of ``key``: its RECV, or the action that needs it."""
    kind, stage, mb = key
    if key in engine.explicit_recvs:
        return f"{stage}RECV_{'F' if kind == 'x' else 'B'}{mb}"
    if kind == "x":
        return f"{stage}F{mb}"
    device = _on(engine.backward_on, stage, mb)
    if device is not None:  # its B, or its I: the action that consumes the gradient
        for a in expand(engine.schedule.actions[device]):
            if a.stage == stage and a.microbatch == mb and a.op in ("B", "I"):
                return str(a)
    return f"{stage}B{mb}"


def _on(table: list[list[int | None]], stage: int, mb: int) -> int | None:
    """The device ``engine.forward_on`` or ``backward_on`` names for (stage, micro-batch), None if none."""
    return table[stage][mb] if 0 <= stage < len(table) and 0 <= mb < len(table[stage]) else None


def _waits_on(device: int, engine: _Engine) -> int | None:
    """The device whose progress ``device`` waits for, if one device alone can release it."""
    send = engine.in_send[device]
    if send is not None:
        return send.dst
    waiting = engine.waiting[device]
    if not isinstance(waiting, tuple):
        return None
    kind, stage, mb = waiting[1]
    return _on(engine.forward_on, stage - 1, mb) if kind == "x" else _on(engine.backward_on, stage + 1, mb)


def _cycle(blocked: list[int], engine: _Engine) -> tuple[str, str] | None:
    """Devices that wait for each other in a cycle, and what to do about it, if there is one."""
    for first in blocked:
        path: list[int] = []
        device: int | None = first
        while device is not None and device not in path and device in blocked:
            path.append(device)
            device = _waits_on(device, engine)
        if device is None or device not in path or len(path) - path.index(device) < 2:
            continue
        ring = path[path.index(device) :]
        sends = [_send_name(send) for send in (engine.in_send[d] for d in ring) if send is not None]
        if len(ring) == 2:
            what = f"devices {ring[0]} and {ring[1]} wait for each other"
        else:
            what = f"devices {' -> '.join(map(str, ring + ring[:1]))} wait in a cycle"
        if not sends:
            return what, _ADVICE
        if len(sends) == len(ring) == 2:
            how = f"their sends {sends[0]} and {sends[1]} cross, each until the other device posts its receive"
        else:
            how = ", ".join(_held(d, engine) for d in ring)
        return (
            f"{what}: {how}",
            "post one side's receive before its send, batch each send with its receive, or use --p2p async",
        )
    return None


def _held(device: int, engine: _Engine) -> str:
    """How one device of a cycle is held: in a blocking send, or waiting for data."""
    send = engine.in_send[device]
    if send is not None:
        return f"device {device} in {_send_name(send)} until device {send.dst} posts its receive"
    waiting = engine.waiting[device]
    assert isinstance(waiting, tuple)  # in a cycle: _waits_on found the device it waits for, so it waits for data
    return f"device {device} at {waiting[0]} waiting for data from device {_waits_on(device, engine)}"


def _describe_wait(action: Action | Overlap, key: tuple[Any, ...], engine: _Engine) -> str:
    kind, stage, mb = key
    if kind == "x":
        producer, where = f"{stage - 1}F{mb}", _on(engine.forward_on, stage - 1, mb)
        what = f"the activation of micro-batch {mb} from {producer}"
        held = (stage - 1, "F", mb)
    else:
        where = _on(engine.backward_on, stage + 1, mb)
        what = f"the gradient of micro-batch {mb} from stage {stage + 1}'s backward"
        held = (stage + 1, "B", mb)
    if held in engine.outbox:  # computed, but its explicit SEND has not been reached
        return f"{action} for {what}, held until {held[0]}SEND_{held[1]}{mb} on device {where}"
    return f"{action} for {what} (on device {where})"
