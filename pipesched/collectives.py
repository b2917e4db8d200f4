"""Collectives over the links: a replicated stage's ring all-reduce, and a tied pair's (a part of the engine).

A stage whose forwards run on several devices (data parallelism) all-reduces
its gradients over a ring of those devices: 2(R-1) steps, each sending 1/R of
the bytes to the next device (Patarasuk and Yuan 2009). A tied pair of
stages on different devices (a decoder's embedding and output layer) sums its
shared matrix the same way over the devices holding either stage, as
Megatron-LM's embedding group does. The steps are items of a device's
program, placed by REDUCE_GRAD actions or after its last action.

>>> ring = tie_rings([(0, 3, 1024)], {0: (0,), 1: (1,), 2: (2,), 3: (3,)})
>>> ring  # stage 0 on device 0, stage 3 on device 3: a two-member ring of 1024 bytes
{(0, (0, 3)): 1024}
>>> [ReduceStep(0, step, (0, 3), "tie", 1024).step for step in range(2 * (2 - 1))]
[0, 1]
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

from .compute import Buffer
from .links import Message
from .schedule import Action, Item

__all__ = ["Collectives", "ReduceStep", "tie_rings"]


class Collectives:
    """The engine's all-reduce steps (a part of ``engine._Engine``, split out by concept)."""

    work: Any
    hosted: list[list[int]]
    arrived: dict[Any, Any]
    blocked: dict[Any, int]
    waiting: list[Any]
    position: list[int]
    memory: list[Any]

    def _send(self, send: Message, on_left: Callable[[], None] | None = None) -> None:
        raise NotImplementedError

    def _sample(self, device: int) -> None:
        raise NotImplementedError

    def _advance(self, device: int) -> None:
        raise NotImplementedError

    def _program(
        self,
        device: int,
        actions: tuple[Item, ...],
        replicas: dict[int, tuple[int, ...]],
        ties: dict[tuple[int, tuple[int, ...]], int],
    ) -> list[Any]:
        """The device's actions, with each replicated stage's ring all-reduce steps where they run.

        A REDUCE_GRAD action places a stage's all-reduce; without one it runs
        after the device's last action. A stage without replicas has nothing
        to reduce, so its REDUCE_GRAD does nothing. The tied weights' rings
        this device is in come last, as Megatron-LM's embedding all-reduce
        follows its data-parallel one.
        """

        def steps(stage: int) -> list[ReduceStep]:
            ring = replicas[stage]
            nbytes = self.work.param_bytes(stage)
            return [ReduceStep(stage, step, ring, "allreduce", nbytes) for step in range(2 * (len(ring) - 1))]

        tied = [
            ReduceStep(stage, step, ring, "tie", nbytes)
            for (stage, ring), nbytes in ties.items()
            if device in ring
            for step in range(2 * (len(ring) - 1))
        ]
        if not replicas and not tied and not any(a.op == "REDUCE_GRAD" for a in actions):
            return list(actions)  # nothing to reduce: the actions are the program
        program: list[Any] = []
        placed = set()
        for action in actions:
            if action.op == "REDUCE_GRAD" and isinstance(action, Action):
                placed.add(action.stage)
                program += steps(action.stage) if action.stage in replicas else []
            else:
                program.append(action)
        for stage in self.hosted[device]:
            if stage in replicas and stage not in placed:
                program += steps(stage)
        return program + tied

    def _reduce(self, device: int, item: "ReduceStep") -> None:
        """One step of a ring all-reduce: send a chunk on, wait for one to come."""
        stage, step, ring, op, nbytes = item
        r = ring.index(device)
        key = (op, stage, step, device)  # a tie's ring and a replica's never share a key
        if (key, "sent") not in self.arrived:  # send once, even if we come back to wait
            self.arrived[(key, "sent")] = True
            chunk = Buffer(-(-nbytes // len(ring)))  # its values are summed exactly at the end
            nxt = ring[(r + 1) % len(ring)]
            self._send(Message(device, nxt, (op, stage, step, nxt), chunk, (stage, op, step)))
        if key not in self.arrived:
            self.blocked[key] = device
            what = f"all-reduce of stage {stage}" if op == "allreduce" else f"tied-weight all-reduce of stage {stage}"
            self.waiting[device] = f"step {step} of the {what} (from device {ring[r - 1]})"
            return
        self.memory[device].release([self.arrived.pop(key)], "buffers")  # summed into the gradient
        del self.arrived[(key, "sent")]
        self._sample(device)
        self.position[device] += 1
        self._advance(device)


class ReduceStep(NamedTuple):
    """Step ``step`` of the ring all-reduce of ``nbytes`` of ``stage`` over the devices ``ring``.

    ``op`` is ``"allreduce"`` for a replicated stage's gradients, ``"tie"`` for
    a tied pair's, ``stage`` then being the pair's first stage.
    """

    stage: int
    step: int
    ring: tuple[int, ...]
    op: str
    nbytes: int


def tie_rings(
    ties: Sequence[tuple[int, int, int]], placement: dict[int, tuple[int, ...]]
) -> dict[tuple[int, tuple[int, ...]], int]:
    """Per (first stage, ring of devices holding either stage), the tied bytes to all-reduce.

    A device holding both stages sums the pair itself: one stage (data
    parallelism's replicas, whose own all-reduce already sums it) or two on
    one device (ZB-V's V) need no exchange. Otherwise the ring is every device
    holding either stage (with replicated stages a simplification: Megatron-LM
    pairs each pipeline's first and last rank). Pairs with the same first
    stage and ring share one all-reduce of their summed bytes.
    """
    rings: dict[tuple[int, tuple[int, ...]], int] = {}
    for a, b, nbytes in ties:
        first, second = set(placement[a]), set(placement[b])
        ring = tuple(sorted(first | second))
        if not first & second:
            rings[(a, ring)] = rings.get((a, ring), 0) + nbytes
    return rings
