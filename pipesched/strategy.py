"""The strategy plug-in spec, and how strategies are found, loaded, checked and planned.

A strategy is a class with a ``name`` and ``plan(devices, microbatches,
chunks=1) -> Schedule``; it may also offer ``bubble(devices, microbatches,
chunks=1)``, the closed-form bubble fraction under unit cost (or ``None``),
and ``stages(devices, chunks=1)``, how many stages its plans have, so that a
model with too few layers is refused before planning (without it, v stages
per device: ``devices * chunks``).
Strategies are discovered through the entry-point group
``pipesched.strategies`` (the built-ins take that route too), or loaded from a
file as ``path/to/file.py:ClassName``.

>>> class Sequential:
...     name = "sequential"
...     def plan(self, devices, microbatches, chunks=1):
...         return Schedule([[f"0F{m}" for m in range(microbatches)] + [f"0B{m}" for m in range(microbatches)]])
>>> print(make_plan(Sequential(), devices=1, microbatches=2))
device 0: 0F0 0F1 0B0 0B1
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import re
import sys
import threading
from collections import OrderedDict
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, runtime_checkable

from .errors import ConfigError, PipeschedError, ScheduleError, StrategyError
from .limits import MAX_ACTIONS
from .schedule import Schedule, validate

__all__ = [
    "Strategy",
    "ENTRY_POINT_GROUP",
    "available_strategies",
    "load_strategy",
    "make_plan",
    "remembered_plan",
    "REMEMBERED_ACTIONS",
    "default_chunks",
    "planned_stages",
    "closed_form_bubble",
]

ENTRY_POINT_GROUP = "pipesched.strategies"


@runtime_checkable
class Strategy(Protocol):
    """What a strategy plug-in provides.

    ``plan`` is a function of its arguments: a registered strategy's plan is kept for the next call with the
    same sizes in the same process (``remembered_plan``).
    """

    name: str

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        """Per device, the ordered actions for ``devices`` devices and ``microbatches`` micro-batches."""
        ...


def available_strategies() -> dict[str, str]:
    """Registered strategy names, each with the ``module:attr`` it loads from."""
    return {ep.name: ep.value for ep in sorted(_registered(), key=lambda e: e.name)}


def _registered() -> tuple[EntryPoint, ...]:
    """The group's entry points in discovery order, found once for each ``sys.path``.

    Finding them reads the metadata of every installed distribution, a few
    milliseconds, as long as simulating a small point; a sweep, a plan or a
    search loads a strategy for every point it runs. A plug-in installed while
    a process runs is seen once ``sys.path`` changes, or by the next process.
    """
    return _registered_on(tuple(sys.path))


@functools.lru_cache(maxsize=4)
def _registered_on(path: tuple[str, ...]) -> tuple[EntryPoint, ...]:
    return tuple(entry_points(group=ENTRY_POINT_GROUP))


def _check(obj: object, label: str) -> Strategy:
    try:
        instance = obj() if inspect.isclass(obj) else obj
    except Exception as exc:
        raise StrategyError(
            f"strategy {label} could not be created without arguments ({type(exc).__name__}: {exc}); "
            "give its __init__ defaults for every parameter"
        ) from exc
    if not isinstance(getattr(instance, "name", None), str):
        raise StrategyError(f"strategy {label} has no string attribute 'name'; give the class a name = '...'")
    if not callable(getattr(instance, "plan", None)):
        raise StrategyError(
            f"strategy {label} has no plan(devices, microbatches, chunks=1) method; define one returning a Schedule"
        )
    return instance  # type: ignore[return-value]


def _load_file(spec: str) -> Strategy:
    path, _, attr = spec.rpartition(":")
    if not os.path.isfile(path):
        raise StrategyError(
            f"strategy file {path!r} does not exist; give an existing path as path/to/file.py:ClassName"
        )
    module_name = "_pipesched_plugin_" + re.sub(r"\W", "_", os.path.abspath(path))
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise StrategyError(
            f"strategy file {path!r} is not a Python file; give a .py file as path/to/file.py:ClassName"
        )
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # any error in user code is reported, not raised
        sys.modules.pop(module_name, None)
        raise StrategyError(
            f"strategy file {path!r} failed to import ({type(exc).__name__}: {exc}); fix the error in that file"
        ) from exc
    if not hasattr(module, attr):
        classes = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and v.__module__ == module_name)
        raise StrategyError(
            f"strategy file {path!r} has no {attr!r}; name one of its classes: {', '.join(classes) or '(none)'}"
        )
    return _check(getattr(module, attr), repr(spec))


def load_strategy(spec: str) -> Strategy:
    """A registered strategy by name, one from ``path/to/file.py:ClassName``, or a schedule in ``file.csv``."""
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        return _load_file(spec)
    if spec.lower().endswith(".csv"):  # a schedule written in PyTorch's action CSV
        if not os.path.isfile(spec):
            what = "is a folder" if os.path.isdir(spec) else "does not exist"
            raise StrategyError(f"schedule file {spec!r} {what}; give the path to a CSV of actions")
        stat = os.stat(spec)
        return _file_schedule(spec, stat.st_mtime_ns, stat.st_size)
    known = available_strategies()
    if spec.endswith(".py"):
        raise StrategyError(f"strategy {spec!r} names a file but no class; write {spec}:ClassName")
    if spec not in known:
        raise StrategyError(
            f"unknown strategy {spec!r}; use one of {', '.join(known) or '(none registered)'}, "
            "or path/to/file.py:ClassName"
        )
    ep = next(e for e in _registered() if e.name == spec)
    try:
        obj = ep.load()
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("pipesched.strategies") and "site-packages" not in __file__:
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            raise StrategyError(
                f"strategy {spec!r} cannot load because pipesched is imported from the source folder {here}, "
                "where the built-in strategies are not yet installed; run from another folder or use the "
                "pipesched command"
            ) from exc
        raise StrategyError(
            f"strategy {spec!r} ({ep.value}) failed to load ({type(exc).__name__}: {exc}); "
            "reinstall or fix that plug-in"
        ) from exc
    except Exception as exc:
        raise StrategyError(
            f"strategy {spec!r} ({ep.value}) failed to load ({type(exc).__name__}: {exc}); "
            "reinstall or fix that plug-in"
        ) from exc
    return _check(obj, repr(spec))


@functools.lru_cache(maxsize=32)
def _file_schedule(path: str, mtime_ns: int, size: int) -> Strategy:
    """A CSV schedule read and validated once per version of the file (the CLI asks for it several times)."""
    from .exchange import FileSchedule

    return FileSchedule(path)


def _label(strategy: Strategy, devices: int, microbatches: int, chunks: int) -> str:
    return f"strategy {strategy.name!r} (devices={devices}, microbatches={microbatches}, chunks={chunks})"


def default_chunks(strategy: Strategy) -> int:
    """The stages per device ``strategy`` plans when ``--chunks`` is not given: its ``default_chunks`` (2 for a
    V), else 1.

    >>> default_chunks(load_strategy("zb-v")), default_chunks(load_strategy("gpipe"))
    (2, 1)
    """
    return int(getattr(strategy, "default_chunks", 1))


def make_plan(strategy: Strategy, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
    """Call ``strategy.plan`` and validate the result; every failure names the plug-in and the rule."""
    label = _label(strategy, devices, microbatches, chunks)
    try:
        schedule = strategy.plan(devices, microbatches, chunks)
    except (ValueError, PipeschedError) as exc:  # the plug-in refusing a configuration, in its own words
        raise StrategyError(f"{label} cannot plan: {exc}") from exc
    except MemoryError:  # the configuration's size, not the plug-in's fault: say so, not "fix the plug-in"
        raise ConfigError(
            f"{label} ran out of this machine's memory while planning, so the schedule is too large for this "
            "machine; use fewer devices, micro-batches or chunks"
        ) from None
    except (Exception, SystemExit) as exc:  # a plug-in must not end the process either
        raise StrategyError(f"{label} failed while planning ({type(exc).__name__}: {exc}); fix the plug-in") from exc
    if not isinstance(schedule, Schedule):
        raise StrategyError(
            f"{label} returned a {type(schedule).__name__}, not a pipesched.Schedule; "
            "return Schedule(per_device_actions)"
        )
    actions = sum(len(device) for device in schedule.actions)
    if actions > MAX_ACTIONS:  # the check before planning bounds v stages per device; a plug-in may plan more
        raise StrategyError(
            f"{label} planned {actions:,} actions, more than the {MAX_ACTIONS:,} pipesched simulates in one step; "
            "use fewer devices, micro-batches or chunks"
        )
    try:
        validate(schedule, devices, microbatches)
    except ScheduleError as exc:
        raise StrategyError(f"{label} planned an invalid schedule: {exc}") from exc
    return schedule


#: The most actions, over all plans, ``remembered_plan`` keeps (a few megabytes); a larger plan is made again.
REMEMBERED_ACTIONS = 200_000


class _Plans:
    """Plans by (name, class, devices, micro-batches, chunks), least recently used first, and their actions."""

    def __init__(self) -> None:
        self.plans: OrderedDict[tuple[str, type, int, int, int], tuple[Schedule, int]] = OrderedDict()
        self.actions = 0
        self.lock = threading.Lock()  # a Dask worker runs tasks in threads

    def get(self, key: tuple[str, type, int, int, int]) -> Schedule | None:
        with self.lock:
            kept = self.plans.get(key)
            if kept is None:
                return None
            self.plans.move_to_end(key)
            return kept[0]

    def keep(self, key: tuple[str, type, int, int, int], schedule: Schedule, actions: int) -> None:
        if actions > REMEMBERED_ACTIONS:
            return
        with self.lock:
            if key in self.plans:  # planned meanwhile in another thread
                return
            self.plans[key] = (schedule, actions)
            self.actions += actions
            while self.actions > REMEMBERED_ACTIONS:
                self.actions -= self.plans.popitem(last=False)[1][1]


_remembered = _Plans()


def remembered_plan(spec: object, strategy: Strategy, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
    """``make_plan``, the plan kept for the next call with the same arguments where ``spec`` is a registered name.

    A sweep or a plan asks for one plan for many points, which differ in
    what planning does not read (recomputation, links, memory, costs);
    planning and validating are a tenth of a small point's time. A registered
    strategy (``strategy`` is what ``load_strategy(spec)`` gave) plans from
    its arguments alone, and a ``Schedule`` is immutable, so its plan is
    kept, the least recently used dropped past ``REMEMBERED_ACTIONS``
    actions in all. A file's strategy or schedule (``path.py:Class``, a
    CSV) and an instance are planned every time: a file may change, an
    instance may hold state.
    """
    if not (isinstance(spec, str) and any(ep.name == spec for ep in _registered())):
        return make_plan(strategy, devices, microbatches, chunks)
    key = (spec, type(strategy), devices, microbatches, chunks)
    schedule = _remembered.get(key)
    if schedule is None:
        schedule = make_plan(strategy, devices, microbatches, chunks)  # raises before anything is kept
        _remembered.keep(key, schedule, sum(len(device) for device in schedule.actions))
    return schedule


def planned_stages(strategy: Strategy, devices: int, chunks: int = 1) -> int:
    """How many stages ``strategy`` places on ``devices`` devices with ``chunks`` chunks, without planning.

    The strategy's own ``stages(devices, chunks)`` where it declares one (data
    parallelism: 1, ZB-V: 2K), else ``devices * chunks``, v stages per device.
    ``make_plan`` still checks the plan itself; this count lets a model with too
    few layers be refused before a plan for thousands of devices is built.

    >>> class Replicated:
    ...     name = "replicated"
    ...     def stages(self, devices, chunks=1):
    ...         return 1
    >>> class Chunked:
    ...     name = "chunked"
    >>> planned_stages(Replicated(), devices=8), planned_stages(Chunked(), devices=8, chunks=2)
    (1, 16)
    """
    declared = getattr(strategy, "stages", None)
    if declared is None:
        return devices * chunks
    label = f"strategy {strategy.name!r} (devices={devices}, chunks={chunks})"
    try:
        stages = declared(devices, chunks)
    except (ValueError, PipeschedError) as exc:
        raise StrategyError(f"{label} cannot plan: {exc}") from exc
    except Exception as exc:
        raise StrategyError(f"{label} failed in stages() ({type(exc).__name__}: {exc}); fix the plug-in") from exc
    if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
        raise StrategyError(f"{label} stages() returned {stages!r}; return a whole number of at least 1")
    return stages


def closed_form_bubble(strategy: Strategy, devices: int, microbatches: int, chunks: int = 1) -> float | None:
    """The strategy's own closed-form bubble fraction, or ``None`` if it states none."""
    bubble = getattr(strategy, "bubble", None)
    if bubble is None:
        return None
    label = _label(strategy, devices, microbatches, chunks)
    try:
        value = bubble(devices, microbatches, chunks)
    except Exception as exc:
        raise StrategyError(f"{label} failed in bubble() ({type(exc).__name__}: {exc}); fix the plug-in") from exc
    if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise StrategyError(f"{label} bubble() returned {value!r}; return a fraction between 0 and 1, or None")
    return None if value is None else float(value)
