"""The exact partition of a layer graph into contiguous stages that minimises the busiest device or link.

Layers are ordered topologically (for a chain, the chain itself) and cut into
contiguous stages; a ``Placement``, read off the strategy's schedule, says
which device runs each stage. The objective charges what the engine charges
(``pipesched.engine``, ``pipesched.cost``), per micro-batch:

- a device computes every stage the strategy places on it, so its load is the
  sum over those stages of their compute (forward + backward of one
  micro-batch), each weighted by its share of micro-batches on that device;
- a link, one direction between two devices, is busy for bytes / bandwidth
  for each activation it carries forward and each gradient it carries back,
  beside the devices' compute (a send holds its link for its bytes and lands
  latency later). An edge of the graph that crosses several cuts is charged
  on every boundary it crosses, relayed stage to stage.

The bottleneck, the objective, is the largest of these loads. With M equal
micro-batches a device or link must work M × bottleneck within one step, so
under the ``flops`` cost model (``--overlap sum``) that is a lower bound on
the makespan of any order of the strategy's actions. The balancer returns a
partition whose bottleneck is smallest among all partitions whose every stage
fits the memory cap; among those, except where HiGHS solves it, the evenest
(least sum of squared loads). Latency occupies no resource and the number of
crossings is set by the placement, so it cannot move the optimum; what a
closed objective leaves out (the pipeline's fill and drain, waiting on
arrivals) is left to simulation (``pipesched.balance.search``).

Three exact solvers:

- An exclusive placement (no device runs two stages: GPipe, 1F1B, ZB-H1/H2,
  data parallelism) makes every load a function of one stage's first and last
  position, so the problem is the min-max partition of a sequence under
  interval costs, solved by dynamic programming: best[s][b] = min over a < b of
  max(best[s-1][a], cost_s(a, b)), then once more for the evenest. The interval
  costs take O(n² + n·E) time and O(n²) memory for n layers and E edges; the
  recurrence O(S·n²), vectorised. Unlike greedy feasibility checks
  (torchgpipe's block partition) or spread-minimising heuristics (DeepSpeed's
  ``partition_balanced``), it is optimal for any costs.
- Otherwise (interleaved, V shapes) a device's load sums stages that are not
  adjacent, and no interval recurrence exists (the problem contains number
  partitioning). Up to ``ENUMERATE_LIMIT`` partitions (the seed model's 11
  layers into 8 stages have 120), every one is evaluated, vectorised: exact,
  evenest among equals.
- Beyond that, the partition is a mixed-integer linear program (``milp``, stated there)
  solved by HiGHS through ``scipy.optimize.milp`` with a relative gap of 0:
  optimal up to HiGHS's feasibility tolerance (1e-7 of the largest load)
  unless its node limit stops it first, and then ``Balance.status`` says so
  with the gap HiGHS proved.

>>> from pipesched.balance import chain_graph
>>> g = chain_graph([5, 1, 1, 1, 1, 1, 1, 5])
>>> result = balance(g, 4)
>>> result.sizes, result.stage_costs, result.bottleneck
([1, 3, 3, 1], [5.0, 3.0, 3.0, 5.0], 5.0)
>>> shares = ((1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.0, 1.0))  # interleaved: stage s on device s mod 2
>>> interleaved = Placement(2, shares, (((0, 1, 1.0),), ((1, 0, 1.0),), ((0, 1, 1.0),)))
>>> result = balance(g, interleaved)
>>> result.device_loads, result.bottleneck
([8.0, 8.0], 8.0)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Iterator

import networkx as nx
import numpy as np

from ..errors import ConfigError
from ..units import count, format_bytes
from .milp import milp_cuts
from .placement import Placement

if TYPE_CHECKING:  # search imports this module
    from .search import Simulated

__all__ = ["Balance", "balance", "evaluate", "compositions", "ENUMERATE_LIMIT", "MILP_NODE_LIMIT", "MILP_TIME_LIMIT"]

#: A non-exclusive placement with at most this many partitions is solved by trying them all.
ENUMERATE_LIMIT = 100_000

#: Branch-and-bound nodes HiGHS may explore before returning its best with the gap it proved: a fixed
#: count, not a time, so the same input gives the same partition on any machine.
MILP_NODE_LIMIT = 1000

#: Seconds after which HiGHS stops regardless (a safety net the node limit should reach first).
MILP_TIME_LIMIT = 120.0


@dataclass(frozen=True)
class Balance:
    """A partition with its costs: per stage its nodes, compute and memory; per device and link its load.

    ``stage_costs`` is each stage's compute (forward + backward of one
    micro-batch), ``device_loads`` and ``link_loads`` (keyed by ``(src, dst)``)
    what each device and link works per micro-batch, ``bottleneck`` the
    largest of those, ``status`` how the solver ended, and ``simulated`` what
    the simulation found when candidates were simulated (``search.Simulated``).
    """

    stages: list[list[Hashable]]
    stage_costs: list[float]
    stage_memory: list[float]
    device_loads: list[float]
    link_loads: dict[tuple[int, int], float]
    bottleneck: float
    status: str = "optimal"
    simulated: Simulated | None = field(default=None, compare=False)

    @property
    def sizes(self) -> list[int]:
        return [len(stage) for stage in self.stages]

    @property
    def evenness(self) -> float:
        """The sum of squared device and link loads: among equal bottlenecks, less is evener."""
        return sum(x * x for x in self.device_loads) + sum(x * x for x in self.link_loads.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": self.sizes,
            "stage_costs": self.stage_costs,
            "stage_memory": self.stage_memory,
            "device_loads": self.device_loads,
            "link_loads": [
                {"from": src, "to": dst, "load": load} for (src, dst), load in sorted(self.link_loads.items())
            ],
            "bottleneck": self.bottleneck,
            "status": self.status,
            "simulated": None if self.simulated is None else self.simulated.to_dict(),
        }


def _node_key(node: Hashable) -> tuple[int, Any]:
    """Ties in the topological order go to the smaller node: numbers as numbers (2 before 10)."""
    return (0, node) if isinstance(node, (int, float)) else (1, str(node))


def _order(graph: nx.DiGraph) -> list[Hashable]:
    try:
        return list(nx.lexicographical_topological_sort(graph, key=_node_key))
    except nx.NetworkXUnfeasible:
        cycle = " -> ".join(str(u) for u, _ in nx.find_cycle(graph))
        raise ConfigError(f"the layer graph has a cycle ({cycle}); a model to partition must be acyclic") from None


def _node_values(graph: nx.DiGraph, order: list[Hashable], attr: str, what: str) -> np.ndarray:
    values = np.array([float(graph.nodes[v].get(attr, 0.0)) for v in order])
    bad = [(v, x) for v, x in zip(order, values) if not (math.isfinite(x) and x >= 0)]
    if bad:
        node, value = bad[0]
        raise ConfigError(f"layer {node} has {what} {value:g}; give every layer a finite {what} of 0 or more")
    return values


class _Costs:
    """One graph's interval costs: compute and memory of every stage [a, b), link time of every cut.

    ``compute[a, b]`` and ``memory[a, b]`` are inf where a >= b; ``crossing[a]``
    is the link time (bytes / bandwidth) of the edges crossing a cut before
    position a (0 at the ends). Each interval's compute is summed in one fixed
    order, so two stages of equal layers cost exactly the same.
    """

    def __init__(self, graph: nx.DiGraph, weight: str, link_bandwidth: float):
        order = _order(graph)
        n = len(order)
        pos = {v: i for i, v in enumerate(order)}
        layer_compute = _node_values(graph, order, weight, "cost")
        layer_memory = _node_values(graph, order, "memory", "memory")
        output = _node_values(graph, order, "output_bytes", "output bytes")
        edges = []
        for u, v, data in graph.edges(data=True):
            nbytes = float(data.get("bytes", 0.0))
            if not (math.isfinite(nbytes) and nbytes >= 0):
                raise ConfigError(f"edge {u} -> {v} carries {nbytes:g} bytes; give a finite number of 0 or more")
            edges.append((pos[u], pos[v], nbytes / link_bandwidth))
        last_use = [-1] * n
        crossing = np.zeros(n + 1)
        for pu, pv, t in edges:
            last_use[pu] = max(last_use[pu], pv)
            crossing[pu + 1 : pv + 1] += t  # a cut before any of pu+1..pv separates u from v
        compute = np.full((n + 1, n + 1), np.inf)
        memory = np.full((n + 1, n + 1), np.inf)
        for b in range(1, n + 1):  # stage [a, b): grow it leftwards from a = b - 1
            c = m = 0.0
            for a in range(b - 1, -1, -1):
                c += layer_compute[a]
                m += layer_memory[a] + (output[a] if last_use[a] >= b else 0.0)  # a's output leaves the stage
                compute[a, b], memory[a, b] = c, m
        self.order, self.n, self.edges, self.last_use = order, n, edges, last_use
        self.layer_compute, self.layer_memory, self.output = layer_compute, layer_memory, output
        self.compute, self.memory, self.crossing = compute, memory, crossing

    def result(self, cuts: list[int], placement: Placement, status: str = "optimal") -> Balance:
        """The costs of the partition with these cut positions (0 = c0 < ... < cS = n)."""
        spans = list(zip(cuts, cuts[1:]))
        stage_costs = [float(self.compute[a, b]) for a, b in spans]
        device_loads = [0.0] * placement.devices
        for s, row in enumerate(placement.shares):
            for d, share in enumerate(row):
                device_loads[d] += share * stage_costs[s]
        link_loads: dict[tuple[int, int], float] = {}
        for b, pairs in enumerate(placement.traffic):
            time = float(self.crossing[cuts[b + 1]])
            for src, dst, share in pairs:  # the activation forward, its gradient back
                link_loads[(src, dst)] = link_loads.get((src, dst), 0.0) + share * time
                link_loads[(dst, src)] = link_loads.get((dst, src), 0.0) + share * time
        return Balance(
            stages=[self.order[a:b] for a, b in spans],
            stage_costs=stage_costs,
            stage_memory=[float(self.memory[a, b]) for a, b in spans],
            device_loads=device_loads,
            link_loads=dict(sorted(link_loads.items())),
            bottleneck=max(device_loads + list(link_loads.values())),
            status=status,
        )


def _cuts(sizes: list[int]) -> list[int]:
    cuts = [0]
    for size in sizes:
        cuts.append(cuts[-1] + size)
    return cuts


def _stage_matrices(
    costs: _Costs, placement: Placement, cap: float | None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per stage of an exclusive placement, the load and the squared loads its span [a, b) puts on its resources.

    A stage's devices each run only it, so the busiest carries the largest
    share of its compute; the links into it each carry only its entering
    boundary (forward and back), so the busiest carries the largest share of
    that boundary's crossing time.
    """
    loads, squares = [], []
    crossing = costs.crossing[:, None]  # by the stage's first position a
    for s, row in enumerate(placement.shares):
        shares = [t for _, _, t in placement.traffic[s - 1]] if s > 0 else []
        link = max(shares, default=0.0) * crossing
        load = np.maximum(max(row) * costs.compute, link)
        square = sum(x * x for x in row) * costs.compute**2 + 2 * sum(t * t for t in shares) * crossing**2
        if cap is not None:
            load = np.where(costs.memory <= cap, load, np.inf)
        loads.append(load)
        squares.append(np.where(np.isinf(load), np.inf, square))
    return loads, squares


def _min_max(loads: list[np.ndarray]) -> float:
    """The smallest bottleneck over cuts 0 = c0 < ... < cS = n, stage s costing ``loads[s][a, b]``."""
    best = loads[0][0].copy()  # best[b]: stage 0 holding positions 0..b-1
    for load in loads[1:]:
        best = np.maximum(best[:, None], load).min(axis=0)  # [a, b]: stages up to a, then [a, b)
    return float(best[-1])


def _most_even(loads: list[np.ndarray], squares: list[np.ndarray], bottleneck: float) -> list[int]:
    """Among partitions meeting ``bottleneck``, the cuts with the least sum of squared loads.

    Many partitions share the optimal bottleneck; this picks the evenest, so
    the resources that are not the bottleneck are not needlessly lopsided.
    """
    n = loads[0].shape[0] - 1
    allowed = [np.where(load <= bottleneck, square, np.inf) for load, square in zip(loads, squares)]
    best = allowed[0][0].copy()
    choices = []
    for square in allowed[1:]:
        candidates = best[:, None] + square
        choices.append(candidates.argmin(axis=0))  # the earliest cut among equals: deterministic
        best = candidates.min(axis=0)
    cuts = [n]
    for choice in reversed(choices):
        cuts.append(int(choice[cuts[-1]]))
    return [0] + cuts[::-1]


def compositions(n: int, parts: int) -> Iterator[list[int]]:
    """Every way to cut n layers into ``parts`` non-empty contiguous stages, as sizes, in lexicographic order of cuts.

    >>> list(compositions(4, 2))
    [[1, 3], [2, 2], [3, 1]]
    """
    for cuts in itertools.combinations(range(1, n), parts - 1):
        yield [b - a for a, b in zip((0,) + cuts, cuts + (n,))]


def _enumerate(costs: _Costs, placement: Placement, cap: float | None) -> list[int]:
    """The min-bottleneck cuts by trying every partition (few enough: ``ENUMERATE_LIMIT``), evenest among equals.

    Loads are summed stage by stage in the order ``_Costs.result`` sums them, so
    equal partitions tie exactly; among equals the first in lexicographic order
    of cuts wins.
    """
    n, stages = costs.n, placement.stages
    inner = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(1, n), stages - 1)), dtype=np.int64)
    total = math.comb(n - 1, stages - 1)
    cuts = np.hstack([np.zeros((total, 1), np.int64), inner.reshape(total, stages - 1), np.full((total, 1), n)])
    stage = [costs.compute[cuts[:, s], cuts[:, s + 1]] for s in range(stages)]
    resources = []
    for d in range(placement.devices):
        load = np.zeros(total)
        for s in range(stages):
            if placement.shares[s][d]:
                load = load + placement.shares[s][d] * stage[s]
        resources.append(load)
    links: dict[tuple[int, int], np.ndarray] = {}
    for b, pairs in enumerate(placement.traffic):
        time = costs.crossing[cuts[:, b + 1]]
        for src, dst, share in pairs:
            for link in ((src, dst), (dst, src)):
                links[link] = links.get(link, np.zeros(total)) + share * time
    resources += [links[link] for link in sorted(links)]
    loads = np.array(resources)
    bottleneck = loads.max(axis=0)
    if cap is not None:
        fits = np.all([costs.memory[cuts[:, s], cuts[:, s + 1]] <= cap for s in range(stages)], axis=0)
        bottleneck = np.where(fits, bottleneck, np.inf)
    best = bottleneck == bottleneck.min()
    evenness = np.where(best, (loads * loads).sum(axis=0), np.inf)
    return [int(c) for c in cuts[int(np.argmin(evenness))]]


def _check_parts(order: list[Hashable], placement: Placement) -> None:
    if not 1 <= placement.stages <= len(order):
        raise ConfigError(
            f"cannot split {count(len(order), 'layer')} into {count(placement.stages, 'stage')}; "
            f"use between 1 and {count(len(order), 'stage')}"
        )


def evaluate(
    graph: nx.DiGraph,
    sizes: list[int],
    placement: Placement | None = None,
    *,
    weight: str = "cost",
    link_bandwidth: float = math.inf,
) -> Balance:
    """The costs of a given partition (stage sizes in topological order), to compare with ``balance``.

    ``placement`` defaults to one stage per device.

    >>> from pipesched.balance import chain_graph
    >>> evaluate(chain_graph([5, 1, 1, 1, 1, 1, 1, 5]), [2, 2, 2, 2]).stage_costs
    [6.0, 2.0, 2.0, 6.0]
    """
    costs = _Costs(graph, weight, link_bandwidth)
    if sum(sizes) != costs.n or any(size < 1 for size in sizes):
        raise ConfigError(f"stage sizes {sizes} do not split {costs.n} layers; give positive sizes summing to it")
    placement = placement or Placement.one_per_device(len(sizes))
    if placement.stages != len(sizes):
        raise ConfigError(f"stage sizes {sizes} make {len(sizes)} stages but the placement has {placement.stages}")
    return costs.result(_cuts(sizes), placement)


def balance(
    graph: nx.DiGraph,
    placement: int | Placement,
    *,
    weight: str = "cost",
    link_bandwidth: float = math.inf,
    memory_cap: float | None = None,
    node_limit: int = MILP_NODE_LIMIT,
    time_limit: float = MILP_TIME_LIMIT,
) -> Balance:
    """Partition ``graph`` into contiguous stages with the smallest bottleneck under ``placement``.

    Args:
        graph: a DAG; node attributes ``weight`` (compute time, default
            ``"cost"``), ``memory`` (bytes held whatever the cut) and
            ``output_bytes`` (bytes kept when its output leaves the stage); edge
            attribute ``bytes`` (what one micro-batch sends along it, and its
            gradient back).
        placement: where each stage runs (``Placement.of(schedule)``), or a
            number of stages, each alone on a device of its own.
        link_bandwidth: bytes per second of every link.
        memory_cap: the most bytes one stage may hold, or None.
        node_limit, time_limit: how far HiGHS may search, for a placement that is not exclusive
            and has more than ``ENUMERATE_LIMIT`` partitions.

    Returns:
        The optimal ``Balance`` (its ``status`` says if a time limit stopped the search short).

    Raises:
        ConfigError: more stages than layers, a cycle, a negative or non-finite
            cost, or a cap no partition fits (naming the smallest cap that would).
    """
    if isinstance(placement, int):
        placement = Placement.one_per_device(placement)
    order = _order(graph)
    if order and not any(weight in data for _, data in graph.nodes(data=True)):
        raise ConfigError(f"no layer has the attribute {weight!r}; name the node attribute that holds each cost")
    _check_parts(order, placement)
    costs = _Costs(graph, weight, link_bandwidth)
    stages = placement.stages
    if memory_cap is not None:
        smallest = _min_max([costs.memory] * stages)  # the cap holds per stage, wherever the stage runs
        if smallest > memory_cap:
            raise ConfigError(
                f"no partition into {count(stages, 'stage')} fits a device memory of {format_bytes(int(memory_cap))}; "
                f"the smallest that fits is {format_bytes(int(smallest))} ({int(smallest)} bytes): raise the cap "
                "or use more stages"
            )
    if stages == costs.n:
        return costs.result(list(range(costs.n + 1)), placement)
    if placement.exclusive:
        loads, squares = _stage_matrices(costs, placement, memory_cap)
        return costs.result(_most_even(loads, squares, _min_max(loads)), placement)
    if math.comb(costs.n - 1, stages - 1) <= ENUMERATE_LIMIT:
        return costs.result(_enumerate(costs, placement, memory_cap), placement)
    cuts, status = milp_cuts(costs, placement, memory_cap, node_limit, time_limit)
    if not cuts:  # not even a feasible point in time: the evenest split by count, said so
        base, extra = divmod(costs.n, stages)
        return costs.result(_cuts([base + (s < extra) for s in range(stages)]), placement, status)
    return costs.result(cuts, placement, status)
