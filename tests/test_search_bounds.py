"""Lower bounds on any schedule's makespan: never above a built-in's or a reordering's simulated makespan,
equal to the closed forms where they are known to be tight, and worked out by hand on a small case."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, Schedule, expand, run
from pipesched.compute import ShapeWorkload
from pipesched.cost import MeasuredCost
from pipesched.engine import simulate
from pipesched.model import layers_from_widths
from pipesched.partition import uniform
from pipesched.pipeline import prepare
from pipesched.search import action_times, evaluate, from_prepared, placement_of
from pipesched.search.bounds import (
    bounds,
    busiest_device,
    critical_path,
    device_window,
    device_windows,
    lower_bound,
    period_bound,
)
from pipesched.times import StageTimes
from test_search_evaluate import STRATEGIES, problems, reorder

#: Times are added in another order than the simulation adds them: a bound may pass an equal makespan by a rounding.
ROUNDING = 1e-12


def full_backwards_only(schedule: Schedule) -> bool:
    return all(a.op != "I" for row in schedule.actions for a in expand(row))


@pytest.mark.parametrize("name", STRATEGIES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_bound_exceeds_a_built_in_strategy(name: str, data: st.DataObject) -> None:
    """Every built-in (DualPipeV with its overlapped pairs, under the sum rule) on random measured costs."""
    schedule, work, cost, remat = data.draw(problems(name, pairs=True))
    times = action_times(placement_of(schedule), schedule.devices, work, cost, remat)
    trace = simulate(schedule, work, cost, remat)
    makespan = trace.makespan
    for bound in bounds(times):
        assert bound.value <= makespan * (1 + ROUNDING), bound.reason
    assert period_bound(times).value <= trace.period() * (1 + ROUNDING)  # steps back to back
    if full_backwards_only(schedule):  # GPipe, 1F1B, interleaved: the bounds without split backwards hold too
        for bound in bounds(times, split=False):
            assert bound.value <= makespan * (1 + ROUNDING), bound.reason


@pytest.mark.parametrize("name", STRATEGIES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_no_bound_exceeds_a_reordering(name: str, data: st.DataObject, seed: int) -> None:
    schedule, work, cost, remat = data.draw(problems(name))
    shuffled = reorder(schedule, random.Random(seed), local=False)  # never deadlocks
    times = action_times(placement_of(schedule), schedule.devices, work, cost, remat)
    makespan = evaluate(shuffled, times).makespan
    assert lower_bound(times).value <= makespan * (1 + ROUNDING)
    if full_backwards_only(shuffled):
        assert lower_bound(times, split=False).value <= makespan * (1 + ROUNDING)


def unit_times(strategy: str, devices: int, microbatches: int) -> tuple:
    config = RunConfig(strategy=strategy, devices=devices, microbatches=microbatches, cost="unit", compute=False)
    return from_prepared(prepare(config)), run(config).metrics.makespan


@pytest.mark.parametrize("strategy", ["gpipe", "1f1b"])
@pytest.mark.parametrize("devices,microbatches", [(1, 1), (2, 1), (2, 5), (4, 4), (4, 8), (5, 3)])
def test_tight_for_gpipe_and_1f1b_under_unit_cost(strategy: str, devices: int, microbatches: int) -> None:
    """Bound (b) without split backwards is (K-1) + 3M + 2(K-1) on the last device: their 3(M + K - 1)."""
    times, makespan = unit_times(strategy, devices, microbatches)
    last = device_windows(times, split=False)[-1]
    assert last.value == lower_bound(times, split=False).value == makespan == 3 * (microbatches + devices - 1)
    assert last.reason.startswith(f"device {devices - 1}: its first forward starts at {devices - 1} units ")


@pytest.mark.parametrize("devices,microbatches", [(2, 2), (3, 5), (4, 4), (4, 8)])
def test_tight_for_zb_h1_under_unit_cost(devices: int, microbatches: int) -> None:
    """With split backwards, bound (b) is (K-1) + 3M on the last device for M >= K: ZB-H1's 3M + K - 1."""
    times, makespan = unit_times("zb-h1", devices, microbatches)
    assert device_windows(times)[-1].value == lower_bound(times).value == makespan == 3 * microbatches + devices - 1
    # the bound without split backwards does not hold here: ZB-H1's deferred Ws beat it
    assert lower_bound(times, split=False).value == 3 * (microbatches + devices - 1) > makespan


def test_a_hand_worked_case() -> None:
    """Two devices, one stage each, M = 2, no remat; stage 0: F 1, I 2, W 1, send 0.5; stage 1: F 2, I 1, W 3.

    work(0) = 2 (1 + min(3, 3)) = 8; work(1) = 2 (2 + min(4, 4)) = 12: bound (a) 12.
    (b) device 0: head 0 + work 8; its first backward no sooner than F(0) + send + F(1) + min(B, I)(1) + send
    = 1 + 0.5 + 2 + 1 + 0.5 = 5, then its backward work 2 · 3 = 6: 11; tail 0 (stage 0). Device 1: head =
    F(0) + send = 1.5, + work 12 = 13.5; first backward at 1.5 + 2 = 3.5, + backward work 2 · 4 = 8: 11.5;
    split, the gradient's way down G = c_B + min(B, I + W) of stage 0 = 0.5 + 3 = 3.5, less its Ws 2 · 3 = 6:
    tail 0; 13.5. Without split backwards: device 0's first backward at 1 + 0.5 + 2 + 4 + 0.5 = 8, + 6 = 14;
    device 1's tail = G = 3.5: 17.
    (c) 1 + 0.5 + 2 + min(4, 1) + 0.5 + min(3, 3) = 8; without split, min(4, 1) reads 4: 11.
    """
    stages = (StageTimes(F=1, I=2, W=1, R=1, send=0.5), StageTimes(F=2, I=1, W=3, R=2, send=0.5))
    work = ShapeWorkload(layers_from_widths([2, 2, 2]), uniform(2, 2), [1, 1])
    times = action_times((0, 1), 2, work, MeasuredCost(stages))
    assert busiest_device(times).value == 12
    assert [b.value for b in device_windows(times)] == [11, 13.5]
    assert [b.value for b in device_windows(times, split=False)] == [14, 17]
    assert device_window(times).value == 13.5
    assert critical_path(times).value == 8
    assert critical_path(times, split=False).value == 11
    assert lower_bound(times).value == 13.5
    # and GPipe on these times takes at least that: 0F0 [0,1] 0F1 [1,2]; 1F0 [1.5,3.5] 1F1 [3.5,5.5]
    # 1B0 [5.5,9.5] 1B1 [9.5,13.5]; 0B0 [10,13] 0B1 [14,17]: 17, the bound without split backwards
    gpipe = Schedule.parse(["0F0 0F1 0B0 0B1", "1F0 1F1 1B0 1B1"])
    assert evaluate(gpipe, times).makespan == 17


def test_remat_adds_its_recompute() -> None:
    """Under remat always each backward recomputes its forward first: (a) grows by every R."""
    stages = (StageTimes(F=1, I=2, W=1, R=0.5), StageTimes(F=2, I=1, W=3, R=1.5))
    work = ShapeWorkload(layers_from_widths([2, 2, 2]), uniform(2, 2), [1, 1])
    never = action_times((0, 1), 2, work, MeasuredCost(stages), remat="never")
    always = action_times((0, 1), 2, work, MeasuredCost(stages), remat="always")
    assert busiest_device(always).value == busiest_device(never).value + 2 * 1.5 == 15
