"""The engine's fast bookkeeping equals the plain one it replaced: the memory account and the trace's records."""

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, run
from pipesched import trace as trace_module
from pipesched.compute import Buffer
from pipesched.engine import collector_paused
from pipesched.memory import ROLES, DeviceMemory
from pipesched.trace import MemorySample, Records, Span


class Plain:
    """An array-like with only ``nbytes``: the account counts it by identity, as it counts a NumPy array."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes


# (account, array, role, +1 hold or -1 release): a release of what the account does not hold is skipped
STEPS = st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 4), st.integers(0, len(ROLES) - 1), st.sampled_from([1, -1])),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 1000), min_size=5, max_size=5), steps=STEPS)
def test_stand_ins_counted_on_themselves_equal_arrays_counted_by_identity(sizes, steps):
    """A stand-in keeps its own entry (the engine's fast path) unless another device counts it meanwhile.

    The same holds and releases, on two devices, of stand-ins and of plain objects (counted by identity, the
    old way for every array) leave the same bytes by role after every step, and the same peaks.
    """
    accounts = {kind: [DeviceMemory(), DeviceMemory()] for kind in (Buffer, Plain)}
    arrays = {kind: [kind(n) for n in sizes] for kind in (Buffer, Plain)}
    held = [[[0] * len(ROLES) for _ in sizes] for _ in range(2)]  # the model: holders per account, array, role
    for t, (device, i, role, change) in enumerate(steps):
        if change < 0 and not held[device][i][role]:
            continue
        held[device][i][role] += change
        for kind in (Buffer, Plain):
            memory = accounts[kind][device]
            (memory.hold_one if change > 0 else memory.release_one)(arrays[kind][i], role)
            memory.sample(float(t))
        for device_ in (0, 1):
            assert accounts[Buffer][device_].timeline[-1] == accounts[Plain][device_].timeline[-1]
    for device in (0, 1):
        fast, plain = accounts[Buffer][device], accounts[Plain][device]
        assert fast.peak_sample == plain.peak_sample
        assert fast.peak_total_bytes == plain.peak_total_bytes
        # and both equal the bytes the model says: each array's, in the first role still holding it
        expected = [0] * len(ROLES)
        for i, roles in enumerate(held[device]):
            first = next((r for r, count in enumerate(roles) if count), None)
            if first is not None:
                expected[first] += sizes[i]
        assert list(fast.timeline[-1])[4:] == expected


RECORD = st.tuples(
    st.integers(0, 3), st.sampled_from(["F", "B", "I", "W"]), st.integers(0, 5), st.integers(0, 9),
    st.floats(0, 100), st.floats(0, 100),
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["add", "append", "set_last", "read"]), RECORD), max_size=40))
def test_records_kept_in_chunks_read_as_the_list_of_what_was_added(steps):
    """``add`` keeps records aside and moves them into the columns every few (here 3); any read sees them all."""
    saved, trace_module._CHUNK = trace_module._CHUNK, 3  # read when a Records is made: this one alone
    try:
        records, model = Records(Span), []
    finally:
        trace_module._CHUNK = saved
    for what, fields in steps:
        if what == "add":
            records.add(*fields)
            model.append(Span(*fields))
        elif what == "append":
            records.append(Span(*fields))
            model.append(Span(*fields))
        elif what == "set_last" and model:
            records.set_last(*fields)
            model[-1] = Span(*fields)
        elif what == "read":
            assert list(records) == model
            assert list(records.column("start")) == [s.start for s in model]
            ops = records.column("op")
            assert [records.code(s.op) for s in model] == list(ops)
    assert records == model and len(records) == len(model)


def test_a_record_of_the_wrong_shape_is_refused_and_a_bad_value_leaves_the_columns_whole():
    records = Records(Span)
    records.append(Span(0, "F", 0, 0, 0.0, 1.0))
    assert len(records) == 1  # a read: the record is in the columns now
    with pytest.raises(TypeError):
        records.set_last(0, "F", 0, 0, 0.0, 1.0, 2.0)  # seven fields for a six-field record
    records.add(0, "B", 0, None, 1.0, 3.0)  # the engine's form is trusted: the bad value shows at the next read
    with pytest.raises(TypeError):
        len(records)
    assert list(records) == [Span(0, "F", 0, 0, 0.0, 1.0)]  # all columns as they were, none half grown


def test_a_memory_timeline_replaces_the_last_sample_of_an_instant_across_a_chunk():
    """Several samples at one instant keep one, the last, even when the one before went into the columns."""
    timeline = Records(MemorySample, [MemorySample(0.0, 1, 0, 0, 0, 0, 0)])
    timeline.column("time")  # moves the first sample into the columns
    timeline.set_last(0.0, 1, 0, 0, 5, 0, 0)
    assert list(timeline) == [MemorySample(0.0, 1, 0, 0, 5, 0, 0)]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50), st.booleans()), max_size=30))
def test_a_device_timeline_is_the_last_state_of_each_instant_however_often_it_is_read(steps):
    """A device keeps its last instant's state aside until a later one comes (``DeviceMemory.sample``); reading
    the timeline writes it. Read at any points, the timeline is still, instant by instant, the last state the
    device was sampled in: the rule stated on ``sample``, checked against a dict of instant -> last state."""
    memory = DeviceMemory(params=7)
    last: dict[float, MemorySample] = {0.0: MemorySample(0.0, 7, 0, 0, 0, 0, 0)}
    now = 0.0
    for later, activations, read in steps:
        now += later  # times never go back, as in a run
        memory.by_role[0] = activations
        memory.sample(now)
        last[now] = MemorySample(now, 7, 0, 0, activations, 0, 0)
        if read:
            assert list(memory.timeline) == list(last.values())
    assert list(memory.timeline) == list(last.values())


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "gpipe", "remat": "always"},
        {"strategy": "zb-h1", "remat": "except_last", "cost": "flops", "link_latency": 1e-5},
        {"strategy": "gpipe", "p2p": "blocking", "cost": "flops"},
        {"strategy": "1f1b", "data_parallel": 2, "grad_sync": "sharded", "cost": "flops"},
        {"strategy": "dualpipev", "compute": True, "batch": 64},
    ],
)
def test_what_a_run_leaves_for_the_garbage_collector_does_not_grow_with_its_size(options):
    """Why pausing the collector during a run costs no memory (``pipesched.engine.collector_paused``):
    what a run makes per action is freed by reference counting. A collection right after a run finds only a
    few objects per run (SimPy's environment, the entry points' lookup), as many for 8 micro-batches as for 32,
    so none per action.
    """
    found = []
    for microbatches in (8, 8, 32):  # the first also imports what the run needs, once
        options = {"devices": 4, "batch": 128, "compute": False, "cost": "unit", **options}
        config = RunConfig(**options, microbatches=microbatches)
        gc.collect()
        with collector_paused():
            result = run(config)
            found.append(gc.collect())
        assert result.metrics.makespan > 0
    assert found[1] == found[2]


def test_pauses_overlapping_in_two_threads_keep_the_collector_off_until_the_last_ends():
    import threading

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with collector_paused():
            a_in.set()
            b_in.wait()
        a_out.set()

    def b():
        a_in.wait()
        with collector_paused():
            b_in.set()
            a_out.wait()
            seen["after a's end"] = gc.isenabled()
        seen["after b's end"] = gc.isenabled()

    assert gc.isenabled()
    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert seen == {"after a's end": False, "after b's end": True}


def test_a_copy_of_records_is_its_own_and_they_pickle():
    import copy
    import pickle

    records = Records(Span)
    records.add(0, "F", 0, 0, 0.0, 1.0)
    for twin in (copy.deepcopy(records), pickle.loads(pickle.dumps(records))):
        twin.add(0, "B", 0, 0, 1.0, 3.0)
        assert list(twin) == [Span(0, "F", 0, 0, 0.0, 1.0), Span(0, "B", 0, 0, 1.0, 3.0)]
    assert list(records) == [Span(0, "F", 0, 0, 0.0, 1.0)]
