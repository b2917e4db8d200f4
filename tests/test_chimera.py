"""Chimera (``chimera``, Li and Hoefler, SC 2021) against its authors' order traced by hand, the paper's Table 2
(bubble ratio, activations range) and the simulator's closed forms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, Schedule, formulas, load_strategy, run
from pipesched.cli import main
from pipesched.compute import ShapeWorkload
from pipesched.cost import MeasuredCost
from pipesched.engine import simulate
from pipesched.model import layers_from_widths
from pipesched.partition import uniform
from pipesched.testing import check_strategy
from pipesched.times import StageTimes

# Traced by hand from the authors' code (github Shigangli/Chimera, branch ChimeraBk,
# chimera/chimera_bert/bert/main_with_runtime.py for one basic unit, main_with_runtime_direct.py for two):
# device d, a = K/2 - d (d < K/2) or d - K/2 + 1, b = K/2 - a; phases 1) a near forwards (from the second unit on,
# each after a near backward), 2) b x (far F, near F), 3) a x (far F, far B), 4) b x (near B, far B), then the
# last a near backwards. Near is down (stage d) on the first half of the devices, up (stage K-1-d) on the second.
# Micro-batches 0, 1 (4, 5) go down, 2, 3 (6, 7) up. The main branch's chimera_pipeline_rank.py lists the same
# passes in the same order on every device (by direction and F/B; it numbers micro-batches its own way).
BASIC_UNIT = [
    "0F0 0F1 3F2 3B2 3F3 3B3 0B0 0B1",
    "1F0 2F2 1F1 2F3 2B2 1B0 2B3 1B1",
    "1F2 2F0 1F3 2F1 2B0 1B2 2B1 1B3",
    "0F2 0F3 3F0 3B0 3F1 3B1 0B2 0B3",
]
TWO_UNITS = [
    "0F0 0F1 3F2 3B2 3F3 3B3 0B0 0F4 0B1 0F5 3F6 3B6 3F7 3B7 0B4 0B5",
    "1F0 2F2 1F1 2F3 2B2 1B0 2B3 1B1 1F4 2F6 1F5 2F7 2B6 1B4 2B7 1B5",
    "1F2 2F0 1F3 2F1 2B0 1B2 2B1 1B3 1F6 2F4 1F7 2F5 2B4 1B6 2B5 1B7",
    "0F2 0F3 3F0 3B0 3F1 3B1 0B2 0F6 0B3 0F7 3F4 3B4 3F5 3B5 0B6 0B7",
]
EVEN_K_WHOLE_UNITS = st.tuples(st.sampled_from([2, 4, 6, 8]), st.integers(1, 3)).map(lambda ku: (ku[0], ku[0] * ku[1]))


@pytest.mark.parametrize("microbatches, table", [(4, BASIC_UNIT), (8, TWO_UNITS)])
def test_the_order_for_four_devices_is_the_authors(microbatches, table):
    assert load_strategy("chimera").plan(4, microbatches) == Schedule.parse(table)


def test_each_stage_runs_down_on_device_s_and_up_on_k_minus_1_minus_s():
    schedule = load_strategy("chimera").plan(6, 12)
    assert schedule.placement() == {s: tuple(sorted({s, 5 - s})) for s in range(6)}
    assert schedule.stages_per_device == 2
    for d, actions in enumerate(schedule.actions):
        for a in actions:  # micro-batches u*K .. u*K + K/2 - 1 down (stage s on device s), the rest up
            assert d == (a.stage if a.microbatch % 6 < 3 else 5 - a.stage)


@pytest.mark.parametrize(
    "devices, microbatches, message",
    [
        (3, 6, "needs an even number of them, not --devices 3; use 2 or 4"),
        (1, 2, "needs an even number of them, not --devices 1; use 2"),
        (4, 6, "4 does not divide --microbatches 6; use 4 or 8"),
        (4, 2, "4 does not divide --microbatches 2; use 4"),
        (6, 13, "6 does not divide --microbatches 13; use 12 or 18"),
    ],
)
def test_what_the_construction_cannot_take_is_refused_naming_the_nearest(capsys, devices, microbatches, message):
    argv = ["run", "--strategy", "chimera", "--devices", str(devices), "--microbatches", str(microbatches)]
    assert main([*argv, "--batch", "36"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_pytorchs_csv_cannot_hold_it(capsys, tmp_path):
    """PyTorch's pipelining maps each stage to one rank, so a stage on two devices cannot be exported."""
    out = tmp_path / "chimera.csv"
    argv = ["export", "--strategy", "chimera", "--devices", "4", "--microbatches", "4", "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "stage 0 runs on devices 0, 3; PyTorch's pipelining places each stage on one rank" in err
    assert "bidirectional ones (dualpipe, chimera" in err and not out.exists()


def _idle_and_window(devices, microbatches, forward, backward):
    """Each device's idle time and the step's length up to the last pass, free links, every stage alike.

    The step is measured to the last pass, not to the end of the gradient all-reduce of the two replicas
    of each stage, which the links carry after it.
    """
    schedule = load_strategy("chimera").plan(devices, microbatches)
    layers = layers_from_widths([3] * (devices + 1))
    times = StageTimes(F=forward, I=backward / 2, W=backward / 2, R=forward, send=0.0)
    work = ShapeWorkload(layers, uniform(len(layers), devices), [1] * microbatches)
    trace = simulate(schedule, work, MeasuredCost((times,) * devices), remat="never")
    window = max(span.end for span in trace.spans)
    return [window - busy for busy in trace.busy_time()], window


@settings(max_examples=30, deadline=None)
@given(sizes=EVEN_K_WHOLE_UNITS, forward=st.integers(1, 6), backward=st.integers(1, 6))
def test_idle_time_per_device_over_forward_and_backward_times(sizes, forward, backward):
    """(K/2-1)(F + B + |B-F|(2M/K - 1)) on every device (found by simulation); at F = B the paper's ratio."""
    devices, microbatches = sizes
    idle, window = _idle_and_window(devices, microbatches, forward, backward)
    assert idle == [formulas.chimera_idle(devices, microbatches, forward, backward)] * devices
    if forward == backward:
        bubble = sum(idle) / (devices * window)
        assert bubble == pytest.approx((devices - 2) / (2 * microbatches + devices - 2), abs=1e-12)


def test_the_papers_ratio_by_hand_at_four_devices():
    """Table 2's (D-2)/(2N+D-2) at D = N = 4 is 2/10: each device idles one forward and one backward slot."""
    idle, window = _idle_and_window(4, 4, 1, 1)
    assert idle == [2, 2, 2, 2] and window == 10
    assert formulas.chimera_paper_bubble(4, 4) == pytest.approx(2 / 10)


@settings(max_examples=12, deadline=None)
@given(sizes=EVEN_K_WHOLE_UNITS)
def test_unit_cost_step_bubble_and_peak_in_flight(sizes):
    """Under unit cost (B = 2F) the step is 3M + (K-2)(M/K+1) (found by simulation), above the paper's ratio but
    for K = 2; in flight K/2+1+min(d, K-1-d) (derived): Table 2's activations, (D/2+1) to D stages' worth."""
    devices, microbatches = sizes
    result = run(RunConfig(strategy="chimera", devices=devices, microbatches=microbatches, cost="unit",
                           compute=False, layers=f"3x{devices + 1}", batch=microbatches))  # fmt: skip
    metrics = result.metrics
    assert metrics.makespan == 3 * microbatches + (devices - 2) * (microbatches // devices + 1)
    assert metrics.bubble_fraction == pytest.approx(formulas.chimera_bubble(devices, microbatches), abs=1e-12)
    paper = formulas.chimera_paper_bubble(devices, microbatches)
    assert metrics.bubble_fraction > paper if devices > 2 else metrics.bubble_fraction == paper == 0
    peaks = metrics.peak_inflight_microbatches
    assert peaks == [devices // 2 + 1 + min(d, devices - 1 - d) for d in range(devices)]
    assert (min(peaks), max(peaks)) == (devices // 2 + 1, devices)


def test_passes_check_strategy_with_its_formulas():
    """Even K <= 4 and M a multiple of K (the other draws skipped), MLPs and decoders, tied embeddings on
    replicated stages included; back to back no better than one step (device 0 runs the first and last pass)."""
    form = formulas.CLOSED_FORMS["chimera"]
    check_strategy(
        "chimera",
        bubble=True,
        inflight=form.inflight,
        steady=form.steady_bubble,
        runs=form.runs,
        microbatches_per_device=1,
        max_examples=40,
    )


@pytest.mark.parametrize("remat", ["never", "always", "except_last"])
def test_several_units_give_the_full_batch_gradients(remat):
    """Three units on six devices, micro-batches of 1 and 2 samples: each stage's two replicas summed exactly."""
    result = run(RunConfig(strategy="chimera", devices=6, microbatches=18, batch=29, layers="8,16x6,4",
                           remat=remat))  # fmt: skip
    assert result.grad_rel_err is not None and result.grad_rel_err < 1e-10
