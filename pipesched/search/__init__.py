"""Schedule search: a fast exact evaluator of candidate schedules and lower bounds on any schedule's makespan.

``evaluate`` runs one pipeline's schedule as the engine would (``pipesched.search.evaluate``);
``bounds`` are makespans no valid schedule can beat, each with its proof (``pipesched.search.bounds``);
``synthesise`` keeps the fastest of the built-ins and a list scheduler's orders, ``exact.search`` adds
CP-SAT for small sizes, ``find`` answers a run's configuration (``pipesched search``, ``--strategy
auto``), and ``Searched`` is the search as a strategy plug-in, for ``pipesched.testing``.

>>> from pipesched import RunConfig
>>> from pipesched.pipeline import prepare
>>> prepared = prepare(RunConfig(strategy="zb-h1", devices=4, microbatches=8, cost="unit", compute=False))
>>> times = from_prepared(prepared)
>>> evaluate(prepared.schedule, times).makespan, lower_bound(times).value  # ZB-H1 is optimal here: 3M + K - 1
(27.0, 27.0)
"""

from .bounds import Bound, bounds, lower_bound, period_bound
from .configured import Outcome, find
from .evaluate import ActionTimes, Evaluation, TieStep, action_times, evaluate, from_prepared, placement_of
from .greedy import greedy
from .strategy import Searched
from .synthesise import Fixed, Found, synthesise

__all__ = [
    "ActionTimes",
    "Bound",
    "bounds",
    "lower_bound",
    "period_bound",
    "Outcome",
    "find",
    "Searched",
    "Evaluation",
    "TieStep",
    "action_times",
    "evaluate",
    "from_prepared",
    "placement_of",
    "greedy",
    "Fixed",
    "Found",
    "synthesise",
]
