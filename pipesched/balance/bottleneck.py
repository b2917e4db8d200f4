"""The exact min-max (bottleneck) partition of a layer graph into contiguous stages.

Layers are ordered topologically (for a chain, the chain itself) and cut into
``parts`` contiguous runs. A stage's cost is its nodes' compute plus the
transfer time (bytes / bandwidth + latency) of every edge entering it from an
earlier stage; a stage's memory is its nodes' memory plus the output of any of
its nodes that is consumed in a later stage (kept for backward, e.g. a ReLU
mask). The balancer returns the partition whose largest stage cost, the
bottleneck, is smallest among all partitions whose every stage fits the
memory cap; among those, the one with the least sum of squared stage costs.

Because both costs depend only on a stage's first and last position, the
problem is the min-max partition of a sequence under an interval cost, solved
exactly by dynamic programming: best[k][b] = min over a < b of
max(best[k-1][a], cost(a, b)), then once more to pick the evenest partition
with that bottleneck. The interval costs take O(n² + n·E) time and O(n²)
memory for n layers and E edges; each recurrence O(K·n²), vectorised.
Unlike greedy feasibility checks (torchgpipe's block partition, an
approximation) or spread-minimising heuristics (DeepSpeed's
``partition_balanced``), it is optimal for any costs, with communication.

>>> from pipesched.balance import chain_graph
>>> g = chain_graph([5, 1, 1, 1, 1, 1, 1, 5])
>>> result = balance(g, 4)
>>> result.sizes, result.stage_costs, result.bottleneck
([1, 3, 3, 1], [5.0, 3.0, 3.0, 5.0], 5.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable

import networkx as nx
import numpy as np

from ..errors import ConfigError
from ..units import count, format_bytes
__all__ = ["Balance", "balance", "evaluate"]


@dataclass(frozen=True)
class Balance:
    """A partition: per stage its nodes (in order), compute + transfer cost, and memory."""

    stages: list[list[Hashable]]
    stage_costs: list[float]
    stage_memory: list[float]
    bottleneck: float

    @property
    def sizes(self) -> list[int]:
        return [len(stage) for stage in self.stages]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": self.sizes,
            "stage_costs": self.stage_costs,
            "stage_memory": self.stage_memory,
            "bottleneck": self.bottleneck,
        }


def _node_key(node: Hashable) -> tuple[int, Any]:
    """Ties in the topological order go to the smaller node: numbers as numbers (2 before 10)."""
    return (0, node) if isinstance(node, (int, float)) else (1, str(node))


def _order(graph: nx.DiGraph) -> list[Hashable]:
    try:
        return list(nx.lexicographical_topological_sort(graph, key=_node_key))
    except nx.NetworkXUnfeasible:
        cycle = " -> ".join(str(u) for u, _ in nx.find_cycle(graph))
        raise ConfigError(
            f"the layer graph has a cycle ({cycle}); a model to partition must be acyclic"
        ) from None


def _node_values(graph: nx.DiGraph, order: list[Hashable], attr: str, what: str) -> np.ndarray:
    values = np.array([float(graph.nodes[v].get(attr, 0.0)) for v in order])
    bad = [(v, x) for v, x in zip(order, values) if not (math.isfinite(x) and x >= 0)]
    if bad:
        node, value = bad[0]
        raise ConfigError(f"layer {node} has {what} {value:g}; give every layer a finite {what} of 0 or more")
    return values


def _interval_costs(
    graph: nx.DiGraph, order: list[Hashable], weight: str, link_bandwidth: float, link_latency: float
) -> tuple[np.ndarray, np.ndarray]:
    """cost[a, b] and memory[a, b] of the stage holding positions a..b-1 (inf where a >= b)."""
    n = len(order)
    pos = {v: i for i, v in enumerate(order)}
    compute = _node_values(graph, order, weight, "cost")
    memory = _node_values(graph, order, "memory", "memory")
    output = _node_values(graph, order, "output_bytes", "output bytes")
    transfer = {}
    for u, v, data in graph.edges(data=True):
        nbytes = float(data.get("bytes", 0.0))
        if not (math.isfinite(nbytes) and nbytes >= 0):
            raise ConfigError(f"edge {u} -> {v} carries {nbytes:g} bytes; give a finite number of 0 or more")
        transfer[(pos[u], pos[v])] = nbytes / link_bandwidth + link_latency
    into: list[list[tuple[int, float]]] = [[] for _ in range(n)]  # per node: (source position, time)
    out_of: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for (pu, pv), t in transfer.items():
        into[pv].append((pu, t))
        out_of[pu].append((pv, t))
    last_use = [max((pv for pv, _ in out_of[p]), default=-1) for p in range(n)]

    cost = np.full((n + 1, n + 1), np.inf)
    mem = np.full((n + 1, n + 1), np.inf)
    for b in range(1, n + 1):  # stage [a, b): grow it leftwards from a = b - 1
        c = m = 0.0
        for a in range(b - 1, -1, -1):
            c += compute[a] + sum(t for _, t in into[a])  # a's inputs all come from before a
            c -= sum(t for pv, t in out_of[a] if pv < b)  # a's edges to a..b-1 no longer cross
            m += memory[a] + (output[a] if last_use[a] >= b else 0.0)
            cost[a, b], mem[a, b] = c, m
    return cost, mem


def _min_max(cost: np.ndarray, parts: int) -> float:
    """The smallest bottleneck over cuts 0 = c0 < ... < c_parts = n."""
    best = cost[0].copy()  # best[b]: one stage holding positions 0..b-1
    for _ in range(parts - 1):
        best = np.maximum(best[:, None], cost).min(axis=0)  # [a, b]: stages up to a, then [a, b)
    return float(best[-1])


def _most_even(cost: np.ndarray, parts: int, bottleneck: float) -> list[int]:
    """Among partitions meeting ``bottleneck``, the cuts with the least sum of squared stage costs.

    Many partitions share the optimal bottleneck; this picks the evenest, so
    the stages that are not the bottleneck are not needlessly lopsided.
    """
    n = cost.shape[0] - 1
    square = np.where(cost <= bottleneck, cost * cost, np.inf)
    best = square[0].copy()
    choices = []
    for _ in range(parts - 1):
        candidates = best[:, None] + square
        choices.append(candidates.argmin(axis=0))  # the earliest cut among equals: deterministic
        best = candidates.min(axis=0)
    cuts = [n]
    for choice in reversed(choices):
        cuts.append(int(choice[cuts[-1]]))
    return [0] + cuts[::-1]


def evaluate(
    graph: nx.DiGraph,
    sizes: list[int],
    *,
    weight: str = "cost",
    link_bandwidth: float = math.inf,
    link_latency: float = 0.0,
) -> Balance:
    """The costs of a given partition (stage sizes in topological order), to compare with ``balance``.

    >>> from pipesched.balance import chain_graph
    >>> evaluate(chain_graph([5, 1, 1, 1, 1, 1, 1, 5]), [2, 2, 2, 2]).stage_costs
    [6.0, 2.0, 2.0, 6.0]
    """
    order = _order(graph)
    if sum(sizes) != len(order) or any(size < 1 for size in sizes):
        raise ConfigError(f"stage sizes {sizes} do not split {len(order)} layers; give positive sizes summing to it")
    cost, mem = _interval_costs(graph, order, weight, link_bandwidth, link_latency)
    cuts = [0]
    for size in sizes:
        cuts.append(cuts[-1] + size)
    return _result(order, cost, mem, cuts)


def _result(order: list[Hashable], cost: np.ndarray, mem: np.ndarray, cuts: list[int]) -> Balance:
    spans = list(zip(cuts, cuts[1:]))
    costs = [float(cost[a, b]) for a, b in spans]
    return Balance(
        stages=[order[a:b] for a, b in spans],
        stage_costs=costs,
        stage_memory=[float(mem[a, b]) for a, b in spans],
        bottleneck=max(costs),
    )


def balance(
    graph: nx.DiGraph,
    parts: int,
    *,
    weight: str = "cost",
    link_bandwidth: float = math.inf,
    link_latency: float = 0.0,
    memory_cap: float | None = None,
) -> Balance:
    """Partition ``graph`` into ``parts`` contiguous stages with the smallest bottleneck.

    Args:
        graph: a DAG; node attributes ``weight`` (compute time, default
            ``"cost"``), ``memory`` (bytes held whatever the cut) and
            ``output_bytes`` (bytes kept when its output leaves the stage); edge
            attribute ``bytes`` (what one micro-batch sends along it).
        parts: the number of stages.
        link_bandwidth, link_latency: what an edge crossing a cut costs.
        memory_cap: the most bytes one stage may hold, or None.

    Returns:
        The optimal ``Balance``.

    Raises:
        ConfigError: more parts than layers, a cycle, a negative or non-finite
            cost, or a cap no partition fits (naming the smallest cap that would).
    """
    order = _order(graph)
    if order and not any(weight in data for _, data in graph.nodes(data=True)):
        raise ConfigError(f"no layer has the attribute {weight!r}; name the node attribute that holds each cost")
    if not 1 <= parts <= len(order):
        raise ConfigError(
            f"cannot split {count(len(order), 'layer')} into {count(parts, 'stage')}; "
            f"use between 1 and {count(len(order), 'stage')}"
        )
    cost, mem = _interval_costs(graph, order, weight, link_bandwidth, link_latency)
    feasible = cost if memory_cap is None else np.where(mem <= memory_cap, cost, np.inf)
    bottleneck = _min_max(feasible, parts)
    if math.isinf(bottleneck):
        smallest = _min_max(mem, parts)
        raise ConfigError(
            f"no partition into {count(parts, 'stage')} fits a device memory of {format_bytes(int(memory_cap or 0))}; "
            f"the smallest that fits is {format_bytes(int(smallest))} ({int(smallest)} bytes): raise the cap "
            "or use more stages"
        )
    return _result(order, cost, mem, _most_even(feasible, parts, bottleneck))
