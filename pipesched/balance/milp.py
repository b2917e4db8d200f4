"""The min-bottleneck partition of a non-exclusive placement as a mixed-integer linear program, solved by HiGHS.

``bottleneck.balance`` comes here when a device runs stages that are not
adjacent (interleaved, V shapes), so that no interval recurrence exists, and
the partitions are too many to try (more than ``bottleneck.ENUMERATE_LIMIT``).
The program is solved by HiGHS through ``scipy.optimize.milp`` (Huangfu and
Hall, "Parallelizing the dual revised simplex method", Math. Prog. Comp. 2018)
with a relative gap of 0.

Model, for n layers in topological order, S stages, B = S-1 boundaries
between them, K devices, and the loads of ``bottleneck`` (per micro-batch,
compute and link times divided by the larger of the total compute and the
longest crossing, so that every coefficient is at most 1; memory divided by
the cap):

- variables: y[b, i] in {0, 1}, layer i lies in a stage <= b (b < B; so
  y[-1, i] = 0 and y[B, i] = 1); the bottleneck T >= 0; with a memory cap,
  z[s, i] >= 0 where layer i's kept output leaves stage s (s < S-1, for the
  layers with an output and a later successor).
- a stage is a run: y[b, i] >= y[b, i+1] and y[b+1, i] >= y[b, i];
  layer i is in stage s iff x[s, i] = y[s, i] - y[s-1, i] = 1, and every
  stage is non-empty, sum_i x[s, i] >= 1.
- an edge u -> v crosses boundary b iff y[b, u] - y[b, v] = 1.
- device d: sum_s share[s, d] * sum_i compute[i] * x[s, i] <= T.
- link src -> dst: sum_b (share of b's activations src -> dst, plus of
  its gradients) * sum_{edges} time[e] * (y[b, u] - y[b, v]) <= T.
- memory cap: sum_i memory[i] x[s, i] + sum_i output[i] z[s, i] <= cap,
  z[s, i] >= x[s, i] - y[s, last successor of i].
- objective: minimise T; T >= total compute / K is implied and given as a bound.

Status: ``"optimal"`` when HiGHS proves the optimum (up to its feasibility
tolerance, 1e-7 of the largest load); when its node limit (a count, so the
same input gives the same partition on any machine) or time limit stops it
first, the best partition it found and the gap it proved, said in the status;
when it found no feasible partition by then, no cuts and why (``balance``
then returns the evenest split by count with that status). A time-out is
never hidden.

>>> import math
>>> from pipesched.balance import Placement, chain_graph
>>> from pipesched.balance.bottleneck import _Costs
>>> costs = _Costs(chain_graph([5, 1, 1, 1, 1, 1, 1, 5]), "cost", math.inf)
>>> shares = ((1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.0, 1.0))  # interleaved: stage s on device s mod 2
>>> interleaved = Placement(2, shares, (((0, 1, 1.0),), ((1, 0, 1.0),), ((0, 1, 1.0),)))
>>> cuts, status = milp_cuts(costs, interleaved, None, node_limit=1000, time_limit=60.0)
>>> costs.result(cuts, interleaved).device_loads, status
([8.0, 8.0], 'optimal')
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..units import count
from .placement import Placement

if TYPE_CHECKING:  # bottleneck imports this module
    from .bottleneck import _Costs

__all__ = ["milp_cuts"]


def milp_cuts(
    costs: _Costs, placement: Placement, cap: float | None, node_limit: int, time_limit: float
) -> tuple[list[int], str]:
    """The min-bottleneck cuts of a non-exclusive placement, by HiGHS; and how the search ended.

    The model is the module's. Returns the cuts 0 = c0 < ... < cS = n and the
    status, or no cuts and why when HiGHS found no feasible partition in time.
    Costs are scaled to at most 1 so HiGHS's absolute tolerances mean the same at any unit.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    n, stages = costs.n, placement.stages
    bounds_count = stages - 1
    layer = costs.layer_compute
    scale = max(float(layer.sum()), float(costs.crossing.max()), 1e-300)
    comp = layer / scale

    def y(b: int, i: int) -> int:
        return b * n + i

    t_var = bounds_count * n
    z_index: dict[tuple[int, int], int] = {}
    if cap is not None:
        for s in range(stages - 1):  # the last stage's output leaves no stage
            for i in range(n):
                if costs.output[i] > 0 and costs.last_use[i] > i:
                    z_index[(s, i)] = t_var + 1 + len(z_index)
    nvars = t_var + 1 + len(z_index)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def add(terms: dict[int, float], lo: float, hi: float) -> None:
        r = len(lower)
        for c, v in terms.items():
            if v != 0:
                rows.append(r)
                cols.append(c)
                vals.append(v)
        lower.append(lo)
        upper.append(hi)

    def member(s: int, weights: np.ndarray | list[float], terms: dict[int, float]) -> float:
        """Add sum_i weights[i] x[s, i] to ``terms``; return its constant part (from y[B, i] = 1)."""
        constant = 0.0
        for i in range(n):
            if s < bounds_count:
                terms[y(s, i)] = terms.get(y(s, i), 0.0) + weights[i]
            else:
                constant += weights[i]
            if s > 0:
                terms[y(s - 1, i)] = terms.get(y(s - 1, i), 0.0) - weights[i]
        return constant

    for b in range(bounds_count):
        for i in range(n - 1):
            add({y(b, i): 1, y(b, i + 1): -1}, 0, np.inf)
        if b + 1 < bounds_count:
            for i in range(n):
                add({y(b + 1, i): 1, y(b, i): -1}, 0, np.inf)
    ones = [1.0] * n
    for s in range(stages):
        terms: dict[int, float] = {}
        constant = member(s, ones, terms)
        add(terms, 1 - constant, np.inf)
    for d in range(placement.devices):
        terms = {t_var: -1.0}
        constant = 0.0
        for s in range(stages):
            share = placement.shares[s][d]
            if share > 0:
                constant += member(s, share * comp, terms)
        add(terms, -np.inf, -constant)
    links: dict[tuple[int, int], dict[int, float]] = {}
    for b, pairs in enumerate(placement.traffic):
        for src, dst, share in pairs:
            for link in ((src, dst), (dst, src)):
                terms = links.setdefault(link, {t_var: -1.0})
                for pu, pv, t in costs.edges:
                    for p, sign in ((pu, 1.0), (pv, -1.0)):
                        terms[y(b, p)] = terms.get(y(b, p), 0.0) + sign * share * t / scale
    for terms in links.values():
        add(terms, -np.inf, 0.0)
    if cap is not None:
        unit = cap if cap > 0 else 1.0
        for s in range(stages):
            terms = {}
            constant = member(s, costs.layer_memory / unit, terms)
            for (zs, i), z in z_index.items():
                if zs == s:
                    terms[z] = costs.output[i] / unit
                    leaves: dict[int, float] = {z: 1.0}  # z >= x[s, i] - y[s, last use]
                    member(s, [-1.0 if j == i else 0.0 for j in range(n)], leaves)
                    last = y(s, costs.last_use[i])
                    leaves[last] = leaves.get(last, 0.0) + 1.0
                    add(leaves, 0, np.inf)
            add(terms, -np.inf, cap / unit - constant)
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(lower), nvars))
    objective = np.zeros(nvars)
    objective[t_var] = 1.0
    integrality = np.zeros(nvars)
    integrality[:t_var] = 1
    low = np.zeros(nvars)
    low[t_var] = float(comp.sum()) / placement.devices
    high = np.ones(nvars)
    high[t_var:] = np.inf
    result = milp(
        objective,
        integrality=integrality,
        bounds=Bounds(low, high),
        constraints=LinearConstraint(matrix.tocsr(), lower, upper),
        options={"mip_rel_gap": 0.0, "node_limit": node_limit, "time_limit": time_limit, "presolve": True},
    )
    if result.x is None:
        return [], f"HiGHS found no partition within {count(node_limit, 'node')} or {time_limit:g} s ({result.message})"
    solution = np.round(result.x[:t_var]).reshape(bounds_count, n) if bounds_count else np.zeros((0, n))
    cuts = [0] + [int(row.sum()) for row in solution] + [n]
    if result.status == 0:
        return cuts, "optimal"
    gap = getattr(result, "mip_gap", None)
    within = f", within {gap:.2%} of optimal" if gap is not None and math.isfinite(gap) else ""
    return cuts, f"the best HiGHS found within {count(node_limit, 'node')} or {time_limit:g} s{within}"
