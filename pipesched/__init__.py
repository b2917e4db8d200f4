"""pipesched: a discrete-event simulator of pipeline-parallel training schedules.

Real NumPy forward and backward passes run inside a SimPy simulation of
devices and links, so every schedule is both timed and checked for exact
gradients.

>>> import pipesched
>>> result = pipesched.run(pipesched.RunConfig(devices=4, microbatches=8, cost="unit"))
>>> result.metrics.bubble_fraction == pipesched.formulas.gpipe_bubble(4, 8)
True
"""

from . import formulas
from .errors import ConfigError, DeadlockError, OutOfMemoryError, PipeschedError, ScheduleError, StrategyError
from .pipeline import RunConfig, RunResult, run, train
from .schedule import Action, Schedule, validate
from .strategy import Strategy, available_strategies, load_strategy, make_plan

__all__ = [
    "Action",
    "Schedule",
    "validate",
    "Strategy",
    "available_strategies",
    "load_strategy",
    "make_plan",
    "RunConfig",
    "RunResult",
    "run",
    "train",
    "formulas",
    "PipeschedError",
    "ConfigError",
    "ScheduleError",
    "StrategyError",
    "DeadlockError",
    "OutOfMemoryError",
]

__version__ = "0.1.0"
