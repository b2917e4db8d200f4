"""The SimPy engine: exact gradients, exact unit-cost timing, memory, links, replicas, deadlocks."""

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipesched import DeadlockError, RunConfig, Schedule, formulas, run
from pipesched.compute import NumpyWorkload, ShapeWorkload
from pipesched.cost import FlopsCost, UnitCost
from pipesched.engine import simulate
from pipesched.microbatch import split
from pipesched.model import Model, full_batch_gradients, make_data, saved_widths
from pipesched.partition import uniform
from pipesched.pipeline import BUILT_INS
from pipesched.trace import to_chrome

REMAT = st.sampled_from(["never", "always", "except_last"])


@st.composite
def configs(draw):
    """A small random model and a GPipe configuration on it, uneven splits included."""
    widths = draw(st.lists(st.integers(1, 9), min_size=2, max_size=8))
    layers = len(widths) - 1
    devices = draw(st.integers(1, min(layers, 5)))
    batch = draw(st.integers(1, 13))
    microbatches = draw(st.integers(1, batch))
    counts = draw(st.lists(st.integers(1, 3), min_size=devices, max_size=devices))
    partition = ",".join(map(str, counts)) if sum(counts) == layers else "uniform"
    return RunConfig(
        layers=",".join(map(str, widths)),
        batch=batch,
        microbatches=microbatches,
        devices=devices,
        partition=partition,
        remat=draw(REMAT),
        loss=draw(st.sampled_from(["cross_entropy", "mse"])),
        seed=draw(st.integers(0, 3)),
    )


@given(configs())
def test_gradients_equal_one_unpartitioned_full_batch_pass(config):
    result = run(config)
    widths = [int(w) for w in config.layers.split(",")]
    model = Model.from_sizes(widths, seed=config.seed)
    x, target = make_data(widths, config.batch, config.loss, seed=config.seed)
    loss, reference = full_batch_gradients(model, x, target, config.loss)
    assert result.loss == pytest.approx(loss, rel=1e-12, abs=1e-15)
    for (gw, gb), (rw, rb) in zip(result.grads, reference):
        for g, r in ((gw, rw), (gb, rb)):
            assert np.linalg.norm(g - r) <= 1e-10 * max(np.linalg.norm(r), 1e-300) + 1e-300


@given(devices=st.integers(1, 8), microbatches=st.integers(1, 24))
def test_unit_cost_bubble_is_exactly_the_gpipe_formula(devices, microbatches):
    config = RunConfig(layers="4x9", batch=24, devices=devices, microbatches=microbatches, cost="unit")
    m = run(config).metrics
    assert m.makespan == 3 * (microbatches + devices - 1)  # integer times: exact
    assert m.busy == [3.0 * microbatches] * devices
    assert m.bubble_fraction == (devices - 1) / (devices - 1 + microbatches)  # to the last bit


@given(devices=st.integers(1, 6), microbatches=st.integers(1, 12), remat=REMAT)
def test_remat_recompute_time_matches_the_flow_shop_formula(devices, microbatches, remat):
    config = RunConfig(
        layers="4x8", batch=12, devices=devices, microbatches=microbatches, cost="unit", remat=remat, compute=False
    )
    m = run(config).metrics
    assert m.makespan == formulas.gpipe_unit_makespan(devices, microbatches, remat)
    assert m.bubble_fraction == pytest.approx(formulas.gpipe_unit_bubble(devices, microbatches, remat), abs=1e-12)


def test_unit_cost_start_times_match_the_gpipe_diagram():
    trace = run(RunConfig(layers="4x4", batch=4, devices=3, microbatches=4, cost="unit")).trace
    starts = {s.name: s.start for s in trace.spans}
    # Forward wave: stage s starts micro-batch m at s + m. Backward (B=2), last
    # micro-batch first, from the last stage down: written out from the figure.
    expected = {
        "0F0": 0,
        "0F1": 1,
        "0F2": 2,
        "0F3": 3,
        "1F0": 1,
        "1F1": 2,
        "1F2": 3,
        "1F3": 4,
        "2F0": 2,
        "2F1": 3,
        "2F2": 4,
        "2F3": 5,
        "2B3": 6,
        "2B2": 8,
        "2B1": 10,
        "2B0": 12,
        "1B3": 8,
        "1B2": 10,
        "1B1": 12,
        "1B0": 14,
        "0B3": 10,
        "0B2": 12,
        "0B1": 14,
        "0B0": 16,
    }
    assert starts == expected


def _workloads(widths, devices, microbatches, batch):
    model = Model.from_sizes(widths, seed=0)
    stages = uniform(len(widths) - 1, devices)
    slices = split(batch, microbatches)
    x, target = make_data(widths, batch, "cross_entropy")
    real = NumpyWorkload(model, stages, x, target, "cross_entropy", slices)
    shapes = ShapeWorkload(model.layers, stages, [s.stop - s.start for s in slices])
    return model, stages, slices, real, shapes


@given(
    strategy=st.sampled_from(BUILT_INS),
    widths=st.lists(st.integers(1, 9), min_size=7, max_size=9),
    devices=st.integers(1, 3),
    batch=st.integers(6, 11),
    data=st.data(),
)
def test_memory_from_real_arrays_equals_the_shape_count(strategy, widths, devices, batch, data):
    """The byte count from shapes alone (--no-compute) matches the real arrays: B, I/W and pair paths alike."""
    fewest = {"dp": devices, "dualpipev": 2 * devices, "dualpipe": 2 * devices}.get(strategy, 1)
    microbatches = data.draw(st.integers(fewest, batch))
    assume(formulas.CLOSED_FORMS[strategy].runs(devices, microbatches, 1))  # DualPipe, Chimera: K even; rounds
    base = RunConfig(
        strategy=strategy,
        devices=devices,
        microbatches=microbatches,
        batch=batch,
        layers=",".join(map(str, widths)),
        remat=data.draw(REMAT),
        cost="flops",
        link_bandwidth=data.draw(st.sampled_from([1e3, 1e9])),
    )
    real = run(base).trace.memory
    shapes = run(replace(base, compute=False)).trace.memory
    assert real == shapes


def test_an_arrived_input_counts_while_it_waits():
    # Stage 1 is 100x heavier than stage 0, so micro-batch 1's input lands on
    # device 1 while 1F0 still runs: it is held there, and counted.
    config = RunConfig(
        layers="4,4,64,64",
        batch=2,
        devices=2,
        microbatches=2,
        partition="1,2",
        link_bandwidth=1e12,
        link_latency=0.0,
        compute=False,
    )
    trace = run(config).trace
    params = (65 * 64 + 5 * 64) * 8
    kept_f0 = 1 * (4 + 64 + 64) * 8  # one row: stage input, hidden, output (the last stage keeps it)
    arrived = 1 * 4 * 8
    f0 = next(s for s in trace.spans if s.name == "1F0")
    during = [m for m in trace.memory[1] if f0.start < m.time < f0.end]
    assert during and during[-1].total_bytes == params + kept_f0 + arrived
    assert during[-1].activation_bytes == kept_f0


# The whole memory timeline of one small case, derived by hand event by event. Model 3 -> 5 (ReLU) -> 2,
# one layer per stage, batch 3 in micro-batches of 2 and 1 rows, K=2, unit cost (F = I = W = 1, B = 2,
# transfers land the instant they leave, so a sender never holds a link buffer). float64: 8 bytes.
#   parameters: stage 0 (3+1)*5*8 = 160, stage 1 (5+1)*2*8 = 96; the gradient buffer of the same size
#     appears with the stage's first weight gradient (B or W) and stays.
#   activations of micro-batch m with r rows: stage 0 keeps its input and its output (the ReLU mask),
#     (3+5)*8*r = 64r; stage 1 its input and its output (the loss's input), (5+2)*8*r = 56r. The input
#     that arrived over the link is the same array as the kept one, so it counts once.
#   after an I, what W needs (deferred): the layer input and the pre-activation gradient, (3+5)*8*r = 64r
#     on stage 0, (5+2)*8*r = 56r on stage 1; while I's held activations live, the shared input counts
#     among them, so deferred shows only the gradient (stage 0: 5*8*r = 40r, stage 1: 2*8*r = 16r).
#   buffers: an arrived input or gradient waiting to be used, 5*8*r = 40r either way across the cut.
# So with r = 2 (micro-batch 0) and r = 1 (micro-batch 1): 64r = 128 | 64, 56r = 112 | 56, 40r = 80 | 40,
# 16r = 32 | 16. One sample per instant: the state after everything that happens at that time.
# Columns: time, parameters, gradients, activations, deferred, buffers.
GPIPE_TIMELINE = [
    [  # device 0: 0F0 0F1 0B1 0B0
        (0, 160, 0, 128, 0, 0),  # 0F0 keeps x0 and its output (128)
        (1, 160, 0, 192, 0, 0),  # 0F0 sent its output; 0F1 keeps 64 more
        # t=2: 0F1's output leaves at once; 0B1 waits for its gradient: nothing changes
        (5, 160, 160, 192, 0, 40),  # 1B1's gradient (40) arrives; 0B1 starts, its gradient buffer appears
        (7, 160, 160, 128, 0, 80),  # 0B1 frees micro-batch 1 (64) and the used gradient (40); 1B0's arrives
        (9, 160, 160, 0, 0, 0),  # 0B0 frees micro-batch 0 and its gradient
    ],
    [  # device 1: 1F0 1F1 1B1 1B0
        (0, 96, 0, 0, 0, 0),
        (1, 96, 0, 112, 0, 0),  # micro-batch 0's input arrives and 1F0 keeps it at once, with its output
        (2, 96, 0, 168, 0, 0),  # the same for micro-batch 1 (56)
        (3, 96, 96, 168, 0, 0),  # 1B1 starts: the gradient buffer
        (5, 96, 96, 112, 0, 0),  # 1B1 frees micro-batch 1; 1B0 starts
        (7, 96, 96, 0, 0, 0),  # 1B0 frees micro-batch 0
    ],
]
ZB_H1_TIMELINE = [
    [  # device 0: 0F0 0F1 0I0 0W0 0I1 0W1
        (0, 160, 0, 128, 0, 0),
        (1, 160, 0, 192, 0, 0),
        (3, 160, 0, 192, 80, 80),  # 1I0's gradient (80) arrives; 0I0 starts and makes its own (80), kept for W
        (4, 160, 160, 64, 128, 0),  # 0I0 ends: its output and the used gradient go, x0 + gradient (128) wait
        # for W; 0W0 starts: the gradient buffer
        (5, 160, 160, 64, 40, 40),  # 0W0 frees its 128; 1I1's gradient (40) arrives; 0I1 makes its own (40)
        (6, 160, 160, 0, 64, 0),  # 0I1 ends: x1 + gradient (64) wait for 0W1
        (7, 160, 160, 0, 0, 0),
    ],
    [  # device 1: 1F0 1I0 1F1 1I1 1W0 1W1
        (0, 96, 0, 0, 0, 0),
        (1, 96, 0, 112, 0, 0),
        (2, 96, 0, 112, 32, 40),  # 1I0 makes its gradient (32); micro-batch 1's input (40) arrives and waits
        (3, 96, 0, 56, 112, 0),  # 1I0 ends: input + gradient (112) wait for W; 1F1 keeps the waiting input
        (4, 96, 0, 56, 128, 0),  # 1I1 starts and makes its gradient (16)
        (5, 96, 96, 0, 168, 0),  # 1I1 ends: input + gradient (56) more wait; 1W0 starts: the gradient buffer
        (6, 96, 96, 0, 56, 0),  # 1W0 frees micro-batch 0's 112
        (7, 96, 96, 0, 0, 0),
    ],
]


def _without_state(sample):
    """A sample's columns as the tables above write them: every role but the optimizer's."""
    return (sample.time, sample.params, sample.grads, sample.activations, sample.deferred, sample.buffers)


@pytest.mark.parametrize("strategy, timeline", [("gpipe", GPIPE_TIMELINE), ("zb-h1", ZB_H1_TIMELINE)])
@pytest.mark.parametrize("compute", [True, False])
def test_the_memory_timeline_of_a_small_case_is_the_hand_derived_one(strategy, timeline, compute):
    result = run(
        RunConfig(strategy=strategy, layers="3,5,2", batch=3, devices=2, microbatches=2, cost="unit", compute=compute)
    )
    assert [[_without_state(sample) for sample in device] for device in result.trace.memory] == timeline
    assert all(sample.optimizer == 0 for device in result.trace.memory for sample in device)  # SGD keeps none
    assert result.metrics.peak_memory_bytes == [max(sum(s[1:]) for s in device) for device in timeline]
    assert result.metrics.peak_activation_bytes == [max(s[3] + s[4] for s in device) for device in timeline]


@pytest.mark.parametrize("strategy, timeline", [("gpipe", GPIPE_TIMELINE), ("zb-h1", ZB_H1_TIMELINE)])
@pytest.mark.parametrize("compute", [True, False])
def test_the_hand_derived_timeline_in_bf16_with_adam(strategy, timeline, compute):
    # Every byte above is elements x 8 (float64); in bf16 each is elements x 2, a quarter, at the same times.
    # Mixed-precision Adam adds 12 bytes per parameter from the start (fp32 master weights and two fp32
    # moments, ZeRO section 3.1): stage 0's (3+1)*5 = 20 parameters 240 bytes, stage 1's (5+1)*2 = 12, 144.
    result = run(
        RunConfig(
            strategy=strategy,
            layers="3,5,2",
            batch=3,
            devices=2,
            microbatches=2,
            cost="unit",
            compute=compute,
            dtype="bf16",
            optimizer="adam",
        )
    )
    quarter = [[(s[0], *(b // 4 for b in s[1:])) for s in device] for device in timeline]
    assert [[_without_state(sample) for sample in device] for device in result.trace.memory] == quarter
    assert [{sample.optimizer for sample in device} for device in result.trace.memory] == [{240}, {144}]
    assert result.metrics.peak_memory_bytes == [
        max(sum(s[1:]) for s in quarter[0]) + 240,
        max(sum(s[1:]) for s in quarter[1]) + 144,
    ]


def test_an_array_shared_by_two_stages_on_one_device_counts_once():
    # Interleaved on one device: stage 0's output is stage 1's input, one array.
    config = dict(layers="5,6,7,8,3", batch=4, devices=1, microbatches=1, cost="unit")
    one_stage = run(RunConfig(strategy="gpipe", **config)).metrics.peak_activation_bytes
    two_chunks = run(RunConfig(strategy="interleaved", chunks=2, **config)).metrics.peak_activation_bytes
    assert two_chunks == one_stage == [4 * (5 + 6 + 7 + 8 + 3) * 8]


@given(devices=st.integers(1, 4), batch=st.integers(1, 12), data=st.data())
def test_peak_activations_follow_from_the_layer_sizes(devices, batch, data):
    """GPipe under each remat mode against the byte counts derived by hand."""
    widths = [6, 5, 7, 4, 3]
    microbatches = data.draw(st.integers(1, batch))
    config = dict(
        layers=",".join(map(str, widths)), batch=batch, devices=devices, microbatches=microbatches, cost="unit"
    )
    never = run(RunConfig(**config, remat="never")).metrics.peak_activation_bytes
    always = run(RunConfig(**config, remat="always")).metrics.peak_activation_bytes
    except_last = run(RunConfig(**config, remat="except_last")).metrics.peak_activation_bytes
    model = Model.from_sizes(widths)
    rows = [s.stop - s.start for s in split(batch, microbatches)]
    for d, stage in enumerate(uniform(len(model.layers), devices)):
        layers = [model.layers[i] for i in stage]
        full = saved_widths(layers, keep_output=layers[-1].relu or d == devices - 1)
        # GPipe holds every micro-batch's activations when the forwards end.
        assert never[d] == batch * full * 8
        # Remat: inputs of the micro-batches not yet done, plus one recomputed in full.
        inputs = layers[0].in_features
        expect = max(sum(rows[: m + 1]) * inputs + rows[m] * (full - inputs) for m in range(microbatches))
        assert always[d] == expect * 8
        assert always[d] <= never[d]
        # except_last: the last micro-batch (backward first) stays whole; the rest keep inputs
        last = microbatches - 1
        held = sum(rows[:last]) * inputs + rows[last] * full
        expect = max([held] + [sum(rows[: m + 1]) * inputs + rows[m] * (full - inputs) for m in range(last)])
        assert except_last[d] == expect * 8


def test_transfers_on_one_link_queue_and_overlap_compute():
    model, stages, slices, _, shapes = _workloads([64, 64, 64], 2, 3, 3)
    from pipesched.strategies.gpipe import GPipe

    slow = FlopsCost(device_flops=1e9, link_bandwidth=1e3, link_latency=0.0)  # sends far slower than compute
    trace = simulate(GPipe().plan(2, 3), shapes, slow, "never")
    forward = sorted((t for t in trace.transfers if t.src == 0), key=lambda t: t.start)
    assert len(forward) == 3
    for first, second in zip(forward, forward[1:]):
        assert second.start == pytest.approx(first.end)  # queued behind the previous send
    spans = {s.name: s for s in trace.spans}
    assert spans["0F1"].start < forward[0].end  # device 0 computed while its first send was in flight
    assert spans["1F0"].start == pytest.approx(forward[0].end)  # an action waits for its input


@pytest.mark.parametrize("replicas", [2, 3])
def test_replicated_stage_all_reduces_its_gradients_over_a_ring(replicas):
    widths = [6, 8, 4]
    batch = 2 * replicas
    model = Model.from_sizes(widths)
    x, target = make_data(widths, batch, "cross_entropy")
    rows = [[f"0F{m}", f"0B{m}"] for m in range(batch)]
    per_device = [[a for m in range(d, batch, replicas) for a in rows[m]] for d in range(replicas)]
    schedule = Schedule(per_device)
    work = NumpyWorkload(model, (range(0, 2),), x, target, "cross_entropy", split(batch, batch))
    cost = FlopsCost(device_flops=1e12, link_bandwidth=1e8, link_latency=1e-6)
    trace = simulate(schedule, work, cost, "never")
    _, reference = full_batch_gradients(model, x, target, "cross_entropy")
    for (gw, gb), (rw, rb) in zip(work.model_gradients(), reference):
        np.testing.assert_allclose(gw, rw, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gb, rb, rtol=1e-12, atol=1e-15)
    compute_end = max(s.end for s in trace.spans)
    param_bytes = sum(layer.param_count for layer in model.layers) * 8
    chunk = -(-param_bytes // replicas)
    # Ring all-reduce: 2(R-1) steps, each moving one 1/R chunk over every link at once.
    assert trace.makespan - compute_end == pytest.approx(2 * (replicas - 1) * (1e-6 + chunk / 1e8), rel=1e-9)
    assert len(trace.transfers) == replicas * 2 * (replicas - 1)


def test_a_deadlocking_schedule_is_detected_and_explained():
    # Device 0 waits at 0B0 for stage 1's gradient; device 1 first wants 1F1,
    # whose input 0F1 comes only after 0B0: neither can move.
    schedule = Schedule.parse(["0F0 0B0 0F1 0B1", "1F1 1F0 1B0 1B1"])
    _, _, _, real, _ = _workloads([4, 4, 4], 2, 2, 2)
    with pytest.raises(DeadlockError) as err:
        simulate(schedule, real, UnitCost(), "never")
    message = str(err.value)
    assert "device 0 waits at 0B0 for the gradient of micro-batch 0 from stage 1's backward (on device 1)" in message
    assert "device 1 waits at 1F1 for the activation of micro-batch 1 from 0F1 (on device 0)" in message


def test_chrome_trace_has_a_track_per_device_and_link():
    trace = run(RunConfig(devices=3, microbatches=4, layers="8x4", batch=8)).trace
    chrome = json.loads(json.dumps(to_chrome(trace)))
    names = {e["args"]["name"] for e in chrome["traceEvents"] if e.get("name") == "thread_name"}
    assert {"device 0", "device 1", "device 2", "link 0->1", "link 1->2", "link 1->0", "link 2->1"} <= names
    spans = [e for e in chrome["traceEvents"] if e["ph"] == "X" and e["pid"] == 0]
    assert sorted(e["name"] for e in spans) == sorted(f"{s}{op}{m}" for s in range(3) for op in "FB" for m in range(4))
    assert (
        len([e for e in chrome["traceEvents"] if e["ph"] == "X" and e["pid"] == 1]) == len(trace.transfers) == 2 * 2 * 4
    )
