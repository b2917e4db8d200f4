"""ZB-H2, ZB-V and DualPipeV: each order against its source, its unit-cost figures against the formulas,
and the overlapped forward-backward pair the engine runs for DualPipeV."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched import DeadlockError, RunConfig, Schedule, ScheduleError, formulas, load_strategy, run, validate
from pipesched.compute import ShapeWorkload
from pipesched.cost import UnitCost, overlapped_time
from pipesched.engine import simulate
from pipesched.exchange import from_torch_csv, to_torch_csv
from pipesched.model import layers_from_widths
from pipesched.testing import check_strategy


def _unit(strategy, devices, microbatches, **extra):
    stages = 2 * devices if strategy in ("zb-v", "dualpipev") else devices
    return run(
        RunConfig(
            strategy=strategy,
            devices=devices,
            microbatches=microbatches,
            layers=f"3x{stages + 1}",
            batch=microbatches,
            cost="unit",
            compute=False,
            **extra,
        )
    )


def _orders(schedule):
    return [" ".join(map(str, device)) for device in schedule.actions]


# -- each order against its source ---------------------------------------------------------


def test_zb_h2_is_the_papers_figure():
    # Qi et al. 2024, figure 3 (bottom), K=4 and M=8, renumbered from 0 and with the paper's B as I:
    # device 1 runs F1..F7, B1 W1 F8, then B W pairs; device 4 runs F B pairs to F7 B7, W1 F8 B8, then W2..W8.
    devices = load_strategy("zb-h2").plan(4, 8).actions
    assert " ".join(map(str, devices[0])) == (
        "0F0 0F1 0F2 0F3 0F4 0F5 0F6 0I0 0W0 0F7 0I1 0W1 0I2 0W2 0I3 0W3 0I4 0W4 0I5 0W5 0I6 0W6 0I7 0W7"
    )
    assert " ".join(map(str, devices[3])) == (
        "3F0 3I0 3F1 3I1 3F2 3I2 3F3 3I3 3F4 3I4 3F5 3I5 3F6 3I6 3W0 3F7 3I7 3W1 3W2 3W3 3W4 3W5 3W6 3W7"
    )


def test_zb_h2_under_unit_cost_is_a_gapless_parallelogram():
    # The figure's claim: device d is busy from d to d + 3M with no gap at all.
    trace = _unit("zb-h2", 4, 8).trace
    for d in range(4):
        spans = sorted((s for s in trace.spans if s.device == d), key=lambda s: s.start)
        assert spans[0].start == d and spans[-1].end == d + 24
        assert all(a.end == b.start for a, b in zip(spans, spans[1:]))


def test_zb_v_is_pytorchs_order():
    # PyTorch's ScheduleZBVZeroBubble for 2 ranks and 4 micro-batches, traced by hand: rank 0 warms up with
    # 2(K-r)-1 = 3 forwards of stage 0, runs K-r = 2 rounds of F, I, W of stage 3, the steady F I W of each
    # chunk, and cools down with K-r rounds of I, W of stage 0; rank 1 pairs r = 1 forwards of stage 2 and 1.
    assert _orders(load_strategy("zb-v").plan(2, 4)) == [
        "0F0 0F1 0F2 3F0 3I0 3W0 3F1 3I1 3W1 0F3 0I0 0W0 3F2 3I2 3W2 0I1 0W1 3F3 3I3 3W3 0I2 0W2 0I3 0W3",
        "1F0 2F0 1F1 2F1 2I0 2W0 1F2 1I0 1W0 2F2 2I1 2W1 1F3 1I1 1W1 2F3 2I2 2W2 1I2 2I3 1I3 1W2 2W3 1W3",
    ]
    assert load_strategy("zb-v").plan(4, 8).placement() == {s: (min(s, 7 - s),) for s in range(8)}  # the V


def test_dualpipev_is_deepseeks_eight_phases():
    # DeepSeek's DualPipeV.step for 2 ranks and 4 micro-batches, traced by hand through its phases:
    # nF0, nF0F1, nB1W1F1, nF0B1F1B0 (overlapped; the last rank's first pair not), nB1F1B0, nB1B0, nWB0, nW.
    assert _orders(load_strategy("dualpipev").plan(2, 4)) == [
        "0F0 0F1 0F2 3F0 3I0 3W0 3F1 (0F3;3B1)OVERLAP_F_B (3F2;0B0)OVERLAP_F_B 3B2 (3F3;0B1)OVERLAP_F_B 3B3 "
        "0I2 0W2 0I3 0W3",
        "1F0 2F0 1F1 2F1 1F2 2B0 (2F2;1B0)OVERLAP_F_B (1F3;2B1)OVERLAP_F_B (2F3;1B1)OVERLAP_F_B 2B2 1B2 "
        "2I3 1I3 2W3 1W3",
    ]


def test_dualpipev_meets_deepseeks_table_and_figure():
    # The DualPipe README: bubble (PP/2-1)(F&B + B - 3W) per device, PP = 2K stages; its figure shows
    # 4 ranks (8 stages) and 10 micro-batches. A chunk's F = W = 1/2, B = 1 under unit cost; F&B = 3/2
    # under the sum rule.
    r = _unit("dualpipev", 4, 10)
    idle = [r.metrics.makespan - busy for busy in r.metrics.busy]
    assert idle == [formulas.dualpipe_table_bubble(4, forward=0.5, backward=1.0, weight=0.5, pair=1.5)] * 4 == [3.0] * 4
    assert r.metrics.peak_inflight_microbatches == [2 * 4 + 1] * 4  # the table's activations: PP + 1


@pytest.mark.parametrize("devices, microbatches", [(2, 4), (4, 8), (5, 11)])
def test_the_v_schedules_send_twice_1f1bs_traffic(devices, microbatches):
    # 1F1B sends each micro-batch over K-1 links each way; the V over 2(K-1): stages K-1 and K share a device
    sends = {s: len(_unit(s, devices, microbatches).trace.transfers) for s in ("1f1b", "zb-v", "dualpipev")}
    assert sends["1f1b"] == 2 * (devices - 1) * microbatches
    assert sends["zb-v"] == sends["dualpipev"] == 2 * sends["1f1b"]


def test_dualpipev_refuses_too_few_microbatches_in_one_sentence():
    with pytest.raises(
        ValueError, match=r"needs at least 2K = 8 micro-batches on 4 devices .* not 7; use --microbatches 8"
    ):
        load_strategy("dualpipev").plan(4, 7)
    with pytest.raises(ValueError, match="--chunks 3 cannot apply; use --chunks 2"):
        load_strategy("zb-v").plan(4, 8, 3)


# -- unit-cost figures against the formulas, for many K and M ---------------------------------


@given(devices=st.integers(1, 6), microbatches=st.integers(1, 20))
def test_zb_h2_step_window_and_memory(devices, microbatches):
    """The paper's parallelogram for M >= 2K-1; for fewer, a regression check of a form found by simulation."""
    m = _unit("zb-h2", devices, microbatches).metrics
    assert m.makespan == formulas.zb_h2_unit_makespan(devices, microbatches)
    if microbatches >= 2 * devices - 2:  # the last device ends as in the paper's parallelogram
        assert m.makespan == 3 * microbatches + devices - 1
    assert m.period == formulas.zero_bubble_unit_window(devices, microbatches)
    assert m.steady_bubble_fraction == pytest.approx(
        formulas.zero_bubble_steady_bubble(devices, microbatches), abs=1e-12
    )
    if microbatches >= 2 * devices - 1:
        assert m.steady_bubble_fraction == 0.0  # zero bubble back to back
    assert m.peak_inflight_microbatches == [min(2 * devices - 1, microbatches)] * devices


@given(devices=st.integers(1, 6), microbatches=st.integers(1, 20))
def test_zb_v_step_window_and_memory(devices, microbatches):
    """The step is a regression check of a form found by simulation; the in-flight counts are derived."""
    m = _unit("zb-v", devices, microbatches).metrics
    assert m.makespan == formulas.zb_v_unit_makespan(devices, microbatches)
    assert set(m.busy) == {3.0 * microbatches}  # two chunks of F, I, W at 1/2 each per micro-batch
    if 2 * microbatches >= 3 * devices:
        assert m.bubble_fraction == pytest.approx((devices - 1) / (6 * microbatches + devices - 1), abs=1e-12)
    assert m.period == formulas.zero_bubble_unit_window(devices, microbatches)
    if microbatches >= 2 * devices - 1:
        assert m.steady_bubble_fraction == 0.0
        assert m.peak_inflight_microbatches == [2 * devices] * devices  # 1F1B's first-device activations
    assert m.peak_inflight_microbatches == [
        formulas.zb_v_peak_inflight(devices, microbatches, d) for d in range(devices)
    ]


@given(devices=st.integers(1, 6), extra=st.integers(0, 12), overlap=st.sampled_from(["sum", "max"]))
def test_dualpipev_step_under_each_overlap_rule(devices, extra, overlap):
    """DeepSeek's table for the devices that wait most; the steps regression-check forms found by simulation."""
    microbatches = 2 * devices + extra
    m = _unit("dualpipev", devices, microbatches, overlap=overlap).metrics
    assert m.makespan == formulas.dualpipev_unit_makespan(devices, microbatches, overlap)
    assert m.bubble_fraction == pytest.approx(formulas.dualpipev_bubble(devices, microbatches, overlap), abs=1e-12)
    pair = 1.5 if overlap == "sum" else 1.0  # F&B: F + B, or max(F, B)
    table = formulas.dualpipe_table_bubble(devices, forward=0.5, backward=1.0, weight=0.5, pair=pair)
    idle = [m.makespan - busy for busy in m.busy]
    assert idle[-1] == table and max(idle) == table  # the table's bubble, on the devices that wait most
    assert m.peak_inflight_microbatches == [2 * devices + 1] * devices
    assert m.period == m.makespan  # device 0 holds the first and the last stage: no gain back to back


@given(
    strategy=st.sampled_from(["zb-h2", "zb-v", "dualpipev"]), devices=st.integers(1, 4), microbatches=st.integers(1, 12)
)
def test_the_tables_forms_hold_and_the_strategies_state_them(strategy, devices, microbatches):
    """A regression check where the table's form was found by simulation (``formulas`` marks which)."""
    if strategy == "dualpipev":
        microbatches = max(microbatches, 2 * devices)
    form = formulas.CLOSED_FORMS[strategy]
    r = _unit(strategy, devices, microbatches)
    assert r.bubble_formula == form.bubble(devices, microbatches, 2)
    assert r.metrics.bubble_fraction == pytest.approx(form.bubble(devices, microbatches, 2), abs=1e-12)
    assert r.metrics.steady_bubble_fraction == pytest.approx(form.steady_bubble(devices, microbatches, 2), abs=1e-12)
    assert r.metrics.peak_inflight_microbatches == [form.inflight(devices, microbatches, 2, d) for d in range(devices)]


@pytest.mark.parametrize("name, chunks, per_device", [("zb-h2", (1,), 0), ("zb-v", (2,), 0), ("dualpipev", (2,), 2)])
def test_the_frontier_strategies_pass_check_strategy(name, chunks, per_device):
    # every remat mode, uneven micro-batches, real NumPy: gradients equal the full-batch pass
    form = formulas.CLOSED_FORMS[name]
    check_strategy(
        name,
        bubble=True,
        inflight=form.inflight,
        steady=form.steady_bubble,
        chunks=chunks,
        max_devices=4,
        max_microbatches=10,
        microbatches_per_device=per_device,
        max_examples=25,
    )


# -- the overlapped pair ----------------------------------------------------------------------

PAIRED = Schedule.parse(["0F0 (0F1;0B0)OVERLAP_F_B 0B1", "1F0 1B0 1F1 1B1"])


@pytest.mark.parametrize("overlap, pair_end, makespan", [("sum", 7.0, 12.0), ("max", 6.0, 11.0)])
def test_a_pair_waits_for_both_inputs_and_lasts_by_the_rule(overlap, pair_end, makespan):
    # F = 1, B = 2. Device 0 runs 0F0, then its pair needs the gradient of micro-batch 0, which device 1
    # sends at 4 (1F0 at 1..2, 1B0 at 2..4): the pair runs 4..7 (F + B) or 4..6 (max), 0F1's output
    # leaves at its end, so 1F1 and 1B1 follow, then 0B1.
    validate(PAIRED, 2, 2)
    work = ShapeWorkload(layers_from_widths([3, 3, 3]), (range(0, 1), range(1, 2)), rows=[2, 2])
    trace = simulate(PAIRED, work, UnitCost(overlap=overlap))
    spans = {s.name: (s.start, s.end) for s in trace.spans}
    assert spans["0F1"][0] == 4.0 and spans["0B0"][1] == pair_end
    assert spans["0F1"][1] == spans["0B0"][0]  # the pair's time split in proportion, F's share first
    assert (spans["0F1"][1] - 4.0) / (pair_end - 4.0) == pytest.approx(1 / 3)
    assert spans["1F1"][0] == pair_end and trace.makespan == makespan


@pytest.mark.parametrize("remat", ["never", "always", "except_last"])
def test_a_pair_is_exact_and_its_memory_holds_both_halves(remat):
    widths, rows = [6, 5, 7, 4, 3], [3, 3, 3, 2, 2]
    r = run(
        RunConfig(
            strategy="dualpipev",
            devices=2,
            microbatches=5,
            batch=13,
            remat=remat,
            layers=",".join(map(str, widths)),
            cost="unit",
        )
    )
    assert r.grad_rel_err < 1e-12
    layers = layers_from_widths(widths)
    walk = [
        formulas.activation_peak(actions, lambda s: [layers[i] for i in r.partition[s]], rows, 4, remat)
        for actions in r.schedule.actions
    ]
    # device 0: the real arrays' peak, both halves of a pair held at once. The last device holds the
    # V's two middle stages, K-1 and K, which share the array between them: the walk counts it twice.
    assert r.metrics.peak_activation_bytes[0] == walk[0]
    assert r.metrics.peak_activation_bytes[1] <= walk[1]


@pytest.mark.parametrize(
    "row, microbatches, message",
    [
        ("0F0 (0F1;0B1)OVERLAP_F_B 0B0", 2, "position 1: .* overlaps 0B1 with the forward it needs"),
        ("0F0 (0B0;0F1)OVERLAP_F_B 0B1", 2, "pairs 0B0 with 0F1; an overlapped pair is one forward and one backward"),
        ("0F0 0F1 0I0 (0F2;0W0)OVERLAP_F_B 0B1 0B2", 3, "pairs 0F2 with 0W0"),
        ("0F0 0F1 0W0 (0F2;0I0)OVERLAP_F_B 0B1 0B2", 3, "0W0 comes before 0I0 on the same device"),  # seen in the pair
    ],
)
def test_bad_pairs_are_refused(row, microbatches, message):
    with pytest.raises(ScheduleError, match=message):
        validate(Schedule.parse([row]), 1, microbatches)


def test_a_malformed_pair_is_refused_when_read():
    with pytest.raises(ScheduleError, match="not an overlapped pair"):
        Schedule.parse(["(0F1)OVERLAP_F_B"])


def test_pairs_cross_to_pytorchs_csv_and_back():
    schedule = load_strategy("dualpipev").plan(3, 7)
    text = to_torch_csv(schedule)
    assert "(0F5;5B2)OVERLAP_F_B" in text  # PyTorch's own spelling of the pair
    assert from_torch_csv(text).schedule == schedule


def test_a_pair_that_needs_its_own_forward_deadlocks_and_the_message_names_the_pair():
    # the pair holds 1F0 and 0B0, and 0B0 needs the gradient 1B0 sends, which needs 1F0: the pair's own forward
    schedule = Schedule.parse(["0F0 0F1 (1F0;0B0)OVERLAP_F_B 1F1 1B1 1B0 0B1"])
    validate(schedule, 1, 2)
    work = ShapeWorkload(layers_from_widths([3, 3, 3]), (range(0, 1), range(1, 2)), rows=[2, 2])
    with pytest.raises(
        DeadlockError, match=r"device 0 waits at \(1F0;0B0\)OVERLAP_F_B for the gradient of micro-batch 0"
    ):
        simulate(schedule, work, UnitCost())


def test_an_unknown_overlap_rule_is_refused_not_read_as_max():
    with pytest.raises(ValueError, match="--overlap 'Sum' is unknown; use one of sum, max"):
        overlapped_time("Sum", 1.0, 2.0)
