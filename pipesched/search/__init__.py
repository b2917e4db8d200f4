"""Schedule search: a fast exact evaluator of candidate schedules and lower bounds on any schedule's makespan.

``evaluate`` runs one pipeline's schedule as the engine would (``pipesched.search.evaluate``);
``bounds`` are makespans no valid schedule can beat, each with its proof (``pipesched.search.bounds``).
"""

from .bounds import Bound, bounds, lower_bound
from .evaluate import ActionTimes, Evaluation, TieStep, action_times, evaluate, from_prepared, placement_of

__all__ = [
    "ActionTimes",
    "Bound",
    "bounds",
    "lower_bound",
    "Evaluation",
    "TieStep",
    "action_times",
    "evaluate",
    "from_prepared",
    "placement_of",
]
