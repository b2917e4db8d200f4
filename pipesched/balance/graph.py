"""Adapters from a model, or a plain list of costs, to the layer graph the balancer reads.

Node attributes: ``cost`` (forward + backward time of one micro-batch),
``memory`` (parameters, their gradients, their optimizer state, and the
activations GPipe keeps for every micro-batch), ``output_bytes`` (the output
too, when a ReLU mask needs it and it leaves the stage). Edge attribute
``bytes``: one micro-batch's activation sent forward.

>>> g = chain_graph([3, 1, 2])
>>> list(g.edges), g.nodes[0]["cost"]
([(0, 1), (1, 2)], 3.0)
"""

from __future__ import annotations

from typing import Sequence

import networkx as nx

from ..cost import CostModel, FlopsCost
from ..model import Layer, keeps_output

__all__ = ["chain_graph", "layer_graph"]


def chain_graph(costs: Sequence[float]) -> nx.DiGraph:
    """A chain of layers with these costs, no memory and free edges."""
    graph = nx.DiGraph()
    for i, c in enumerate(costs):
        graph.add_node(i, cost=float(c))
    graph.add_edges_from((i, i + 1) for i in range(len(costs) - 1))
    return graph


def layer_graph(
    layers: Sequence[Layer],
    rows: int,
    rows_held: int,
    cost: CostModel | None = None,
    itemsize: int = 8,
    layer_times: Sequence[float] | None = None,
    state_bytes: int = 0,
) -> nx.DiGraph:
    """The layer graph of a chain of dense layers.

    Args:
        layers: the model's layers.
        rows: samples in one micro-batch (what a stage computes and sends at a time).
        rows_held: samples whose activations a stage keeps at its peak (the whole
            batch for GPipe).
        cost: the cost model for compute times (default ``FlopsCost()``).
        itemsize: bytes per element, the training precision's (``pipesched.precision``).
        layer_times: measured forward + backward time per layer, instead of ``cost``.
        state_bytes: optimizer state per parameter (``pipesched.optimizer``).
    """
    cost = cost or FlopsCost()
    graph = nx.DiGraph()
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        time = (
            layer_times[i]
            if layer_times is not None
            else (cost.compute_time("F", [layer], rows, 1.0) + cost.compute_time("B", [layer], rows, 1.0))
        )
        # the loss keeps the last output whatever the cut; a ReLU's output is kept when it leaves its stage
        kept = layer.in_features + (layer.out_features if i == last else 0)
        graph.add_node(
            i,
            cost=time,
            memory=(2 * layer.param_count + rows_held * kept) * itemsize + layer.param_count * state_bytes,
            output_bytes=rows_held * layer.out_features * itemsize if keeps_output([layer], False) else 0,
            layer=str(layer),
        )
        if i < last:
            graph.add_edge(i, i + 1, bytes=rows * layer.out_features * itemsize)
    return graph
