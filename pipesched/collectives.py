"""Collectives over the links: a replicated stage's gradient synchronisation, and a tied pair's (a part of the engine).

A stage whose forwards run on several devices (data parallelism) sums its
gradients over a ring of those R devices. ``grad_sync="allreduce"`` (the
default) all-reduces them: 2(R-1) steps, each sending 1/R of the bytes to the
next device (Patarasuk and Yuan 2009). ``grad_sync="sharded"`` is the
distributed optimizer (ZeRO-1, Rajbhandari et al. 2020; Megatron-LM's
``--use-distributed-optimizer``): a ring reduce-scatter of the gradients (R-1
steps; each device ends with the sum of its 1/R shard), the optimizer step on
that shard, then a ring all-gather of the updated parameters (R-1 steps), so
each device holds 1/R of the stage's optimizer state. The bytes moved are the
all-reduce's, in the same steps; the memory is not.

Where the ring's devices sit on several nodes, each holding p of them, a
collective can run in two levels (``collective``): a reduce-scatter inside
each node (p-1 steps of 1/p over the intra-node links), the collective on the
shards across nodes (the j-th device of every node in a ring of n, over the
inter-node links, all p rings at once), and an all-gather inside each node:
Thakur et al. 2005's composition of reduce-scatter and all-gather, applied
per level as NCCL and Horovod's hierarchical all-reduce do. A sharded sync
splits it in two: reduce-scatter inside, then across; all-gather across, then
inside. ``auto`` (the default) takes two levels wherever the ring spans nodes
evenly: one flat ring sends 2(R-1)/R of the bytes over each inter-node link it
crosses, two levels 2(n-1)/(pn), about p times less, as a multi-node NCCL job
spreads its collectives over every device's link. On one node (or without
nodes) both are the flat ring, so runs without nodes keep their numbers. A tied pair of stages on
different devices (a decoder's embedding and output layer) sums its shared
matrix by the same all-reduce, each pipeline replica between its own two
devices (``tie_rings``), as Megatron-LM's embedding group does. The steps are items of a device's
program, placed by REDUCE_GRAD actions or after its last action. Closed forms:
``pipesched.formulas.ring_allreduce_time`` and its neighbours.

>>> ring = tie_rings([(0, 3, 1024)], {0: (0,), 1: (1,), 2: (2,), 3: (3,)})
>>> ring  # stage 0 on device 0, stage 3 on device 3: a two-member ring of 1024 bytes
{(0, (0, 3)): 1024}
>>> [ReduceStep(0, step, (0, 3), "tie", 1024).step for step in range(2 * (2 - 1))]
[0, 1]
>>> for phase in phases("allreduce", 4000, [(0, 1), (2, 3)]):  # two nodes of two: inside, across, inside
...     print(phase.steps, phase.rings)
1 (((0, 1), 4000), ((2, 3), 4000))
2 (((0, 2), 2000), ((1, 3), 2000))
1 (((0, 1), 4000), ((2, 3), 4000))
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

from .compute import Buffer
from .cost import CostModel, link_of
from .errors import ConfigError
from .links import Message
from .schedule import Action, Item

__all__ = [
    "COLLECTIVE_ALGORITHMS",
    "GRAD_SYNC_MODES",
    "Collective",
    "Collectives",
    "Phase",
    "ReduceStep",
    "check_collective",
    "check_grad_sync",
    "grad_sync_collectives",
    "node_groups",
    "optimizer_share",
    "phases",
    "plan_collectives",
    "tie_rings",
]

#: How a replicated stage's gradients are summed: one all-reduce, or the distributed optimizer's
#: reduce-scatter of the gradients then all-gather of the updated parameters (ZeRO-1).
GRAD_SYNC_MODES = ("allreduce", "sharded")

#: How a collective runs over its ring: two levels where the ring spans nodes evenly (``auto``),
#: always one flat ring (``ring``), or two levels, refusing a ring that spans nodes unevenly.
COLLECTIVE_ALGORITHMS = ("auto", "ring", "hierarchical")

# what a waiting device is said to wait for, by a step's op
_WHAT = {
    "allreduce": "all-reduce",
    "reduce_scatter": "gradient reduce-scatter",
    "all_gather": "parameter all-gather",
    "tie": "tied-weight all-reduce",
}


def check_grad_sync(mode: str) -> None:
    """Raise ``ConfigError`` unless ``mode`` is one of ``GRAD_SYNC_MODES``."""
    if mode not in GRAD_SYNC_MODES:
        raise ConfigError(f"--grad-sync {mode!r} is unknown; use one of {', '.join(GRAD_SYNC_MODES)}")


def check_collective(algorithm: str) -> None:
    """Raise ``ConfigError`` unless ``algorithm`` is one of ``COLLECTIVE_ALGORITHMS``."""
    if algorithm not in COLLECTIVE_ALGORITHMS:
        raise ConfigError(f"--collective {algorithm!r} is unknown; use one of {', '.join(COLLECTIVE_ALGORITHMS)}")


class Phase(NamedTuple):
    """``steps`` ring steps run at once on each of ``rings``: (devices, the bytes that ring's collective covers).

    A step sends ceil(bytes / len(devices)) to the next device of the ring.
    """

    rings: tuple[tuple[tuple[int, ...], int], ...]
    steps: int


def phases(kind: str, nbytes: int, groups: Sequence[tuple[int, ...]]) -> list[Phase]:
    """The phases of collective ``kind`` of ``nbytes`` over the devices of ``groups``, one group per node.

    ``kind`` is ``"allreduce"`` (2(R-1) ring steps), ``"reduce_scatter"`` or
    ``"all_gather"`` (R-1 each; Patarasuk and Yuan 2009). One group is the
    flat ring over its R devices in order. Several groups of p devices each
    (n nodes) run two levels: a reduce-scatter of ``nbytes`` inside every node
    (p-1 steps of ceil(nbytes/p)), the collective of the shard of
    ceil(nbytes/p) bytes over the ring of the j-th device of every node, for
    every j at once (2(n-1) or n-1 steps), and an all-gather inside every node;
    a reduce-scatter keeps the first two levels, an all-gather the last two
    (Thakur et al. 2005, applied per level).
    """
    if len(groups) == 1:
        ring = tuple(groups[0])
        steps = 2 * (len(ring) - 1) if kind == "allreduce" else len(ring) - 1
        return [Phase(((ring, nbytes),), steps)]
    p, n = len(groups[0]), len(groups)
    shard = -(-nbytes // p)
    inside = Phase(tuple((tuple(g), nbytes) for g in groups), p - 1)
    across = tuple((tuple(g[j] for g in groups), shard) for j in range(p))
    if kind == "reduce_scatter":
        return [inside, Phase(across, n - 1)]
    if kind == "all_gather":
        return [Phase(across, n - 1), inside]
    return [inside, Phase(across, 2 * (n - 1)), inside]


def node_groups(
    ring: tuple[int, ...], crosses: Callable[[int, int], bool], algorithm: str, what: str
) -> list[tuple[int, ...]]:
    """The ring's devices grouped by node for two-level collectives, or ``[ring]`` for one flat ring.

    ``crosses(a, b)`` says whether devices a and b sit on different nodes.
    ``ring`` stays one group under ``ring``, on one node, and under ``auto``
    where its nodes hold unequal numbers of its devices (two levels need equal
    shards); ``hierarchical`` refuses that last case. ``what`` names the ring
    in that error.

    >>> node_groups((0, 1, 2, 3), lambda a, b: a // 2 != b // 2, "auto", "stage 0's replicas")
    [(0, 1), (2, 3)]
    >>> node_groups((0, 1, 2), lambda a, b: a // 2 != b // 2, "hierarchical", "stage 0's replicas")
    Traceback (most recent call last):
    pipesched.errors.ConfigError: --collective hierarchical needs as many of stage 0's replicas on every node, \
but devices 0, 1, 2 sit 2, 1 to a node; place them evenly, or use --collective ring or auto
    """
    if algorithm == "ring" or len(ring) < 2:
        return [ring]
    groups: list[list[int]] = []
    for device in ring:
        for group in groups:
            if not crosses(group[0], device):
                group.append(device)
                break
        else:
            groups.append([device])
    if len({len(g) for g in groups}) > 1:
        if algorithm == "hierarchical":
            raise ConfigError(
                f"--collective hierarchical needs as many of {what} on every node, but devices "
                f"{', '.join(map(str, ring))} sit {', '.join(str(len(g)) for g in groups)} to a node; "
                "place them evenly, or use --collective ring or auto"
            )
        return [ring]
    return [tuple(g) for g in groups]


class Collective(NamedTuple):
    """One collective of ``stage`` (its trace op ``op``), in ``phases``, its steps numbered from ``first``."""

    stage: int
    op: str
    first: int
    phases: tuple[Phase, ...]

    def steps(self, device: int) -> list[ReduceStep]:
        """The steps ``device`` takes, in order: one ring per phase (none where it is in no ring)."""
        out: list[ReduceStep] = []
        step = self.first
        for phase in self.phases:
            for ring, nbytes in phase.rings:
                if device in ring:
                    out += [ReduceStep(self.stage, step + k, ring, self.op, nbytes) for k in range(phase.steps)]
            step += phase.steps
        return out


def grad_sync_collectives(
    stage: int, nbytes: int, groups: Sequence[tuple[int, ...]], grad_sync: str
) -> list[Collective]:
    """The collectives that sum a replicated stage's ``nbytes`` of gradients over its replicas' ``groups``.

    >>> sync = grad_sync_collectives(1, 800, [(0, 1, 2, 3)], "sharded")  # one flat ring of 4
    >>> [(c.op, c.first, sum(p.steps for p in c.phases)) for c in sync]
    [('reduce_scatter', 0, 3), ('all_gather', 3, 3)]
    """
    if grad_sync == "allreduce":
        return [Collective(stage, "allreduce", 0, tuple(phases("allreduce", nbytes, groups)))]
    scatter = tuple(phases("reduce_scatter", nbytes, groups))
    gather = tuple(phases("all_gather", nbytes, groups))
    return [
        Collective(stage, "reduce_scatter", 0, scatter),
        Collective(stage, "all_gather", sum(p.steps for p in scatter), gather),
    ]


def plan_collectives(
    placement: dict[int, tuple[int, ...]], work: Any, cost: CostModel, grad_sync: str, collective: str
) -> tuple[dict[int, list[Collective]], list[Collective]]:
    """Per replicated stage its gradient collectives, and every tied pair's all-reduce (``work.ties``, if any).

    ``placement`` is the schedule's (stage -> devices running its forwards);
    the nodes are ``cost``'s (``pipesched.cost.link_of``). Raises
    ``ConfigError`` for an unknown ``grad_sync`` or ``collective``, or a ring
    that ``collective="hierarchical"`` cannot split.

    >>> from pipesched.compute import ShapeWorkload
    >>> from pipesched.cost import UnitCost
    >>> from pipesched.model import layers_from_widths
    >>> work = ShapeWorkload(layers_from_widths([3, 4]), (range(0, 1),), [1, 1])
    >>> syncs, ties = plan_collectives({0: (0, 1)}, work, UnitCost(), "allreduce", "auto")
    >>> syncs[0][0].steps(1)  # (3 + 1) * 4 parameters of 8 bytes, in 2 steps of half
    [ReduceStep(stage=0, step=0, ring=(0, 1), op='allreduce', nbytes=128), \
ReduceStep(stage=0, step=1, ring=(0, 1), op='allreduce', nbytes=128)]
    """
    check_grad_sync(grad_sync)
    check_collective(collective)

    def groups(ring: tuple[int, ...], what: str) -> list[tuple[int, ...]]:
        return node_groups(ring, lambda a, b: link_of(cost, a, b)[1], collective, what)

    syncs = {
        s: grad_sync_collectives(s, work.param_bytes(s), groups(ring, f"stage {s}'s replicas"), grad_sync)
        for s, ring in placement.items()
        if len(ring) > 1
    }
    ties = [  # optional: only tied models state them
        Collective(s, "tie", 0, tuple(phases("allreduce", nbytes, groups(ring, f"stage {s}'s tied pair"))))
        for (s, ring), nbytes in tie_rings(getattr(work, "ties", ()), placement).items()
    ]
    return syncs, ties


def optimizer_share(nbytes: int, replicas: int, grad_sync: str) -> int:
    """The optimizer-state bytes one of ``replicas`` devices holds for a stage with ``nbytes`` of it.

    Sharded, each holds ceil(1/R) of it, as Megatron-LM's distributed
    optimizer pads its buffer to a multiple of the data-parallel size
    (its ``theoretical_memory_usage``: 6 + 12/d bytes per parameter in place
    of 18, with d data-parallel ranks).

    >>> optimizer_share(1000, 3, "sharded"), optimizer_share(1000, 3, "allreduce")
    (334, 1000)
    """
    return -(-nbytes // replicas) if grad_sync == "sharded" else nbytes


class Collectives:
    """The engine's collective steps (a part of ``engine._Engine``, split out by concept)."""

    work: Any
    hosted: list[list[int]]
    arrived: dict[Any, Any]
    blocked: dict[Any, int]
    waiting: list[Any]
    position: list[int]
    memory: list[Any]
    mirror: bool  # replica 0 alone, the others mirrored (pipesched.symmetry)

    def _send(self, send: Message, on_left: Callable[[], None] | None = None, via: int | None = None) -> None:
        raise NotImplementedError

    def _sample(self, device: int) -> None:
        raise NotImplementedError

    def _advance(self, device: int) -> None:
        raise NotImplementedError

    def _program(
        self,
        device: int,
        actions: tuple[Item, ...],
        syncs: dict[int, list[Collective]],
        ties: list[Collective],
    ) -> list[Any]:
        """The device's actions, with each replicated stage's gradient collectives where they run.

        A REDUCE_GRAD action places a stage's collectives (``syncs``); without
        one they run after the device's last action. A stage without replicas
        has nothing to reduce, so its REDUCE_GRAD does nothing. The tied
        weights' all-reduces this device is in come last, as Megatron-LM's
        embedding all-reduce follows its data-parallel one.
        """

        def steps(stage: int) -> list[ReduceStep]:
            return [step for collective in syncs[stage] for step in collective.steps(device)]

        tied = [step for collective in ties for step in collective.steps(device)]
        if not syncs and not tied and not any(a.op == "REDUCE_GRAD" for a in actions):
            return list(actions)  # nothing to reduce: the actions are the program
        program: list[Any] = []
        placed = set()
        for action in actions:
            if action.op == "REDUCE_GRAD" and isinstance(action, Action):
                placed.add(action.stage)
                program += steps(action.stage) if action.stage in syncs else []
            else:
                program.append(action)
        for stage in self.hosted[device]:
            if stage in syncs and stage not in placed:
                program += steps(stage)
        return program + tied

    def _reduce(self, device: int, item: "ReduceStep") -> None:
        """One ring step of a collective: send a chunk on, wait for one to come."""
        stage, step, ring, op, nbytes = item
        r = ring.index(device)
        key = (op, stage, step, device)  # a tie's ring and a replica's never share a key
        if (key, "sent") not in self.arrived:  # send once, even if we come back to wait
            self.arrived[(key, "sent")] = True
            chunk = Buffer(-(-nbytes // len(ring)))  # its values are summed exactly at the end
            nxt = ring[(r + 1) % len(ring)]
            if self.mirror and op != "tie":  # every replica sends now over an equal link: what lands is what leaves
                # (a tied pair's ring lies within one pipeline: replica 0's runs as it is)
                self._send(Message(device, device, key, chunk, (stage, op, step)), via=nxt)
            else:
                self._send(Message(device, nxt, (op, stage, step, nxt), chunk, (stage, op, step)))
        if key not in self.arrived:
            self.blocked[key] = device
            self.waiting[device] = f"step {step} of the {_WHAT[op]} of stage {stage} (from device {ring[r - 1]})"
            return
        self.memory[device].release([self.arrived.pop(key)], "buffers")  # summed into the gradient
        del self.arrived[(key, "sent")]
        self._sample(device)
        self.position[device] += 1
        self._advance(device)


class ReduceStep(NamedTuple):
    """Step ``step`` of a collective of ``stage`` over the devices ``ring``, which covers ``nbytes``.

    The step sends ceil(nbytes / len(ring)) to the ring's next device and
    waits for as many from the one before. ``op`` is the collective's:
    ``"allreduce"``, ``"reduce_scatter"`` or ``"all_gather"`` for a replicated
    stage's gradients (and updated parameters), ``"tie"`` for a tied pair's
    all-reduce, ``stage`` then being the pair's first stage. Steps count on
    over a collective's phases and from a reduce-scatter to its all-gather.
    """

    stage: int
    step: int
    ring: tuple[int, ...]
    op: str
    nbytes: int


def tie_rings(
    ties: Sequence[tuple[int, int, int]], placement: dict[int, tuple[int, ...]]
) -> dict[tuple[int, tuple[int, ...]], int]:
    """Per (first stage, ring of devices), the tied bytes to all-reduce: each pipeline's pair on its own.

    Megatron-LM's embedding group pairs each pipeline's first and last rank
    (``parallel_state``'s embedding ranks, one group per data-parallel
    replica): replica r sums its two gradients between its own device of
    stage a and its own device of stage b, the r-th of each stage's replicas
    (``Schedule.placement`` lists them in replica order, device d·D + r:
    ``pipesched.layout``); the replicas' own all-reduce sums across replicas.
    A device holding both stages sums the pair itself (ZB-V's V): no exchange.
    Pairs with the same first stage and ring share one all-reduce of their
    summed bytes.

    >>> tie_rings([(0, 3, 1024)], {0: (0, 1), 3: (6, 7)})  # two replicas: two rings of two
    {(0, (0, 6)): 1024, (0, (1, 7)): 1024}
    """
    rings: dict[tuple[int, tuple[int, ...]], int] = {}
    for a, b, nbytes in ties:
        if len(placement[a]) != len(placement[b]):  # no pairing by replica (a hand-made schedule): one ring
            union, shared = set(placement[a]) | set(placement[b]), set(placement[a]) & set(placement[b])
            pairs = [] if shared else [tuple(sorted(union))]
        else:
            pairs = [tuple(sorted((x, y))) for x, y in zip(placement[a], placement[b]) if x != y]
        for ring in pairs:
            rings[(a, ring)] = rings.get((a, ring), 0) + nbytes
    return rings
