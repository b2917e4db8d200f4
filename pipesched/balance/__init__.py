"""Balance a model over pipeline stages so that the busiest device or link is as idle as possible.

- ``placement``: where a strategy runs each stage, read off its schedule.
- ``bottleneck``: the exact min-max partition of a layer graph under a placement (a pure function).
- ``milp``: the integer program ``bottleneck`` hands to HiGHS when no faster exact method applies.
- ``search``: simulate candidates and keep the fastest, so ``balanced`` is never slower than uniform.
- ``graph``: the adapters that turn a model, or a plain cost list, into that graph.
- ``profile``: measured per-layer times of the real NumPy passes.

>>> from pipesched.balance import balance, chain_graph  # each name loads its submodule on first use
>>> balance(chain_graph([4, 1, 1, 1, 1, 4]), 3).sizes
[1, 4, 1]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:  # the names as the type checker sees them; at run time each loads on first use (below)
    from .bottleneck import Balance, balance, evaluate
    from .graph import chain_graph, layer_graph
    from .placement import Placement
    from .profile import profile_layers
    from .search import Simulated, fastest

#: Each public name and the submodule that defines it. They load on first use, so that a run which does not
#: balance (every ``--partition uniform`` run, the default) never imports networkx and its ~0.1 s (issue 20).
_HOME = {
    "Balance": "bottleneck",
    "balance": "bottleneck",
    "evaluate": "bottleneck",
    "chain_graph": "graph",
    "layer_graph": "graph",
    "Placement": "placement",
    "profile_layers": "profile",
    "Simulated": "search",
    "fastest": "search",
}


#: PEP 562: a public name's submodule imported the first time the name is asked for
__getattr__ = lazy_attributes(__name__, _HOME)


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
