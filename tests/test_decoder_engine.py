"""A decoder through the engine: every schedule's summed micro-batch gradients equal one full-batch pass.

The independent reference is ``full_batch_gradients``: one unpartitioned
forward and backward of the whole batch (itself held to finite differences
in test_decoder_model.py). The engine sees the decoder only through the
Workload protocol, as it sees the MLP.
"""

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipesched import available_strategies, load_strategy, make_plan
from pipesched.cost import UnitCost
from pipesched.decoder import DecoderConfig, DecoderModel, make_tokens
from pipesched.decoder.workload import DecoderWorkload, full_batch_gradients, grad_rel_err
from pipesched.engine import simulate
from pipesched.formulas import CLOSED_FORMS, LOOPED
from pipesched.microbatch import split
from pipesched.partition import uniform

STRATEGIES = sorted(available_strategies())  # every built-in
REMAT = ["never", "always", "except_last"]


def _chunks(strategy):
    """Two stages per device for the looped schedules and the V ones, else what the strategy plans."""
    return 2 if strategy in LOOPED else getattr(load_strategy(strategy), "default_chunks", 1)


def _config(blocks, heads, kv_heads, swiglu, tied):
    """A tiny GPT-style (learned positions, LayerNorm) or LLaMA-style (RoPE, RMSNorm, SwiGLU) decoder."""
    llama = dict(activation="silu", position="rotary", norm="rmsnorm", bias=False)
    return DecoderConfig(
        hidden_size=16, num_layers=blocks, num_heads=heads, num_kv_heads=kv_heads, intermediate_size=24,
        vocab_size=32, max_positions=16, tie_embeddings=tied, **(llama if swiglu else {}),
    )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    devices=st.integers(1, 3),
    batch=st.integers(2, 7),
    remat=st.sampled_from(REMAT),
    gqa=st.booleans(),
    swiglu=st.booleans(),
    tied=st.booleans(),
    data=st.data(),
)
def test_every_schedule_gives_the_full_batch_gradients(strategy, devices, batch, remat, gqa, swiglu, tied, data):
    chunks = _chunks(strategy)
    least = 2 * devices if strategy in ("dualpipev", "dualpipe") else devices if strategy == "dp" else 1
    microbatches = data.draw(st.integers(least, max(least, batch)))
    assume(CLOSED_FORMS[strategy].runs(devices, microbatches, chunks))  # DualPipe, Chimera: K even; rounds
    batch = max(batch, microbatches)  # uneven micro-batches whenever M does not divide the batch
    schedule = make_plan(load_strategy(strategy), devices, microbatches, chunks)
    blocks = data.draw(st.integers(max(1, schedule.num_stages - 3), schedule.num_stages + 1))  # every stage a layer
    config = _config(blocks, heads=4, kv_heads=2 if gqa else 4, swiglu=swiglu, tied=tied)
    model = DecoderModel.from_config(config, seed=1)
    layers = len(model.layers)  # embedding, blocks, final norm, output layer
    inputs, labels = make_tokens(config, batch=batch, seq_len=5, seed=2)
    work = DecoderWorkload(model, uniform(layers, schedule.num_stages), inputs, labels, split(batch, microbatches))
    simulate(schedule, work, UnitCost(), remat=remat)
    loss, reference = full_batch_gradients(model, inputs, labels)
    assert grad_rel_err(work.model_gradients(), reference) < 1e-10
    assert work.loss == pytest.approx(loss, rel=1e-12)


def test_tied_gradients_are_accumulated_apart_and_summed_once():
    # Embedding on device 0, output layer on device 1: each device holds its own gradient of the
    # shared matrix, as two GPUs would; the model's gradient is their sum (Megatron-LM's embedding
    # group all-reduce), which is the full-batch gradient of the one matrix.
    config = _config(2, heads=4, kv_heads=4, swiglu=False, tied=True)
    model = DecoderModel.from_config(config, seed=3)
    inputs, labels = make_tokens(config, batch=4, seq_len=6, seed=4)
    last = len(model.layers) - 1
    stages = (range(0, 2), range(2, last + 1))
    work = DecoderWorkload(model, stages, inputs, labels, split(4, 2))
    simulate(make_plan(load_strategy("1f1b"), 2, 2), work, UnitCost())
    embedding = work.grads[(0, 0)][0]["token"]
    output = work.grads[(1, 1)][-1]["weight"]
    _, reference = full_batch_gradients(model, inputs, labels)
    assert float(abs(embedding).sum()) > 0 and float(abs(output).sum()) > 0
    assert grad_rel_err([{"m": embedding + output}], [{"m": reference[0]["token"]}]) < 1e-12
    assert grad_rel_err([{"m": embedding}], [{"m": reference[0]["token"]}]) > 1e-3  # one side alone is not it


class _SlowLinks(UnitCost):
    """Unit compute, and every message occupies its link for one unit (no latency), as in test_p2p.py."""

    def transfer_times(self, nbytes, src=0, dst=1, boundary=None):
        return 1.0, 0.0


@pytest.mark.parametrize("devices", [2, 3])
def test_a_tied_pair_is_all_reduced_between_the_first_and_last_device(devices):
    # Megatron-LM's embedding group: the devices of stage 0 and the last stage sum the tied matrix's
    # two gradients with a ring all-reduce, R = 2 members, so 2(R-1) = 2 sends each of
    # ceil(V*h*itemsize / R) = 32*16*2 / 2 = 512 bytes in bf16. Nothing else is sent for it.
    config = _config(devices, heads=4, kv_heads=4, swiglu=False, tied=True)
    untied = _config(devices, heads=4, kv_heads=4, swiglu=False, tied=False)
    schedule = make_plan(load_strategy("1f1b"), devices, 4)
    traces = {}
    for c in (config, untied):
        model = DecoderModel.from_config(c, seed=5)
        inputs, labels = make_tokens(c, batch=4, seq_len=5, seed=6)
        work = DecoderWorkload(model, uniform(len(model.layers), devices), inputs, labels, split(4, 4), itemsize=2)
        traces[c.tie_embeddings] = simulate(schedule, work, _SlowLinks())
        _, reference = full_batch_gradients(model, inputs, labels)
        assert grad_rel_err(work.model_gradients(), reference) < 1e-10
    tied, plain = traces[True], traces[False]
    ties = [t for t in tied.transfers if t.op == "tie"]
    assert sorted((t.src, t.dst, t.nbytes) for t in ties) == sorted(
        [(0, devices - 1, 512)] * 2 + [(devices - 1, 0, 512)] * 2
    )
    assert not any(t.op == "tie" for t in plain.transfers)
    assert [t for t in tied.transfers if t.op != "tie"] == list(plain.transfers)  # the step itself is unchanged
    # 1F1B ends on device 0 (its last B, at the untied makespan T); the last device finished earlier,
    # so its first chunk is already there. Device 0's two sends queue on its link, T to T+1 and T+1
    # to T+2; the last device sends its second chunk when device 0's first lands, T+1 to T+2.
    assert tied.makespan == plain.makespan + 2
    # The chunks are link buffers on device 0: at T the chunk that came is summed in and freed, and
    # its own two are held (one on the wire, one queued): 1024 bytes; at T+1 the first has left; at
    # T+2 the second has left and the last chunk to come is summed in as it lands.
    last = max(s.end for s in tied.spans if s.device == 0)
    assert last == plain.makespan
    assert [(m.time - last, m.buffers) for m in tied.memory[0] if m.time >= last] == [(0, 1024), (1, 512), (2, 0)]


def test_the_tied_exchange_costs_a_two_member_ring_all_reduce_under_flops():
    # Slow devices (1 MFLOP/s) so the last device is done long before device 0, whose last B ends the
    # untied step: then the tie adds exactly one ring all-reduce of V*h*itemsize bytes over R = 2,
    # 2(R-1) * (latency + ceil(bytes/R) / bandwidth) (Patarasuk and Yuan 2009; formulas.ring_allreduce_time).
    from pipesched.cost import FlopsCost
    from pipesched.formulas import ring_allreduce_time

    cost = FlopsCost(device_flops=1e6, link_bandwidth=1e5, link_latency=1e-3)
    makespans = {}
    for tied in (True, False):
        config = _config(2, heads=4, kv_heads=2, swiglu=True, tied=tied)
        model = DecoderModel.from_config(config, seed=0)
        inputs, labels = make_tokens(config, batch=2, seq_len=4, seed=0)
        work = DecoderWorkload(model, uniform(len(model.layers), 2), inputs, labels, split(2, 2), itemsize=2)
        makespans[tied] = simulate(make_plan(load_strategy("1f1b"), 2, 2), work, cost).makespan
    extra = ring_allreduce_time(2, 32 * 16 * 2, bandwidth=1e5, latency=1e-3)  # 2 * (1 ms + 512 B / 100 kB/s)
    assert extra == pytest.approx(2 * (1e-3 + 512 / 1e5), rel=1e-12)
    assert makespans[True] - makespans[False] == pytest.approx(extra, rel=1e-9)


@pytest.mark.parametrize("strategy, stages", [("zb-v", 4), ("dp", 1)])
def test_a_device_holding_both_tied_stages_sends_nothing_for_them(strategy, stages):
    # ZB-V puts stage 0 and the last stage on device 0; data parallelism holds the whole model (one
    # stage) on each device, whose own all-reduce sums it: the two gradients meet on a device.
    config = _config(3, heads=4, kv_heads=4, swiglu=False, tied=True)
    model = DecoderModel.from_config(config, seed=0)
    inputs, labels = make_tokens(config, batch=4, seq_len=5, seed=0)
    schedule = make_plan(load_strategy(strategy), 2, 4, 2 if strategy == "zb-v" else 1)
    work = DecoderWorkload(model, uniform(len(model.layers), stages), inputs, labels, split(4, 4))
    trace = simulate(schedule, work, _SlowLinks())
    assert work.ties == ((0, stages - 1, 32 * 16 * 8),) and not any(t.op == "tie" for t in trace.transfers)
    _, reference = full_batch_gradients(model, inputs, labels)
    assert grad_rel_err(work.model_gradients(), reference) < 1e-10


def test_the_cost_model_charges_each_layers_forward_flops():
    # Under the flops model a stage's F takes its layers' forward FLOPs / device FLOP/s; B twice that.
    from pipesched.cost import FlopsCost

    config = _config(2, heads=4, kv_heads=4, swiglu=False, tied=False)
    model = DecoderModel.from_config(config, seed=0)
    inputs, labels = make_tokens(config, batch=2, seq_len=8, seed=0)
    work = DecoderWorkload(model, (range(0, len(model.layers)),), inputs, labels, [slice(0, 2)])
    trace = simulate(make_plan(load_strategy("gpipe"), 1, 1), work, FlopsCost(device_flops=1e9))
    flops = sum(layer.flops(2, 8).forward for layer in model.layers)
    forward = next(s for s in trace.spans if s.op == "F")
    backward = next(s for s in trace.spans if s.op == "B")
    assert forward.end - forward.start == pytest.approx(flops / 1e9, rel=1e-12)
    assert backward.end - backward.start == pytest.approx(2 * flops / 1e9, rel=1e-12)


@pytest.mark.parametrize("swiglu", [False, True])
def test_each_layers_reused_and_output_bytes_are_its_real_arrays(swiglu):
    # Held to the arrays themselves: what W reuses is what backward_input passes on of the very
    # arrays forward kept (by identity), and the output is the array forward returns.
    import numpy as np

    config = _config(1, heads=4, kv_heads=2, swiglu=swiglu, tied=False)
    model = DecoderModel.from_config(config, seed=0)
    x, _ = make_tokens(config, batch=3, seq_len=5, seed=0)
    for layer, params in zip(model.layers, model.params):
        y, kept = layer.forward(params, x)
        _, deferred = layer.backward_input(params, kept, np.ones_like(y))
        kept_ids = {id(a) for a in kept.values()}
        assert layer.reused_bytes(3, 5, 8) == sum(a.nbytes for a in deferred.values() if id(a) in kept_ids)
        assert layer.output_bytes(3, 5, 8) == y.nbytes
        x = y


@settings(max_examples=20, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    devices=st.integers(1, 3),
    remat=st.sampled_from(REMAT),
    gqa=st.booleans(),
    swiglu=st.booleans(),
    tied=st.booleans(),
    data=st.data(),
)
def test_shape_only_memory_is_the_real_arrays_byte_for_byte(strategy, devices, remat, gqa, swiglu, tied, data):
    from pipesched.decoder.workload import DecoderShapeWorkload

    chunks = _chunks(strategy)
    microbatches = 2 * devices if strategy in ("dualpipev", "dualpipe") else devices + data.draw(st.integers(0, 2))
    assume(CLOSED_FORMS[strategy].runs(devices, microbatches, chunks))
    batch = microbatches + data.draw(st.integers(0, 3))
    schedule = make_plan(load_strategy(strategy), devices, microbatches, chunks)
    config = _config(max(1, schedule.num_stages - 2), heads=4, kv_heads=2 if gqa else 4, swiglu=swiglu, tied=tied)
    model = DecoderModel.from_config(config, seed=0)
    inputs, labels = make_tokens(config, batch=batch, seq_len=6, seed=0)
    stages, slices = uniform(len(model.layers), schedule.num_stages), split(batch, microbatches)
    size, state = data.draw(st.sampled_from([(2, 12), (4, 8), (8, 0)]))  # bf16 and fp32 with Adam, fp64 with SGD
    work = DecoderWorkload(model, stages, inputs, labels, slices, itemsize=size, state_bytes=state)
    real = simulate(schedule, work, UnitCost(), remat=remat)
    rows = [s.stop - s.start for s in slices]
    stand_ins = DecoderShapeWorkload(model.layers, stages, rows, 6, itemsize=size, state_bytes=state)
    shape = simulate(schedule, stand_ins, UnitCost(), remat=remat)
    assert [list(m) for m in shape.memory] == [list(m) for m in real.memory]
    assert list(shape.transfers) == list(real.transfers)  # the tied pair's all-reduce chunks too
