"""pipesched: a discrete-event simulator of pipeline-parallel training schedules.

Real NumPy forward and backward passes run inside a SimPy simulation of
devices and links, so every schedule is both timed and checked for exact
gradients.

>>> import pipesched
>>> result = pipesched.run(pipesched.RunConfig(devices=4, microbatches=8, cost="unit"))
>>> result.metrics.bubble_fraction == pipesched.formulas.gpipe_bubble(4, 8)
True
"""

import importlib.util as _util
import os as _os
import sys as _sys


def _source_strategies() -> None:
    """In a source checkout, make ``strategies/`` (beside this folder) importable as ``pipesched.strategies``.

    Installed, the built-in strategies live in ``pipesched/strategies``. Run from
    the checkout itself (``python -m pipesched``, or a worker process that a
    sweep starts with the current folder first on its path) this package is
    the source folder, which has no such subfolder; without this the built-ins
    would fail to load there.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    beside = _os.path.join(_os.path.dirname(here), "strategies")
    if _os.path.isdir(_os.path.join(here, "strategies")) or "pipesched.strategies" in _sys.modules:
        return
    init = _os.path.join(beside, "__init__.py")
    if not _os.path.isfile(init):
        return
    spec = _util.spec_from_file_location("pipesched.strategies", init, submodule_search_locations=[beside])
    if spec is None or spec.loader is None:
        return
    module = _util.module_from_spec(spec)
    _sys.modules["pipesched.strategies"] = module
    globals()["strategies"] = module  # this package's attribute, as an import of a subpackage would set it
    spec.loader.exec_module(module)


_source_strategies()

from . import formulas  # noqa: E402
from .errors import ConfigError, DeadlockError, OutOfMemoryError, PipeschedError, ScheduleError, StrategyError  # noqa: E402
from .pipeline import RunConfig, RunResult, run, train  # noqa: E402
from .schedule import Action, Overlap, Schedule, expand, validate  # noqa: E402
from .strategy import Strategy, available_strategies, load_strategy, make_plan  # noqa: E402

__all__ = [
    "Action",
    "Overlap",
    "Schedule",
    "expand",
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
