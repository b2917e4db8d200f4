"""pipesched.testing: the built-ins pass check_strategy, broken strategies are caught and shown."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched import Action, RunConfig, Schedule, formulas, run, validate
from pipesched.testing import StrategyCheckFailed, check_strategy, configs, schedules


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "interleaved", "zb-h1", "dp"])
def test_the_builtins_pass_with_their_closed_forms(name):
    form = formulas.CLOSED_FORMS[name]
    check_strategy(
        name,
        bubble=True,
        inflight=form.inflight,
        chunks=(1, 2, 3) if name == "interleaved" else (1,),
        microbatches_per_device=1 if name == "dp" else 0,
        max_examples=25,
    )


class _Eager:
    """GPipe with forward-order backwards; tests swap in broken variants."""

    name = "eager"

    def plan(self, devices, microbatches, chunks=1):
        return Schedule(
            [
                [Action(d, "F", m) for m in range(microbatches)] + [Action(d, "B", m) for m in range(microbatches)]
                for d in range(devices)
            ]
        )


class _Deadlocks(_Eager):
    name = "deadlocks"

    def plan(self, devices, microbatches, chunks=1):
        # the last device runs its backwards before its forwards can have arrived in order
        schedule = super().plan(devices, microbatches)
        rows = [list(a) for a in schedule.actions]
        if devices > 1 and microbatches > 1:
            rows[-1] = [rows[-1][1], rows[-1][0]] + rows[-1][2:]
            rows[0] = [rows[0][0], Action(0, "B", 0)] + [a for a in rows[0][1:] if a != Action(0, "B", 0)]
        return Schedule(rows)


class _Forgets(_Eager):
    name = "forgets"

    def plan(self, devices, microbatches, chunks=1):
        schedule = super().plan(devices, microbatches)
        return Schedule(
            [a[:-1] if d == devices - 1 and microbatches > 2 else a for d, a in enumerate(schedule.actions)]
        )


def test_a_wrong_bubble_formula_is_caught_with_the_smallest_configuration_and_the_table():
    with pytest.raises(StrategyCheckFailed) as err:
        check_strategy(_Eager(), bubble=lambda K, M, v: (K - 1) / (K + M), max_examples=30)
    message = str(err.value)
    assert "'eager' with devices=2, microbatches=1" in message  # hypothesis shrank it to the smallest
    assert "the formula gives" in message and "device 0" in message and "1F0" in message


def test_a_deadlock_is_caught():
    with pytest.raises(StrategyCheckFailed, match=r"deadlocks.*waits at"):
        check_strategy(_Deadlocks(), max_examples=30)


def test_an_incomplete_plan_is_caught():
    with pytest.raises(StrategyCheckFailed, match=r"'forgets' with devices=1, microbatches=3.*has no 0B2"):
        check_strategy(_Forgets(), max_examples=30)


def test_a_wrong_inflight_formula_is_caught():
    with pytest.raises(StrategyCheckFailed, match=r"peak in-flight micro-batches \[1\], the formula gives \[2\]"):
        check_strategy("1f1b", inflight=lambda K, M, v, d: 2, max_examples=30)


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 2), st.data())
def test_drawn_schedules_are_valid_exact_and_never_deadlock(devices, microbatches, chunks, data):
    schedule = data.draw(schedules(devices, microbatches, chunks))
    validate(schedule, devices, microbatches)
    stages = devices * chunks
    result = run(
        RunConfig(
            strategy=_Fixed(schedule),
            devices=devices,
            microbatches=microbatches,
            layers="3x" + str(stages + 1),
            batch=microbatches,
            cost="unit",
        )
    )
    assert result.grad_rel_err <= 1e-10


@given(configs(max_devices=5, chunks=(1, 2, 3), microbatches_per_device=1))
def test_drawn_configs_fit_their_stages(config):
    assert len(config.widths) - 1 >= config.devices * config.chunks
    assert config.batch >= config.microbatches >= config.devices


class _Fixed:
    """A strategy that returns one given schedule."""

    name = "fixed"

    def __init__(self, schedule):
        self.schedule = schedule

    def plan(self, devices, microbatches, chunks=1):
        return self.schedule
