"""Testing tools for strategy authors: hypothesis strategies and ``check_strategy``.

Before you trust a schedule, check that it is complete, deadlock-free,
numerically exact and as fast and lean as its theory says:

>>> from pipesched import Action, Schedule
>>> class EagerGPipe:
...     name = "eager"
...     def plan(self, devices, microbatches, chunks=1):
...         return Schedule([[Action(d, "F", m) for m in range(microbatches)]
...                          + [Action(d, "B", m) for m in range(microbatches)] for d in range(devices)])
>>> check_strategy(EagerGPipe(), bubble=lambda K, M, v: (K - 1) / (K - 1 + M),
...                inflight=lambda K, M, v, d: M, max_examples=10)

``configs()`` draws configurations and ``schedules()`` complete, valid,
deadlock-free schedules, for your own property tests. Requires hypothesis
(``pip install pipesched[test]``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError as exc:  # a library module, so say what to install rather than fail obscurely
    raise ImportError("pipesched.testing needs hypothesis; install it with pip install 'pipesched[test]'") from exc

from .errors import PipeschedError
from .pipeline import RunConfig, run
from .schedule import Action, Schedule
from .strategy import Strategy, closed_form_bubble, load_strategy, make_plan

__all__ = ["Config", "configs", "schedules", "check_strategy", "StrategyCheckFailed"]


@dataclass(frozen=True)
class Config:
    """A drawn configuration: K devices, M micro-batches, v chunks, layer widths, batch, remat."""

    devices: int
    microbatches: int
    chunks: int
    widths: tuple[int, ...]
    batch: int
    remat: str

    def run_config(self, strategy: Any, cost: str = "unit", remat: str | None = None) -> RunConfig:
        return RunConfig(
            strategy=strategy,
            devices=self.devices,
            microbatches=self.microbatches,
            chunks=self.chunks,
            layers=",".join(map(str, self.widths)),
            batch=self.batch,
            remat=remat or self.remat,
            cost=cost,
        )


@st.composite
def configs(
    draw: Callable[..., Any],
    max_devices: int = 4,
    max_microbatches: int = 8,
    chunks: tuple[int, ...] = (1,),
    microbatches_per_device: int = 0,
) -> Config:
    """Configurations with enough layers for ``devices × chunks`` stages.

    Layer widths 1 to 9, batch at least M (micro-batches of uneven sizes
    included), every remat mode; at least ``microbatches_per_device × K``
    micro-batches (1 for data parallelism, which gives every device its own).
    """
    devices = draw(st.integers(1, max_devices))
    v = draw(st.sampled_from(chunks))
    fewest = max(1, microbatches_per_device * devices)
    microbatches = draw(st.integers(fewest, max(max_microbatches, fewest)))
    stages = devices * v
    widths = tuple(draw(st.lists(st.integers(1, 9), min_size=stages + 1, max_size=stages + 3)))
    batch = draw(st.integers(microbatches, microbatches + 5))
    remat = draw(st.sampled_from(["never", "always", "except_last"]))
    return Config(devices, microbatches, v, widths, batch, remat)


@st.composite
def schedules(draw: Callable[..., Any], devices: int, microbatches: int, chunks: int = 1) -> Schedule:
    """A random complete, valid and deadlock-free schedule: stage s on device s mod K.

    Each stage takes a full backward or a split I and W at random; the actions
    follow a random order that respects every dependency (a linear extension),
    so running them in that order would never wait: no deadlock.
    """
    stages = devices * chunks
    split = [draw(st.booleans()) for _ in range(stages)]
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    done: set[tuple[int, str, int]] = set()
    todo = {(s, op, m) for s in range(stages) for m in range(microbatches) for op in ("FIW" if split[s] else "FB")}

    def ready(action: tuple[int, str, int]) -> bool:
        s, op, m = action
        if op == "F":
            return s == 0 or (s - 1, "F", m) in done
        if op == "W":
            return (s, "I", m) in done
        after = (s + 1, "I" if s + 1 < stages and split[s + 1] else "B", m)
        return (s, "F", m) in done and (s == stages - 1 or after in done)

    per_device: list[list[Action]] = [[] for _ in range(devices)]
    while todo:
        action = rng.choice(sorted(a for a in todo if ready(a)))
        todo.remove(action)
        done.add(action)
        per_device[action[0] % devices].append(Action(*action))
    return Schedule(per_device)


class StrategyCheckFailed(AssertionError):
    """``check_strategy`` found a configuration that breaks the strategy; the message shows it."""


def _check_one(
    strategy: Strategy,
    config: Config,
    bubble: Callable[[int, int, int], float | None] | bool | None,
    inflight: Callable[[int, int, int, int], int] | None,
    steady: Callable[[int, int, int], float | None] | None = None,
) -> None:
    label = (
        f"{strategy.name!r} with devices={config.devices}, microbatches={config.microbatches}, "
        f"chunks={config.chunks}, layers={','.join(map(str, config.widths))}, batch={config.batch}, "
        f"remat={config.remat}"
    )
    try:
        schedule = make_plan(strategy, config.devices, config.microbatches, config.chunks)
    except PipeschedError as exc:
        raise StrategyCheckFailed(f"{label}: {exc}") from None
    table = schedule.table()
    try:
        result = run(config.run_config(strategy))
    except PipeschedError as exc:
        raise StrategyCheckFailed(f"{label}: {exc}\n{table}") from None
    assert result.grad_rel_err is not None  # run_config computes, and checks against the reference pass
    if not result.grad_rel_err <= 1e-10:
        raise StrategyCheckFailed(
            f"{label}: gradients differ from the full-batch pass by {result.grad_rel_err:.3g}\n{table}"
        )
    if bubble is None and inflight is None and steady is None:
        return
    timing = result if config.remat == "never" else run(config.run_config(strategy, remat="never"))
    expected = (
        closed_form_bubble(strategy, config.devices, config.microbatches, config.chunks)
        if bubble is True
        else bubble(config.devices, config.microbatches, config.chunks)
        if bubble
        else None
    )
    measured = timing.metrics.bubble_fraction
    if expected is not None and abs(measured - expected) > 1e-9:
        raise StrategyCheckFailed(
            f"{label}: bubble {measured:.6g} under unit cost, but the formula gives {expected:.6g}\n{table}"
        )
    back_to_back = steady(config.devices, config.microbatches, config.chunks) if steady else None
    if back_to_back is not None and abs(timing.metrics.steady_bubble_fraction - back_to_back) > 1e-9:
        raise StrategyCheckFailed(
            f"{label}: bubble back to back {timing.metrics.steady_bubble_fraction:.6g} under unit cost, but the "
            f"formula gives {back_to_back:.6g}\n{table}"
        )
    if inflight is not None:
        want = [inflight(config.devices, config.microbatches, config.chunks, d) for d in range(config.devices)]
        got = timing.metrics.peak_inflight_microbatches
        if got != want:
            raise StrategyCheckFailed(f"{label}: peak in-flight micro-batches {got}, the formula gives {want}\n{table}")


def check_strategy(
    strategy: Strategy | str,
    *,
    bubble: Callable[[int, int, int], float | None] | bool | None = None,
    inflight: Callable[[int, int, int, int], int] | None = None,
    steady: Callable[[int, int, int], float | None] | None = None,
    chunks: tuple[int, ...] = (1,),
    max_devices: int = 4,
    max_microbatches: int = 8,
    microbatches_per_device: int = 0,
    max_examples: int = 50,
) -> None:
    """Assert, over drawn configurations, that ``strategy`` plans valid, exact, deadlock-free schedules.

    Every configuration must plan a schedule that validates, simulates without
    deadlock, and gives the full-batch gradients (relative error at most
    1e-10), under every remat mode and uneven micro-batches. Optionally the
    measured bubble under unit cost (no remat) must equal ``bubble(K, M, v)``
    (``True``: the strategy's own ``bubble()``; ``None`` from a formula skips
    that configuration), the peak in-flight micro-batches of device d must
    equal ``inflight(K, M, v, d)``, and the bubble with steps back to back
    (``Metrics.steady_bubble_fraction``) must equal ``steady(K, M, v)``.

    Args:
        strategy: an instance, or a name or ``path/file.py:Class`` to load.
        chunks: the values of v to draw.
        microbatches_per_device: draw at least this many micro-batches per device.
        max_examples: configurations to try (derandomized: the same ones every run).

    Raises:
        StrategyCheckFailed: naming the smallest failing configuration hypothesis
            found, and showing the schedule table.
    """
    instance = load_strategy(strategy) if isinstance(strategy, str) else strategy

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(configs(max_devices, max_microbatches, chunks, microbatches_per_device))
    def check(config: Config) -> None:
        _check_one(instance, config, bubble, inflight, steady)

    check()
