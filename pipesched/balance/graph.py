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

from typing import Any, Protocol, Sequence

import networkx as nx

from ..cost import CostModel, FlopsCost

__all__ = ["GraphLayer", "chain_graph", "layer_graph"]


def chain_graph(costs: Sequence[float]) -> nx.DiGraph:
    """A chain of layers with these costs, no memory and free edges."""
    graph = nx.DiGraph()
    for i, c in enumerate(costs):
        graph.add_node(i, cost=float(c))
    graph.add_edges_from((i, i + 1) for i in range(len(costs) - 1))
    return graph


class GraphLayer(Protocol):
    """What ``layer_graph`` reads of a layer: its FLOPs, parameters and activation bytes.

    The MLP's ``pipesched.model.Layer`` and a decoder's layer at a sequence
    length (``pipesched.decoder.workload.CostedLayer``) both expose it.
    """

    @property
    def param_count(self) -> int: ...

    @property
    def needs_output(self) -> bool:
        """Whether its own backward needs its output (a ReLU's mask), so a stage that sends it on keeps it."""
        ...

    def forward_flops(self, rows: int) -> int: ...

    def kept_bytes(self, rows: int, itemsize: int) -> int:
        """Bytes its forward keeps for its backward on ``rows`` samples, its input included, its output not."""
        ...

    def output_bytes(self, rows: int, itemsize: int) -> int:
        """Bytes of its output on ``rows`` samples: what it sends on, and what the loss keeps after the last layer."""
        ...


def layer_graph(
    layers: Sequence[GraphLayer],
    rows: int,
    rows_held: int,
    cost: CostModel | None = None,
    itemsize: int = 8,
    layer_times: Sequence[float] | None = None,
    state_bytes: int = 0,
) -> nx.DiGraph:
    """The layer graph of a chain of layers: the MLP's dense layers, or a decoder's.

    A layer's ``cost`` is what the engine charges it, its forward plus its
    full backward (``cost.compute_time`` of F and B: 3 forward FLOPs under
    ``flops``, which for a decoder's layers equals forward + I + W exactly,
    ``pipesched.decoder.accounting``); its ``memory`` its parameters and
    their gradients in the training precision, its optimizer state, and what
    it keeps for backward over ``rows_held`` samples.

    Args:
        layers: the model's layers, in order (``GraphLayer``).
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
        one: Any = [layer]  # a cost model reads only ``forward_flops`` of a layer, which every GraphLayer has
        time = (
            layer_times[i]
            if layer_times is not None
            else (cost.compute_time("F", one, rows, 1.0) + cost.compute_time("B", one, rows, 1.0))
        )
        # the loss keeps the last output whatever the cut; a ReLU's output is kept when it leaves its stage
        kept = layer.kept_bytes(rows_held, itemsize) + (layer.output_bytes(rows_held, itemsize) if i == last else 0)
        graph.add_node(
            i,
            cost=time,
            memory=2 * layer.param_count * itemsize + kept + layer.param_count * state_bytes,
            output_bytes=layer.output_bytes(rows_held, itemsize) if layer.needs_output else 0,
            layer=str(layer),
        )
        if i < last:
            graph.add_edge(i, i + 1, bytes=layer.output_bytes(rows, itemsize))
    return graph
