"""The built-in strategies: literal orders, closed-form bubbles and in-flight counts, exact gradients."""

import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipesched import RunConfig, Schedule, formulas, load_strategy, run
from pipesched.cli import main

REMAT = st.sampled_from(["never", "always", "except_last"])


def _unit(strategy, devices, microbatches, chunks=None, **extra):
    chunks_ = chunks or 1
    layers = f"3x{devices * chunks_ + 1}"
    return run(
        RunConfig(
            strategy=strategy,
            devices=devices,
            microbatches=microbatches,
            chunks=chunks,
            layers=layers,
            batch=max(microbatches, 1),
            cost="unit",
            **extra,
        )
    )


# -- literal orders for K=4, M=8 -------------------------------------------------


def test_1f1b_order_is_pipedream_flush():
    # Narayanan et al. 2021, figure 4 (top) extended to M=8: K-1-d warm-up forwards, then F/B, then drain.
    expected = [
        "0F0 0F1 0F2 0F3 0B0 0F4 0B1 0F5 0B2 0F6 0B3 0F7 0B4 0B5 0B6 0B7",
        "1F0 1F1 1F2 1B0 1F3 1B1 1F4 1B2 1F5 1B3 1F6 1B4 1F7 1B5 1B6 1B7",
        "2F0 2F1 2B0 2F2 2B1 2F3 2B2 2F4 2B3 2F5 2B4 2F6 2B5 2F7 2B6 2B7",
        "3F0 3B0 3F1 3B1 3F2 3B2 3F3 3B3 3F4 3B4 3F5 3B5 3F6 3B6 3F7 3B7",
    ]
    assert load_strategy("1f1b").plan(4, 8) == Schedule.parse(expected)


def _megatron_interleaved(devices, microbatches, chunks, rank, group=None):
    """Current Megatron-LM's forward_backward_pipelining_with_interleaving, its index arithmetic restated.

    ``group`` is Megatron's microbatch_group_size_per_vp_stage (default K), which
    PyTorch's ScheduleInterleaved1F1B sets to M // (M // K) when that divides M.
    """
    group = group or devices
    total = microbatches * chunks

    def chunk_id(k, forward):
        c = (k % (group * chunks)) // group
        return c if forward else chunks - 1 - c

    def mb_id(k):
        return (k // (group * chunks)) * group + k % group

    warmup = min((devices - rank - 1) * 2 + (chunks - 1) * group, total)
    order = [f"{chunk_id(k, True) * devices + rank}F{mb_id(k)}" for k in range(warmup)]
    for k in range(total - warmup):
        order.append(f"{chunk_id(k + warmup, True) * devices + rank}F{mb_id(k + warmup)}")
        order.append(f"{chunk_id(k, False) * devices + rank}B{mb_id(k)}")
    order += [f"{chunk_id(k, False) * devices + rank}B{mb_id(k)}" for k in range(total - warmup, total)]
    return " ".join(order)


def test_interleaved_order_is_megatrons():
    plan = load_strategy("interleaved").plan(4, 8, 2)
    # Device 0 written out: ten warm-up forwards (2*3 + 4), then F/B, then the drain.
    assert " ".join(map(str, plan.actions[0])) == (
        "0F0 0F1 0F2 0F3 4F0 4F1 4F2 4F3 0F4 0F5 0F6 4B0 0F7 4B1 4F4 4B2 4F5 4B3 4F6 0B0 4F7 0B1 "
        "0B2 0B3 4B4 4B5 4B6 4B7 0B4 0B5 0B6 0B7"
    )
    for d in range(4):
        assert " ".join(map(str, plan.actions[d])) == _megatron_interleaved(4, 8, 2, d)


@given(devices=st.integers(1, 5), rounds=st.integers(1, 3), chunks=st.integers(2, 3))
def test_interleaved_matches_megatron_whenever_k_divides_m(devices, rounds, chunks):
    plan = load_strategy("interleaved").plan(devices, devices * rounds, chunks)
    for d in range(devices):
        assert " ".join(map(str, plan.actions[d])) == _megatron_interleaved(devices, devices * rounds, chunks, d)


@given(devices=st.integers(2, 6), microbatches=st.integers(2, 30), chunks=st.integers(2, 3))
def test_interleaved_matches_pytorch_wherever_it_accepts_m(devices, microbatches, chunks):
    # PyTorch: rounds = max(1, M // K), group = M // rounds, and M must split into equal rounds.
    rounds = max(1, microbatches // devices)
    assume(microbatches >= devices and microbatches % rounds == 0)
    plan = load_strategy("interleaved").plan(devices, microbatches, chunks)
    for d in range(devices):
        expected = _megatron_interleaved(devices, microbatches, chunks, d, group=microbatches // rounds)
        assert " ".join(map(str, plan.actions[d])) == expected


def test_zb_h1_order_defers_w_by_the_device_index():
    # Qi et al. 2024, figure 3 (top): 1F1B's F and I order; W passes start d micro-batches late on device d.
    expected = [
        "0F0 0F1 0F2 0F3 0I0 0W0 0F4 0I1 0W1 0F5 0I2 0W2 0F6 0I3 0W3 0F7 0I4 0W4 0I5 0W5 0I6 0W6 0I7 0W7",
        "1F0 1F1 1F2 1I0 1F3 1I1 1W0 1F4 1I2 1W1 1F5 1I3 1W2 1F6 1I4 1W3 1F7 1I5 1W4 1I6 1W5 1I7 1W6 1W7",
        "2F0 2F1 2I0 2F2 2I1 2F3 2I2 2W0 2F4 2I3 2W1 2F5 2I4 2W2 2F6 2I5 2W3 2F7 2I6 2W4 2I7 2W5 2W6 2W7",
        "3F0 3I0 3F1 3I1 3F2 3I2 3F3 3I3 3W0 3F4 3I4 3W1 3F5 3I5 3W2 3F6 3I6 3W3 3F7 3I7 3W4 3W5 3W6 3W7",
    ]
    assert load_strategy("zb-h1").plan(4, 8) == Schedule.parse(expected)


def test_dp_order_gives_each_device_its_own_microbatches():
    expected = ["0F0 0B0 0F4 0B4", "0F1 0B1 0F5 0B5", "0F2 0B2 0F6 0B6", "0F3 0B3 0F7 0B7"]
    assert load_strategy("dp").plan(4, 8) == Schedule.parse(expected)


# -- closed forms under unit cost -----------------------------------------------


@given(devices=st.integers(1, 6), microbatches=st.integers(1, 16))
def test_1f1b_bubble_and_inflight(devices, microbatches):
    r = _unit("1f1b", devices, microbatches)
    assert r.metrics.makespan == 3 * (microbatches + devices - 1)
    assert r.metrics.bubble_fraction == pytest.approx(formulas.gpipe_bubble(devices, microbatches), abs=1e-12)
    assert (
        r.metrics.peak_inflight_microbatches
        == [formulas.one_f_one_b_peak_inflight(devices, microbatches, d) for d in range(devices)]
        == [min(devices - d, microbatches) for d in range(devices)]
    )


@given(devices=st.integers(1, 6), microbatches=st.integers(1, 16))
def test_gpipe_inflight_is_m(devices, microbatches):
    r = _unit("gpipe", devices, microbatches)
    assert r.metrics.peak_inflight_microbatches == [microbatches] * devices


@given(devices=st.integers(1, 6), microbatches=st.integers(1, 16))
def test_zb_h1_bubble_and_inflight(devices, microbatches):
    r = _unit("zb-h1", devices, microbatches)
    if microbatches >= devices:
        assert r.metrics.makespan == 3 * microbatches + devices - 1  # the paper's claim, exactly
        assert r.metrics.bubble_fraction == pytest.approx((devices - 1) / (3 * microbatches + devices - 1), abs=1e-12)
    assert r.metrics.makespan == formulas.zb_h1_unit_makespan(devices, microbatches)
    assert r.metrics.bubble_fraction == pytest.approx(r.bubble_formula, abs=1e-12)
    assert r.metrics.peak_inflight_microbatches == [min(devices, microbatches)] * devices


@given(devices=st.integers(1, 5), microbatches=st.integers(1, 14), chunks=st.integers(1, 3))
def test_interleaved_bubble_and_inflight(devices, microbatches, chunks):
    r = _unit("interleaved", devices, microbatches, chunks)
    if microbatches >= devices:
        assert r.bubble_formula == pytest.approx((devices - 1) / (chunks * microbatches + devices - 1))
        assert r.metrics.bubble_fraction == pytest.approx(r.bubble_formula, abs=1e-12)
    else:  # one short round: no closed form claimed, and never worse than 1F1B
        assert r.bubble_formula is None
        assert r.metrics.bubble_fraction <= formulas.gpipe_bubble(devices, microbatches) + 1e-12
    assert r.metrics.peak_inflight_microbatches == [
        formulas.interleaved_peak_inflight(devices, microbatches, d, chunks) for d in range(devices)
    ]
    if microbatches % devices == 0 and chunks > 1:  # Megatron's warm-up plus one, written out
        assert r.metrics.peak_inflight_microbatches == [
            min(2 * (devices - 1 - d) + (chunks - 1) * devices + 1, chunks * microbatches) for d in range(devices)
        ]


@given(devices=st.integers(1, 6), extra=st.integers(0, 12))
def test_dp_bubble(devices, extra):
    microbatches = devices + extra
    r = _unit("dp", devices, microbatches)
    assert r.metrics.bubble_fraction == pytest.approx(
        1 - microbatches / (devices * -(-microbatches // devices)), abs=1e-12
    )
    assert r.metrics.peak_inflight_microbatches == [1] * devices


# -- exact gradients for every strategy -----------------------------------------


@given(
    strategy=st.sampled_from(["gpipe", "1f1b", "interleaved", "zb-h1", "dp"]),
    devices=st.integers(1, 4),
    chunks=st.integers(1, 3),
    data=st.data(),
)
def test_every_strategy_gives_the_full_batch_gradients(strategy, devices, chunks, data):
    chunks = chunks if strategy == "interleaved" else 1
    stages = 1 if strategy == "dp" else devices * chunks
    widths = data.draw(st.lists(st.integers(1, 7), min_size=stages + 1, max_size=stages + 3))
    batch = data.draw(st.integers(devices if strategy == "dp" else 1, 12))
    microbatches = data.draw(st.integers(devices if strategy == "dp" else 1, batch))
    config = RunConfig(
        strategy=strategy,
        devices=devices,
        microbatches=microbatches,
        chunks=chunks,
        layers=",".join(map(str, widths)),
        batch=batch,
        remat=data.draw(REMAT),
        cost="unit",
    )
    result = run(config)
    assert result.grad_rel_err <= 1e-10


# -- costs with links ----------------------------------------------------------


@pytest.mark.parametrize("strategy", ["gpipe", "1f1b", "interleaved", "zb-h1", "dp"])
def test_flops_cost_with_free_links_and_equal_stages_meets_the_closed_form(strategy):
    # The flops model charges B = 2F and I = W = F like the unit model, so with
    # equal stages and free links the closed forms hold there too.
    r = run(
        RunConfig(
            strategy=strategy,
            devices=4,
            microbatches=8,
            layers="64x9",
            batch=16,
            compute=False,
            link_latency=0.0,
            link_bandwidth=1e30,
        )
    )
    assert r.metrics.bubble_fraction == pytest.approx(r.bubble_formula, abs=1e-12)


def test_dp_allreduce_grows_with_model_size_and_shrinks_with_bandwidth():
    def allreduce(width, bandwidth):
        r = run(
            RunConfig(
                strategy="dp",
                devices=4,
                microbatches=4,
                batch=8,
                layers=f"{width}x3",
                link_bandwidth=bandwidth,
                link_latency=1e-6,
            )
        )
        return r.metrics.makespan - max(s.end for s in r.trace.spans), r

    small, r_small = allreduce(64, 1e9)
    big, r_big = allreduce(256, 1e9)
    fast, _ = allreduce(256, 4e9)

    def params(w):
        return 2 * (w + 1) * w * 8

    assert small == pytest.approx(formulas.ring_allreduce_time(4, params(64), 1e9, 1e-6), rel=1e-9)
    assert big == pytest.approx(formulas.ring_allreduce_time(4, params(256), 1e9, 1e-6), rel=1e-9)
    assert small < big and fast < big
    # every device holds the whole model and its gradients
    assert all(p >= 2 * params(256) for p in r_big.metrics.peak_memory_bytes)


def test_pipeline_transfers_grow_with_activation_size():
    def moved(batch):
        r = run(RunConfig(strategy="1f1b", devices=4, microbatches=4, batch=batch, layers="64x5"))
        return sum(t.nbytes for t in r.trace.transfers), sum(t.end - t.start for t in r.trace.transfers)

    (bytes_small, time_small), (bytes_big, time_big) = moved(8), moved(64)
    # 3 boundaries, both directions, 4 micro-batches of batch/4 rows x 64 floats
    assert bytes_small == 2 * 3 * 8 * 64 * 8 and bytes_big == 8 * bytes_small
    assert time_big > time_small


def test_zb_h1_keeps_what_deferred_weight_gradients_need():
    # The last device holds 4 micro-batches for W instead of 1F1B's one: more bytes, honestly shown.
    z = _unit("zb-h1", 4, 8).metrics.peak_activation_bytes
    o = _unit("1f1b", 4, 8).metrics.peak_activation_bytes
    assert z[-1] > o[-1] and z[0] >= o[0]


def test_compare_prints_one_object_per_strategy(capsys):
    assert main(["compare", "--strategies", "gpipe,1f1b,interleaved,zb-h1,dp", "--cost", "unit", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in rows] == ["gpipe", "1f1b", "interleaved", "zb-h1", "dp"]
    assert [r["chunks"] for r in rows] == [1, 1, 2, 1, 1]
    makespan = {r["strategy"]: r["makespan"] for r in rows}
    assert makespan["zb-h1"] < makespan["interleaved"] < makespan["1f1b"] == makespan["gpipe"]
    assert all(r["grad_rel_err"] < 1e-12 for r in rows)


def test_compare_chunks_go_only_to_strategies_that_take_them(capsys):
    assert main(["compare", "--strategies", "gpipe,interleaved", "--chunks", "3", "--layers", "8x13", "--json"]) == 0
    assert [r["chunks"] for r in json.loads(capsys.readouterr().out)] == [1, 3]


def test_compare_table(capsys):
    assert main(["compare", "--cost", "unit"]) == 0
    out = capsys.readouterr().out
    for name in ["gpipe", "1f1b", "interleaved", "zb-h1", "dp"]:
        assert any(line.startswith(name + " ") for line in out.splitlines())


def test_dp_with_fewer_microbatches_than_devices_is_refused(capsys):
    assert main(["run", "--strategy", "dp", "--microbatches", "2"]) == 2
    assert "--microbatches 2 leaves devices idle; use at least 4 micro-batches" in capsys.readouterr().err
