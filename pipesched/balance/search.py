"""Simulate candidate partitions and keep the fastest, so that ``balanced`` is never slower than uniform.

The objective (``bottleneck``) charges each device and link its work per
micro-batch, a lower bound on the step; the engine also charges the
pipeline's fill and drain and every wait for an arrival, which depend on how
the work is spread along the pipeline, not only on the busiest resource. So
partitions with one bottleneck differ in step time, and the objective's
optimum can be slower than uniform: issue 14's interleaved run on 2 devices
took 3162 µs balanced against 2998 µs uniform. This step asks the simulation:

- when the partitions that fit the memory cap number at most ``runs``, it
  simulates every one and returns the fastest: optimal for the simulation
  itself;
- otherwise it simulates the objective's optimum and uniform, then, from the
  faster, moves one cut by one layer at a time while a move makes the step
  faster and runs remain (a hill climb, with no optimality claim).

Either way the partition returned was simulated and is no slower than
uniform, whenever uniform fits the cap. Among the candidates no slower than
uniform (out of memory in the simulation counting as slower than any time),
they rank by: out of memory last; then step time to ten significant digits,
so that round-off (a sum taken in another order) cannot decide; then the
objective, the evenness, the objective's optimum before the others, and the
sizes.

>>> from pipesched.balance import balance, chain_graph
>>> graph = chain_graph([1, 1, 1, 1])
>>> steps = lambda sizes: (False, 10.0 if sizes == [2, 2] else 12.0)  # a stand-in for the engine
>>> fastest(graph, Placement.one_per_device(2), balance(graph, 2), steps, runs=10).simulated.makespan
10.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import networkx as nx

from ..partition import uniform
from .bottleneck import Balance, _Costs, _cuts, compositions
from .placement import Placement

__all__ = ["Simulated", "fastest"]

#: (ran out of memory, makespan) of one shape-only simulation of the partition with these stage sizes.
Simulator = Callable[[list[int]], tuple[bool, float]]


@dataclass(frozen=True)
class Simulated:
    """What the simulation found: the returned partition's step, uniform's, the objective optimum's, how many ran."""

    makespan: float
    oom: bool
    uniform: list[int] | None  # None when uniform does not fit the memory cap
    uniform_makespan: float | None
    optimum: list[int]
    optimum_makespan: float
    candidates: int
    exhaustive: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "makespan": self.makespan,
            "oom": self.oom,
            "uniform": self.uniform,
            "uniform_makespan": self.uniform_makespan,
            "optimum": self.optimum,
            "optimum_makespan": self.optimum_makespan,
            "candidates": self.candidates,
            "exhaustive": self.exhaustive,
        }


def fastest(
    graph: nx.DiGraph,
    placement: Placement,
    optimum: Balance,
    simulate: Simulator,
    runs: int,
    *,
    weight: str = "cost",
    link_bandwidth: float = math.inf,
    memory_cap: float | None = None,
) -> Balance:
    """The fastest partition in simulation among the candidates above, with ``simulated`` filled in.

    Args:
        graph, placement, weight, link_bandwidth, memory_cap: as given to
            ``balance``, which returned ``optimum``.
        simulate: runs the strategy's schedule on a partition given by its
            stage sizes; returns (ran out of memory, makespan).
        runs: how many simulations to spend; the optimum and uniform are
            simulated whatever it says.

    Returns:
        The chosen partition's ``Balance`` (``status`` is the objective
        solver's), or ``optimum`` itself when only one partition exists.
    """
    costs = _Costs(graph, weight, link_bandwidth)
    n, stages = costs.n, placement.stages
    total = math.comb(n - 1, stages - 1)
    if total == 1:
        return optimum
    balances: dict[tuple[int, ...], Balance] = {}
    steps: dict[tuple[int, ...], tuple[bool, float]] = {}

    def fits(sizes: list[int]) -> bool:
        if tuple(sizes) not in balances:
            balances[tuple(sizes)] = costs.result(_cuts(sizes), placement)
        return memory_cap is None or max(balances[tuple(sizes)].stage_memory) <= memory_cap

    def rank(sizes: tuple[int, ...]) -> tuple[Any, ...]:
        oom, makespan = steps[sizes]
        b = balances[sizes]
        return (oom, float(f"{makespan:.10g}"), b.bottleneck, b.evenness, list(sizes) != optimum.sizes, sizes)

    def run(sizes: list[int]) -> None:
        if tuple(sizes) not in steps:
            steps[tuple(sizes)] = simulate(list(sizes))

    uniform_sizes = [len(r) for r in uniform(n, stages)]
    has_uniform = fits(uniform_sizes)
    fits(optimum.sizes)
    exhaustive = total <= runs
    if exhaustive:
        for sizes in compositions(n, stages):
            if fits(sizes):
                run(sizes)
    else:
        run(optimum.sizes)
        if has_uniform:
            run(uniform_sizes)
        current = min(steps, key=rank)
        while len(steps) < runs:
            moves = []
            for b in range(stages - 1):
                for step in (-1, 1):
                    sizes = list(current)
                    sizes[b] += step
                    sizes[b + 1] -= step
                    if min(sizes) >= 1 and tuple(sizes) not in steps and fits(sizes):
                        moves.append(sizes)
            for sizes in moves[: runs - len(steps)]:
                run(sizes)
            best = min(steps, key=rank)
            if best == current:
                break
            current = best
    eligible = [sizes for sizes in steps if not has_uniform or steps[sizes] <= steps[tuple(uniform_sizes)]]
    best = min(eligible, key=rank)
    oom, makespan = steps[best]
    return replace(
        balances[best],
        status=optimum.status,
        simulated=Simulated(
            makespan=makespan,
            oom=oom,
            uniform=uniform_sizes if has_uniform else None,
            uniform_makespan=steps[tuple(uniform_sizes)][1] if has_uniform else None,
            optimum=optimum.sizes,
            optimum_makespan=steps[tuple(optimum.sizes)][1],
            candidates=len(steps),
            exhaustive=exhaustive,
        ),
    )
