"""DualPipe, DeepSeek's bidirectional pipeline: its order against DeepSeek's code, its unit-cost figures against
the DualPipe README's table, its refusals, and check_strategy with its formulas."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched import RunConfig, formulas, load_strategy, run
from pipesched.cli import main
from pipesched.testing import check_strategy
from test_frontier import _unit  # a unit-cost, shape-only run of a strategy

# DeepSeek's DualPipe.step (github.com/deepseek-ai/DualPipe, dualpipe/dualpipe.py) run unchanged by
# tests/fixtures/torch/derive_dualpipe.py, its forward, backward and W leaves and its sends stubbed to record
# what they compute; its "phase" 0 after the xor with is_in_second_half is the downward pipeline (stage r,
# micro-batches 0..M/2-1), phase 1 the upward one (stage K-1-r, micro-batches M/2..M-1). By hand for rank 0 of
# K=4, M=8 (h = 2, r = 0): phase 1 runs 2(h-r-1) = 2 forwards of chunk 0 (0F0 0F1); phase 2 one pair of
# forwards (0F2, and chunk 1's first, 3F4); phase 3 one I, its W and a forward of chunk 1 (3I4 3W4 3F5);
# phase 4 M/2-K+r+1 = 1 round of two overlapped pairs (0F3;3B5) (3F6;0B0), overlapped since rank 0 is no
# middle rank; phase 5 one B of chunk 1 (3B6) and a pair (3F7;0B1); phase 6 3B7 in full, then the switch to
# zero bubble (r even: after chunk 1's backward) makes chunk 0's an I (0I2); phase 7 W, I (0W2 0I3); phase 8 0W3.
DEEPSEEK = {
    (2, 4): [
        "0F0 1F2 0F1 1B2 (1F3;0B0)OVERLAP_F_B 1B3 0I1 0W1",
        "0F2 1F0 0F3 1B0 (1F1;0B2)OVERLAP_F_B 1B1 0I3 0W3",
    ],
    (4, 8): [
        (
            "0F0 0F1 0F2 3F4 3I4 3W4 3F5 (0F3;3B5)OVERLAP_F_B (3F6;0B0)OVERLAP_F_B 3B6 (3F7;0B1)OVERLAP_F_B "
            "3B7 0I2 0W2 0I3 0W3"
        ),
        (
            "1F0 2F4 1F1 2F5 1F2 2B4 (2F6;1B0)OVERLAP_F_B (1F3;2B5)OVERLAP_F_B (2F7;1B1)OVERLAP_F_B 2B6 1B2 "
            "2I7 1I3 2W7 1W3"
        ),
        (
            "1F4 2F0 1F5 2F1 1F6 2B0 (2F2;1B4)OVERLAP_F_B (1F7;2B1)OVERLAP_F_B (2F3;1B5)OVERLAP_F_B 2B2 1B6 "
            "2I3 1I7 2W3 1W7"
        ),
        (
            "0F4 0F5 0F6 3F0 3I0 3W0 3F1 (0F7;3B1)OVERLAP_F_B (3F2;0B4)OVERLAP_F_B 3B2 (3F3;0B5)OVERLAP_F_B "
            "3B3 0I6 0W6 0I7 0W7"
        ),
    ],
    (6, 12): [
        (
            "0F0 0F1 0F2 0F3 0F4 5F6 5I6 5W6 5F7 5I7 5W7 5F8 (0F5;5B8)OVERLAP_F_B (5F9;0B0)OVERLAP_F_B 5B9 "
            "(5F10;0B1)OVERLAP_F_B 5B10 (5F11;0B2)OVERLAP_F_B 5B11 0I3 0W3 0I4 0W4 0I5 0W5"
        ),
        (
            "1F0 1F1 1F2 4F6 1F3 4F7 4I6 4W6 4F8 (1F4;4B7)OVERLAP_F_B (4F9;1B0)OVERLAP_F_B "
            "(1F5;4B8)OVERLAP_F_B (4F10;1B1)OVERLAP_F_B 4B9 (4F11;1B2)OVERLAP_F_B 4B10 1B3 4I11 1I4 4W11 1I5 "
            "1W4 1W5"
        ),
        (
            "2F0 3F6 2F1 3F7 2F2 3F8 2F3 3B6 (3F9;2B0)OVERLAP_F_B (2F4;3B7)OVERLAP_F_B (3F10;2B1)OVERLAP_F_B "
            "(2F5;3B8)OVERLAP_F_B (3F11;2B2)OVERLAP_F_B 3B9 2B3 3B10 2I4 3I11 2I5 2W4 3W11 2W5"
        ),
        (
            "2F6 3F0 2F7 3F1 2F8 3F2 2F9 3B0 (3F3;2B6)OVERLAP_F_B (2F10;3B1)OVERLAP_F_B (3F4;2B7)OVERLAP_F_B "
            "(2F11;3B2)OVERLAP_F_B (3F5;2B8)OVERLAP_F_B 3B3 2B9 3B4 2I10 3I5 2I11 2W10 3W5 2W11"
        ),
        (
            "1F6 1F7 1F8 4F0 1F9 4F1 4I0 4W0 4F2 (1F10;4B1)OVERLAP_F_B (4F3;1B6)OVERLAP_F_B "
            "(1F11;4B2)OVERLAP_F_B (4F4;1B7)OVERLAP_F_B 4B3 (4F5;1B8)OVERLAP_F_B 4B4 1B9 4I5 1I10 4W5 1I11 "
            "1W10 1W11"
        ),
        (
            "0F6 0F7 0F8 0F9 0F10 5F0 5I0 5W0 5F1 5I1 5W1 5F2 (0F11;5B2)OVERLAP_F_B (5F3;0B6)OVERLAP_F_B 5B3 "
            "(5F4;0B7)OVERLAP_F_B 5B4 (5F5;0B8)OVERLAP_F_B 5B5 0I9 0W9 0I10 0W10 0I11 0W11"
        ),
    ],
}


def _orders(schedule):
    return [" ".join(map(str, device)) for device in schedule.actions]


# -- the order against DeepSeek's code ----------------------------------------------------------


@pytest.mark.parametrize("devices, microbatches", sorted(DEEPSEEK))
def test_dualpipe_is_deepseeks_order(devices, microbatches):
    assert _orders(load_strategy("dualpipe").plan(devices, microbatches)) == DEEPSEEK[(devices, microbatches)]


@given(half=st.integers(1, 5), extra=st.integers(0, 8))
def test_each_half_of_the_devices_runs_dualpipevs_order(half, extra):
    """DualPipeV is DualPipe cut in half (DualPipe README): device d of DualPipe, its chunk 0 renamed stage r and
    its chunk 1 stage 2h-1-r of a V on h = K/2 devices, the upward micro-batches renumbered from 0, runs
    DualPipeV's order for device r = min(d, K-1-d) with M/2 micro-batches.

    Both strategies now write their phases with ``compose.deepseek_phases``, each held to DeepSeek's own
    orders by literal tables (above, and tests/test_frontier.py); what this holds, over sizes beyond those
    tables, is DualPipe's side of the mapping: which stage is each device's chunk 0 and 1, and the upward
    micro-batches' numbers."""
    devices, microbatches = 2 * half, 2 * (2 * half + extra)
    dual = load_strategy("dualpipe").plan(devices, microbatches).actions
    v = load_strategy("dualpipev").plan(half, microbatches // 2).actions
    for d, actions in enumerate(dual):
        r = min(d, devices - 1 - d)
        chunk0 = d if d < half else devices - 1 - d  # the downward stage on the first half, the upward on the second

        def rename(a, r=r, chunk0=chunk0):
            stage = r if a.stage == chunk0 else 2 * half - 1 - r
            mb = a.microbatch - microbatches // 2 if a.microbatch >= microbatches // 2 else a.microbatch
            return f"{stage}{a.op}{mb}"

        text = [
            f"({rename(a.forward)};{rename(a.backward)})OVERLAP_F_B" if a.op == "OVERLAP_F_B" else rename(a)
            for a in actions
        ]
        assert text == [str(a) for a in v[r]]


@given(half=st.integers(1, 4), extra=st.integers(0, 4))
def test_placement_two_pipelines_fed_from_both_ends(half, extra):
    devices, microbatches = 2 * half, 2 * (2 * half + extra)
    schedule = load_strategy("dualpipe").plan(devices, microbatches)
    assert schedule.placement() == {s: tuple(sorted({s, devices - 1 - s})) for s in range(devices)}
    assert schedule.stages_per_device == 2 and schedule.num_stages == devices
    for d, actions in enumerate(schedule.actions):
        for a in (x for item in actions for x in (item if item.op == "OVERLAP_F_B" else (item,))):
            down = a.microbatch < microbatches // 2  # the first half goes down: stage s on device s
            assert d == (a.stage if down else devices - 1 - a.stage)


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "devices, microbatches, chunks, message",
    [
        (3, 8, 1, r"needs an even number of devices \(as DeepSeek's does\), not 3; use --devices 2 or 4"),
        (1, 8, 1, r"not 1; use --devices 2$"),
        (4, 6, 1, r"needs at least 2K = 8 micro-batches on 4 devices .*, not 6; use --microbatches 8 or more"),
        (4, 7, 1, r"not 7; use --microbatches 8 or more"),
        (4, 9, 1, r"needs an even number \(as DeepSeek's does\), not 9; use --microbatches 8 or 10"),
        (4, 8, 2, r"--chunks 2 cannot apply; use --chunks 1"),
    ],
)
def test_refusals_name_the_nearest_valid_value(devices, microbatches, chunks, message):
    with pytest.raises(ValueError, match=message):
        load_strategy("dualpipe").plan(devices, microbatches, chunks)


@pytest.mark.parametrize("flags", [["--devices", "3"], ["--microbatches", "9"]])
def test_the_cli_refuses_in_one_sentence(capsys, flags):
    assert main(["run", "--strategy", "dualpipe", "--no-compute", *flags]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "use --" in err and len(err.strip().splitlines()) == 1


# -- unit cost against DeepSeek's table -----------------------------------------------------------


@given(half=st.integers(1, 4), extra=st.integers(0, 7), overlap=st.sampled_from(["sum", "max"]))
def test_unit_cost_step_idle_and_memory_under_each_overlap_rule(half, extra, overlap):
    """DeepSeek's table on every device (sum) or on the devices that wait most (max), for every even K and even
    M >= 2K; the steps and the other devices' idle times regression-check forms found by simulation."""
    devices, microbatches = 2 * half, 2 * (2 * half + extra)
    m = _unit("dualpipe", devices, microbatches, overlap=overlap).metrics
    assert m.makespan == formulas.dualpipe_unit_makespan(devices, microbatches, overlap)
    assert m.bubble_fraction == pytest.approx(formulas.dualpipe_bubble(devices, microbatches, overlap), abs=1e-12)
    # a stage's F = I = W = 1, B = 2; F&B = F + B or max(F, B); the table's PP is the ranks, K
    pair = 3.0 if overlap == "sum" else 2.0
    table = formulas.dualpipe_table_bubble(devices // 2, forward=1.0, backward=2.0, weight=1.0, pair=pair)
    idle = [m.makespan - busy for busy in m.busy]
    if overlap == "sum":
        assert idle == [table] * devices == [devices - 2.0] * devices
        assert m.busy == [3.0 * microbatches] * devices
    else:
        assert idle[half - 1] == idle[half] == max(idle) == table == half - 1.0  # the middle devices
        assert idle == [min(min(d, devices - 1 - d) + 1, max(half - 1, 0)) for d in range(devices)]
    assert m.peak_inflight_microbatches == [devices + 1] * devices  # the table's activations: PP + 1
    assert m.period == m.makespan  # devices 0 and K-1 hold the first and the last stage: no gain back to back


def test_dualpipe_meets_deepseeks_table_and_figure():
    # The README's figure: 8 PP ranks, 20 micro-batches in two directions. Bubble (PP/2-1)(F&B + B - 3W) =
    # 3 (3 + 2 - 3) = 6 per device under the sum rule; activations PP + 1 = 9; parameters 2x.
    r = _unit("dualpipe", 8, 20)
    assert [r.metrics.makespan - busy for busy in r.metrics.busy] == [6.0] * 8
    assert r.metrics.peak_inflight_microbatches == [9] * 8
    one = _unit("1f1b", 8, 20)  # one stage per device, the same uniform stages
    params = [roles["parameters"] for roles in r.metrics.memory_by_role]
    single = [roles["parameters"] for roles in one.metrics.memory_by_role]
    assert params == [single[d] + single[7 - d] for d in range(8)] == [2 * single[0]] * 8


def test_each_stages_two_replicas_sum_their_gradients():
    # Stage s runs on devices s and K-1-s: a ring all-reduce of two replicas is one reduce-scatter and one
    # all-gather step, each replica sending once in each (Patarasuk and Yuan 2009): 4 sends per stage, all
    # between its two devices; the gradients summed over both directions equal the full-batch pass.
    for remat in ("never", "always", "except_last"):
        r = run(RunConfig(strategy="dualpipe", devices=4, microbatches=8, layers="5,7,6,9,4", batch=11, remat=remat))
        reduce = [t for t in r.trace.transfers if t.op == "allreduce"]
        assert sorted((t.stage, t.src, t.dst) for t in reduce) == sorted(
            (s, a, b) for s in range(4) for a, b in [(s, 3 - s), (3 - s, s)] * 2
        )
        assert r.grad_rel_err < 1e-12


def test_dualpipe_passes_check_strategy():
    # every remat mode, uneven micro-batches, decoders too, real NumPy: gradients equal the full-batch pass;
    # the draws keep the even K and M >= 2K DeepSeek's code asserts
    form = formulas.CLOSED_FORMS["dualpipe"]
    check_strategy(
        "dualpipe",
        bubble=True,
        inflight=form.inflight,
        steady=form.steady_bubble,
        max_devices=4,
        max_microbatches=12,
        microbatches_per_device=2,
        max_examples=15,
        runs=form.runs,
    )


def test_data_parallel_replicas_of_the_bidirectional_pipeline():
    # --data-parallel 2: two DualPipe pipelines side by side, so each stage has four replicas (two per pipeline),
    # all summed by one all-reduce; the gradients still equal the full-batch pass
    r = run(RunConfig(strategy="dualpipe", devices=2, microbatches=4, data_parallel=2, layers="5,7,6", batch=10))
    assert {s: len(devices) for s, devices in r.schedule.placement().items()} == {0: 4, 1: 4}
    assert r.grad_rel_err < 1e-12
