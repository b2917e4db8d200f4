"""Balance a model over pipeline stages so that the slowest stage is as fast as possible.

- ``bottleneck``: the exact min-max partition of a layer graph (a pure function).
- ``graph``: the adapters that turn a model, or a plain cost list, into that graph.
- ``profile``: measured per-layer times of the real NumPy passes.

>>> balance(chain_graph([4, 1, 1, 1, 1, 4]), 3).sizes
[1, 4, 1]
"""

from .bottleneck import Balance, balance, evaluate
from .graph import chain_graph, layer_graph
from .profile import profile_layers

__all__ = ["Balance", "balance", "evaluate", "chain_graph", "layer_graph", "profile_layers"]
