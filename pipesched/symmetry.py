"""Replica symmetry: when every data-parallel replica provably runs alike, simulate one and mirror the rest.

D replicas of one pipeline (``pipesched.layout``) run the same actions on
micro-batches of the same size. When, besides, every replica's device takes
the same time for each action as replica 0's, every replica's pipeline links
are as fast as replica 0's, and within each phase of each gradient
collective every ring edge is as fast as every other, then by induction over
time every replica is in the same state at every instant: the same actions
start and end together, the same bytes are held. A ring step of replica 0's
device then receives, from its predecessor, a chunk sent at the instant it
sends its own, over an equal link: the chunk that comes in lands when the
chunk that goes out lands. So the engine can run replica 0 alone, deliver
each outgoing chunk back to its sender over the outgoing link
(``pipesched.engine``'s ``mirror``), and every metric of the step (makespan,
each device's busy time and memory timeline, the links' busy windows) is the
full simulation's. A plan's many D > 1 candidates cost 1/D of their full
simulation this way (``pipesched.plan``).

What breaks the symmetry, and sends the engine back to the full simulation:
micro-batches one row apart (a batch that D·M does not divide), per-device
speeds (``--device-speed``), collective links without latency (free links,
``cost="unit"``, or ``latency = 0``: a chunk then lands the instant the next
one leaves, and which of the two a device holds first, so its peak memory,
depends on the order of simultaneous events in other replicas), a ``--node-map`` or flat ring over nodes that
gives two edges of one ring different links, and a tied pair's all-reduce
whose ring spans replicas (``pipesched.collectives.tie_rings`` keeps each
pipeline's pair to itself, as Megatron-LM does, so only a hand-made
schedule's can). Link times
are compared at two message sizes, which decides them for every size as
long as a link's time is affine in the bytes (bandwidth and latency, or a
measured time per boundary), as every built-in cost model's is. Only
shape-only runs mirror: real NumPy must compute every replica's gradients.

``tests/test_symmetry.py`` holds the mirrored metrics equal to the full
simulation's over random layouts, strategies, collectives and nodes.

>>> from pipesched import RunConfig, run
>>> full = run(RunConfig(strategy="1f1b", devices=2, microbatches=4, batch=16, data_parallel=2, compute=False))
>>> mirrored = run(RunConfig(strategy="1f1b", devices=2, microbatches=4, batch=16, data_parallel=2, compute=False,
...                          mirror_replicas=True))
>>> mirrored.trace.devices, mirrored.metrics.makespan == full.metrics.makespan
(2, True)
"""

from __future__ import annotations

from typing import Any, Sequence

from .cost import CostModel
from .schedule import Schedule, expand
from .trace import Records, Span, Trace, Transfer

__all__ = ["PROBE_BYTES", "asymmetry", "one_replica"]

#: The message sizes at which two links are compared (an affine time is decided by two points).
PROBE_BYTES = (1, 1 << 30)

_OPS = ("F", "B", "I", "W", "R")


def asymmetry(
    schedule: Schedule,
    work: Any,
    cost: CostModel,
    stage_units: float,
    collectives: Sequence[Any],
    ties: Sequence[Any],
) -> str | None:
    """Why the replicas of ``schedule`` may run differently, or None when replica 0 stands for all of them.

    ``collectives`` are the gradient collectives of every replicated stage and
    ``ties`` the tied pairs' (``pipesched.collectives.plan_collectives``);
    ``work.rows`` the rows of every global micro-batch; ``stage_units`` the
    engine's unit-cost scale.
    """
    d = schedule.replicas
    if d < 2:
        return "one replica"
    for tie in ties:  # each pipeline's own pair (pipesched.collectives.tie_rings): replica 0's runs as it is
        rings = {ring for phase in tie.phases for ring, _ in phase.rings}
        if any(len({device % d for device in ring}) > 1 for ring in rings):
            return "a tied pair's all-reduce spans the replicas"
        if len({_link(cost, ring[0], ring[1], None) for ring in rings if len(ring) == 2}) > 1:
            return "the replicas' tied pairs sit on links of different speeds"
    m = len(work.rows) // d
    if any(work.rows[r * m + i] != work.rows[i] for r in range(d) for i in range(m)):
        return "the replicas' micro-batches differ in size"
    k = schedule.devices // d
    for p in range(k):
        actions = list(expand(schedule.actions[p * d]))
        for stage in sorted({a.stage for a in actions}):
            for rows in sorted(set(work.rows[:m])):
                times = {
                    tuple(cost.compute_time(op, work.layers[stage], rows, stage_units, stage, p * d + r) for op in _OPS)
                    for r in range(d)
                }
                if len(times) > 1:
                    return f"pipeline device {p}'s replicas compute stage {stage} at different speeds"
    placement = schedule.placement()
    for s in range(schedule.num_stages - 1):
        a, b = placement[s][0] // d, placement[s + 1][0] // d  # replica 0's pipeline devices of s and s + 1
        if a == b:
            continue
        for src, dst in ((a, b), (b, a)):
            if len({_link(cost, src * d + r, dst * d + r, s) for r in range(d)}) > 1:
                return f"the replicas' links between stages {s} and {s + 1} differ"
    for collective in collectives:
        for phase in collective.phases:
            edges = {
                _link(cost, ring[i], ring[(i + 1) % len(ring)], None)
                for ring, _ in phase.rings
                for i in range(len(ring))
                if len(ring) > 1
            }
            if len(edges) > 1:
                return f"stage {collective.stage}'s {collective.op} crosses links of different speeds in one phase"
            if any(latency == 0 for edge in edges for _, latency in edge):
                # a chunk that lands the instant its predecessor's leaves: which a device holds first depends on
                # the order of simultaneous events across replicas, which one replica cannot stand for
                return f"stage {collective.stage}'s {collective.op} runs over links without latency"
    return None


def _link(cost: CostModel, src: int, dst: int, boundary: int | None) -> tuple[tuple[float, float], ...]:
    return tuple(cost.transfer_times(n, src, dst, boundary) for n in PROBE_BYTES)


def one_replica(trace: Trace, replicas: int) -> Trace:
    """Replica 0's devices of a mirrored ``trace``, renumbered 0 .. K-1 (global device d·D -> d).

    A transfer keeps its times; its ends are renumbered the same way (a
    mirrored collective's chunk, sent to another replica's device, lands on
    its sender's pipeline device).
    """
    k = trace.devices // replicas

    def kept(device: int) -> bool:
        return device % replicas == 0

    spans = Records(Span, (Span(s.device // replicas, *s[1:]) for s in trace.spans if kept(s.device)))
    transfers = Records(Transfer, (Transfer(t.src // replicas, t.dst // replicas, *t[2:]) for t in trace.transfers))
    memory = [trace.memory[g] for g in range(0, trace.devices, replicas)] if trace.memory else []
    out = Trace(devices=k, time_unit=trace.time_unit, spans=spans, transfers=transfers, memory=memory)
    if trace.oom is not None:
        device, sample = trace.oom
        out.oom = (device // replicas, sample)
    if trace.peaks is not None:
        out.peaks = trace.peaks[::replicas]
    if trace.peak_samples is not None:
        out.peak_samples = list(trace.peak_samples[::replicas])
    # the pipeline's links; a mirrored chunk's link (to another replica) has no pair among replica 0's devices
    out.links = {(a // replicas, b // replicas): link for (a, b), link in trace.links.items() if kept(a) and kept(b)}
    return out
