"""Balance a model over pipeline stages so that the busiest device or link is as idle as possible.

- ``placement``: where a strategy runs each stage, read off its schedule.
- ``bottleneck``: the exact min-max partition of a layer graph under a placement (a pure function).
- ``milp``: the integer program ``bottleneck`` hands to HiGHS when no faster exact method applies.
- ``search``: simulate candidates and keep the fastest, so ``balanced`` is never slower than uniform.
- ``graph``: the adapters that turn a model, or a plain cost list, into that graph.
- ``profile``: measured per-layer times of the real NumPy passes.

>>> balance(chain_graph([4, 1, 1, 1, 1, 4]), 3).sizes
[1, 4, 1]
"""

from .bottleneck import Balance, balance, evaluate
from .graph import chain_graph, layer_graph
from .placement import Placement
from .profile import profile_layers
from .search import Simulated, fastest

__all__ = [
    "Balance",
    "Placement",
    "Simulated",
    "balance",
    "evaluate",
    "fastest",
    "chain_graph",
    "layer_graph",
    "profile_layers",
]
