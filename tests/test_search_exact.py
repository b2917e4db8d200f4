"""The exact search against brute force: every valid order of every device, timed by the evaluator, on small cases.

Times are whole numbers and each send lasts no longer than the action that produces it, so no message ever
queues on its link: the solver's relaxation (sends without queues, times rounded down) is then exact, and
its optimum must be brute force's to the last bit, with the lower bound proving it.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipesched.compute import ShapeWorkload
from pipesched.cost import FlopsCost, MeasuredCost
from pipesched.model import layers_from_widths
from pipesched.partition import uniform
from pipesched.schedule import Action, Schedule
from pipesched.search import action_times, evaluate
from pipesched.search.exact import solve
from pipesched.times import StageTimes


def _times(draw, devices, microbatches, remat="never"):
    stages = []
    for _ in range(devices):
        f, i, w = (draw(st.integers(1, 3)) for _ in range(3))
        stages.append(StageTimes(F=float(f), I=float(i), W=float(w), R=float(f), send=float(draw(st.integers(0, 1)))))
    cost = MeasuredCost(tuple(stages), FlopsCost())
    work = ShapeWorkload(layers_from_widths([4] * (devices + 1)), uniform(devices, devices), [1] * microbatches)
    return action_times(tuple(range(devices)), devices, work, cost, remat)


def _orders(stage, microbatches, ops):
    """Every order of one device's actions that keeps each micro-batch's own ops in order."""
    chains = [[Action(stage, op, m) for op in ops] for m in range(microbatches)]
    n = len(ops) * microbatches
    out = []

    def walk(prefix, heads):
        if len(prefix) == n:
            out.append(tuple(prefix))
            return
        for m, h in enumerate(heads):
            if h < len(ops):
                walk(prefix + [chains[m][h]], heads[:m] + [h + 1] + heads[m + 1 :])

    walk([], [0] * microbatches)
    return out


def _brute(times, limit, split):
    ops = ("F", "I", "W") if split else ("F", "B")
    best = float("inf")
    per_device = [_orders(s, times.microbatches, ops) for s in range(times.devices)]
    for combo in itertools.product(*per_device):
        result = evaluate(Schedule([list(order) for order in combo]), times, check=False)
        if result.deadlock is None and max(result.peak_inflight) <= limit:
            best = min(best, result.makespan)
    return best


@pytest.mark.parametrize(
    "devices, microbatches, split, remat",
    # except_last: the last micro-batch alone keeps its activations, so micro-batches are not interchangeable
    [(2, 2, True, "never"), (3, 2, False, "never"), (2, 3, False, "never"), (2, 3, False, "except_last")],
)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), limit=st.integers(1, 3))
def test_the_exact_search_is_brute_forces_optimum_and_proves_it(devices, microbatches, split, remat, data, limit):
    times = _times(data.draw, devices, microbatches, remat)
    found = solve(times, limit, seconds=10, split=split)
    assert found.evaluation.makespan == _brute(times, limit, split)
    assert found.optimal and max(found.evaluation.peak_inflight) <= limit


def test_a_time_limit_that_is_not_positive_is_one_sentence(capsys):
    from pipesched.cli import main

    for bad in ("0", "-1", "nan", "inf"):
        assert main(["search", "--devices", "2", "--microbatches", "2", "--batch", "4", "--time-limit", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pipesched: error: --time-limit {bad} is not allowed") and err.count("\n") == 1


def test_search_keeps_the_solvers_schedule_where_the_heuristic_falls_short():
    """LLaMA-2-7B on 3 H100s, 6 micro-batches, 2 in flight: the list scheduler's best is 2% off the optimum,
    which the solver finds and proves (to the round-off of its integer times)."""
    from pipesched import RunConfig
    from pipesched.pipeline import prepare
    from pipesched.search import from_prepared, synthesise
    from pipesched.search.exact import search

    config = RunConfig(strategy="1f1b", devices=3, microbatches=6, batch=6, compute=False, model="llama2-7b",
                       hardware="h100-sxm", seq_len=1024)  # fmt: skip
    times = from_prepared(prepare(config))
    heuristic, found = synthesise(times, 2), search(times, 2)
    assert found.method.startswith("exact") and found.evaluation.makespan < heuristic.evaluation.makespan / 1.01
    assert found.gap < 1e-6 and found.bound.value > heuristic.bound.value


@pytest.mark.parametrize(
    "flags",
    [
        # compute a billionth of a send: rounded to no time in the solver's units, so its start order is loose
        ["--devices", "3", "--microbatches", "4", "--cost", "flops", "--link-bandwidth", "1", "--max-inflight", "1"],
        # a decoder stage without work (the tied head's), on a V (1 work unit: enough to meet the case)
        "--devices 4 --microbatches 6 --model tiny-gpt --seq-len 16 --batch 6 --chunks 2 --time-limit 1".split(),
    ],
)
def test_actions_of_no_time_never_give_an_invalid_schedule_or_a_false_proof(capsys, flags):
    """The solver may place an action of no time inside another; its order is then refused, and what is
    printed is a schedule within the limit that the engine runs, no faster than the bound it states."""
    from pipesched.cli import main

    assert main(["search", *flags, "--no-compute", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    inflight = int(flags[flags.index("--max-inflight") + 1]) if "--max-inflight" in flags else 4
    held = 2 if "--chunks" in flags else 1
    assert max(data["peak_inflight_microbatches"]) <= inflight * held
    assert data["makespan"] >= data["lower_bound"] * (1 - 1e-12)
    assert data["optimal"] == (data["makespan"] <= data["lower_bound"] * (1 + 1e-12))
