"""The search on a V placement (``--chunks 2``: stages d and 2K-1-d on device d, as ZB-V places them).

References: brute force over every valid order of every device (tiny K and M), ZB-V's closed form under unit
cost (Qi et al. 2024, section 6: 3M + (K-1)/2 with 1F1B's memory, M >= 3K/2), the engine's own memory count
and the full-batch gradient check.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, run
from pipesched.cli import main
from pipesched.compute import ShapeWorkload
from pipesched.cost import FlopsCost, MeasuredCost
from pipesched.model import layers_from_widths
from pipesched.partition import uniform
from pipesched.schedule import Action, Schedule, validate
from pipesched.search import action_times, evaluate, greedy
from pipesched.search.exact import solve
from pipesched.times import StageTimes


def _v(devices: int) -> tuple[int, ...]:
    return tuple(range(devices)) + tuple(reversed(range(devices)))


def _times(draw, devices, microbatches, whole=True):
    """Random per-stage F, I, W and sends on a V (whole numbers no longer than the action before a send, so
    nothing queues on a link and the solver's relaxation is exact: see tests/test_search_exact.py)."""
    number = (lambda: float(draw(st.integers(1, 3)))) if whole else (lambda: draw(st.floats(0.1, 3.0)))
    stages = []
    for _ in range(2 * devices):
        f, i, w = number(), number(), number()
        send = float(draw(st.integers(0, 1))) if whole else draw(st.floats(0.0, 1.0))
        stages.append(StageTimes(F=f, I=i, W=w, R=f, send=send))
    cost = MeasuredCost(tuple(stages), FlopsCost())
    work = ShapeWorkload(layers_from_widths([4] * (2 * devices + 1)), uniform(2 * devices, 2 * devices),
                         [1] * microbatches)  # fmt: skip
    return action_times(_v(devices), devices, work, cost)


def _orders(stages, microbatches):
    """Every order of one device's actions keeping each (stage, micro-batch)'s F, I, W in order."""
    chains = [[Action(s, op, m) for op in "FIW"] for s in stages for m in range(microbatches)]
    out = []

    def walk(prefix, heads):
        if len(prefix) == 3 * len(chains):
            out.append(tuple(prefix))
            return
        for c, h in enumerate(heads):
            if h < 3:
                walk(prefix + [chains[c][h]], heads[:c] + [h + 1] + heads[c + 1 :])

    walk([], [0] * len(chains))
    return out


@pytest.mark.parametrize("devices", [2, 3])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_exact_search_on_a_v_is_brute_forces_optimum(devices, data):
    """One micro-batch through a V of 2 or 3 devices: 20 orders per device, every combination timed."""
    times = _times(data.draw, devices, 1)
    per_device = [_orders((d, 2 * devices - 1 - d), 1) for d in range(devices)]
    best = float("inf")
    for combo in itertools.product(*per_device):
        result = evaluate(Schedule([list(order) for order in combo]), times, check=False)
        if result.deadlock is None:
            best = min(best, result.makespan)
    found = solve(times, 2, seconds=10)
    assert found.evaluation.makespan == best and found.optimal


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), devices=st.integers(2, 4), microbatches=st.integers(1, 8))
def test_greedy_orders_on_a_v_are_valid_within_their_limit_and_never_deadlock(data, devices, microbatches):
    """Unequal F, I, W and sends per stage, every variant, any limit from the least (one micro-batch on each
    of a device's two stages) to all of them: a valid V schedule that finishes within the limit."""
    times = _times(data.draw, devices, microbatches, whole=False)
    limit = data.draw(st.integers(2, 2 * microbatches))
    split, defer, eager = data.draw(st.booleans()), data.draw(st.booleans()), data.draw(st.booleans())
    schedule = greedy(times, limit, split=split, defer=defer or not split, eager=eager)
    validate(schedule, devices, microbatches)
    result = evaluate(schedule, times)
    assert result.deadlock is None and max(result.peak_inflight) <= limit


@pytest.mark.parametrize("devices, microbatches", [(2, 4), (3, 6), (4, 8)])
def test_search_on_a_v_with_1f1bs_memory_reaches_zb_vs_closed_form(capsys, devices, microbatches):
    """Unit cost, --max-inflight K (1F1B's memory, a V's half-stages as halves): 3M + (K-1)/2, the lower
    bound, proved; the engine holds at most 2K stage-micro-batches per device."""
    flags = ["search", "--devices", str(devices), "--microbatches", str(microbatches), "--cost", "unit",
             "--chunks", "2", "--max-inflight", str(devices), "--json"]  # fmt: skip
    assert main(flags) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["makespan"] == 3 * microbatches + (devices - 1) / 2 and data["optimal"]
    assert data["stages_per_device"] == 2 and max(data["peak_inflight_microbatches"]) <= 2 * devices


def test_auto_on_a_v_passes_the_gradient_check_within_its_limit():
    """A V with fewer in flight than ZB-V holds: real NumPy, the full-batch check, the engine's count."""
    result = run(RunConfig(strategy="auto", devices=2, microbatches=4, batch=8, chunks=2, max_inflight=1))
    assert result.grad_rel_err is not None and result.grad_rel_err < 1e-12
    assert result.schedule.num_stages == 4 and max(result.metrics.peak_inflight_microbatches) <= 2
    assert str(result.config.strategy) == "auto"


def test_auto_on_a_v_fits_a_memory_in_bytes():
    """--device-memory on a V: every device within it in the engine's own count."""
    memory = 3_300_000
    result = run(RunConfig(strategy="auto", devices=4, microbatches=8, chunks=2, compute=False,
                           device_memory=memory))  # fmt: skip
    assert result.trace.oom is None and max(result.metrics.peak_memory_bytes) <= memory


def test_a_v_schedule_exports_to_pytorchs_csv_and_runs_back_to_the_same_step(tmp_path, capsys):
    """-o writes the V in PyTorch's action CSV; run as a schedule file, it simulates to the same makespan."""
    out = tmp_path / "v.csv"
    flags = ["search", "--devices", "3", "--microbatches", "6", "--chunks", "2", "--max-inflight", "2",
             "--no-exact", "--no-compute", "--json", "-o", str(out)]  # fmt: skip
    assert main(flags) == 0
    data = json.loads(capsys.readouterr().out)
    again = run(RunConfig(strategy=str(out), devices=3, microbatches=6, chunks=2, compute=False))
    assert again.metrics.makespan == data["makespan"] and again.schedule.num_stages == 6
