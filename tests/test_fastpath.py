"""The shape-only fast path against the engine: the same trace, field for field (spans, transfers, memory
timelines, peaks, links), on every built-in strategy, random and random-order schedules, every remat mode and
every cost model; the same deadlocks and out-of-memory errors; and it runs where its text says it does."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from pipesched import RunConfig, Schedule
from pipesched.compute import ShapeWorkload
from pipesched.cost import CostModel
from pipesched.engine import simulate
from pipesched.errors import DeadlockError, OutOfMemoryError, PipeschedError
from pipesched.fastpath import applies, simulate_shapes
from pipesched.microbatch import split
from pipesched.model import Layer, layers_from_widths
from pipesched.partition import uniform
from pipesched.pipeline import BUILT_INS, prepare, training_sizes
from pipesched.schedule import Action, expand
from pipesched.strategy import load_strategy
from pipesched.testing import configs, schedules
from test_search_evaluate import problems, reorder

#: Cost models as a user picks them: unit; FLOPs with links that take time, on one node or two, with a slower
#: device; another precision; and measured times (``problems``, drawn separately)
COSTS = (
    {"cost": "unit"},
    {"cost": "flops", "link_bandwidth": 3e4, "link_latency": 0.0},
    {"cost": "flops", "link_bandwidth": 1e3, "link_latency": 1e-3, "dtype": "bf16", "optimizer": "adam"},
    {"cost": "flops", "hardware": "h100-sxm", "devices_per_node": 2, "inter_node_bandwidth": 1e4},
    {"cost": "flops", "device_speed": "1=0.5", "link_latency": 1e-4},  # a slower device: SpeedCost
)


def both(schedule: Schedule, work: ShapeWorkload, cost: CostModel, remat: str, **options) -> None:
    """``simulate`` with and without the fast path: the same trace, or the same error; and where the fast path
    applies, it ran (a trace, or None for the engine to explain a deadlock or a device out of memory)."""
    note(str(schedule))
    runs = applies(schedule, work, remat)
    own = {key: options[key] for key in ("device_memory", "allow_oom") if key in options}
    try:
        engine = simulate(schedule, work, cost, remat, fast=False, **options)
    except (DeadlockError, OutOfMemoryError) as error:
        with pytest.raises(type(error)) as raised:
            simulate(schedule, work, cost, remat, **options)
        assert str(raised.value) == str(error)
        assert simulate_shapes(schedule, work, cost, remat, **own) is None  # it leaves the message to the engine
        return
    fast = simulate(schedule, work, cost, remat, **options)
    assert fast == engine  # every field: spans, transfers, memory timelines, oom, peaks, peak samples, links
    if runs:
        assert simulate_shapes(schedule, work, cost, remat, **own) == engine
    actions = sum(1 for row in schedule.actions for _ in expand(row))
    assert fast.memory and len(fast.spans) == actions + sum(1 for span in fast.spans if span.op == "R")


def with_relus(work: ShapeWorkload, relus: list[bool]) -> ShapeWorkload:
    """``work`` with each layer but the last followed by a ReLU or not, as ``relus`` says."""
    layers = [layer for stage in work.layers for layer in stage]
    mixed = [
        Layer(a.in_features, a.out_features, relu and i < len(layers) - 1)
        for i, (a, relu) in enumerate(zip(layers, relus))
    ]
    return ShapeWorkload(mixed, work.stages, work.rows, work.itemsize, work.state_bytes)


def prepared(config: RunConfig) -> tuple[Schedule, ShapeWorkload, CostModel]:
    p = prepare(config)
    size, state = training_sizes(p.config)
    rows = [s.stop - s.start for s in p.slices]
    return p.schedule, ShapeWorkload(p.layers, p.partition, rows, size, state), p.cost


@pytest.mark.parametrize("name", BUILT_INS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_equals_the_engine_on_every_built_in_strategy(name: str, data: st.DataObject) -> None:
    fewest = 2 if name in ("dualpipev", "dualpipe", "chimera") else 0
    chunks = (getattr(load_strategy(name), "default_chunks", 1),)
    config = data.draw(configs(max_devices=4, max_microbatches=8, chunks=chunks, microbatches_per_device=fewest))
    costs = data.draw(st.sampled_from(COSTS))
    run_config = RunConfig(
        strategy=name, devices=config.devices * (2 if name == "dualpipe" and config.devices % 2 else 1),
        microbatches=config.microbatches, batch=config.batch, remat=config.remat, compute=False, reference=False,
        layers=",".join(map(str, config.widths)), **costs,
    )  # fmt: skip
    try:
        schedule, work, cost = prepared(run_config)
    except PipeschedError:  # this strategy cannot plan this K, M or these layers
        assume(False)
    both(schedule, work, cost, config.remat)
    # the same, with some stages ending without a ReLU: they keep no output, so a V's turn runs the fast path
    both(
        schedule, with_relus(work, data.draw(st.lists(st.booleans(), min_size=len(config.widths)))), cost, config.remat
    )


@pytest.mark.parametrize("name", ("gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zb-v", "v-half"))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), local=st.booleans())
def test_equals_the_engine_on_measured_times_and_random_orders(
    name: str, data: st.DataObject, seed: int, local: bool
) -> None:
    """Unequal F, I, W and R per stage, sends timed and with latency, uneven micro-batches; the order a
    random one of the same actions (``local``: each device's own rules only, so it may deadlock)."""
    schedule, work, cost, remat = data.draw(problems(name))
    both(reorder(schedule, random.Random(seed), local), work, cost, remat)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_equals_the_engine_on_random_schedules(data: st.DataObject) -> None:
    """``pipesched.testing.schedules``: any valid order, full or split backwards, looped stages."""
    config = data.draw(configs(max_devices=3, max_microbatches=5, chunks=(1, 2)))
    schedule = data.draw(schedules(config.devices, config.microbatches, config.chunks))
    rows = [s.stop - s.start for s in split(config.batch, config.microbatches)]
    stages = schedule.num_stages
    work = ShapeWorkload(layers_from_widths(config.widths), uniform(len(config.widths) - 1, stages), rows, 2, 12)
    work = with_relus(work, data.draw(st.lists(st.booleans(), min_size=len(config.widths))))
    try:
        cost = prepared(RunConfig(devices=config.devices, **data.draw(st.sampled_from(COSTS))))[2]
    except PipeschedError:  # K devices that do not fill whole nodes
        assume(False)
    both(schedule, work, cost, config.remat)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), fraction=st.floats(0.3, 1.1), allow=st.booleans())
def test_equals_the_engine_out_of_memory(data: st.DataObject, fraction: float, allow: bool) -> None:
    """A capacity around the step's peak: the same error, or with ``allow_oom`` the same trace and oom."""
    name = data.draw(st.sampled_from(("gpipe", "1f1b", "zb-h1")))
    schedule, work, cost, remat = data.draw(problems(name))
    peak = max(total for _, total in simulate(schedule, work, cost, remat, fast=False).peaks or [])
    both(schedule, work, cost, remat, device_memory=int(peak * fraction), allow_oom=allow)


def test_runs_where_its_text_says() -> None:
    """The fast path runs a plain pipeline of every kind, and leaves the engine what it cannot count."""

    def step(name: str, **options) -> tuple[Schedule, ShapeWorkload]:
        config = RunConfig(strategy=name, devices=4, microbatches=8, compute=False, layers="8x17", **options)
        schedule, work, _ = prepared(config)
        return schedule, work

    for name in ("gpipe", "1f1b", "interleaved", "looped-bfs", "interleaved-zb", "zb-h1", "zb-h2"):
        assert applies(*step(name), "never"), name
    # a V's turn hands a kept output (the ReLU mask) to the next stage on the same device; kept only by
    # forwards that keep their activations, so under --remat always it runs
    schedule, work = step("zb-v")
    assert not applies(schedule, work, "never") and not applies(schedule, work, "except_last")
    assert applies(schedule, work, "always")
    assert not applies(*step("gpipe", data_parallel=2), "never")  # replicas: all-reduces
    schedule, work = step("gpipe")
    assert not applies(Schedule(schedule.actions, replicas=2), work, "never")  # a replica's devices, however placed
    assert not applies(*step("dualpipev"), "never")  # overlapped pairs
    schedule, work = step("gpipe")
    assert not applies(schedule, work, "never", p2p="blocking")
    explicit = Schedule([[*row, Action(0, "SEND_F", 0)] if d == 0 else row for d, row in enumerate(schedule.actions)])
    assert not applies(explicit, work, "never")
    # nothing to run: None, and the engine's answer stands
    assert simulate_shapes(schedule, work, prepared(RunConfig(compute=False))[2], "never", p2p="blocking") is None


def test_memory_on_a_hand_example() -> None:
    """Two devices, one micro-batch, widths 4 -> 4 -> 4 with a ReLU between, 2 rows of 8 bytes, unit cost
    (F = 1, B = 2). Each stage has 4·4 + 4 = 20 parameters, 160 bytes; a message is 2·4·8 = 64 bytes. Device
    0 keeps its input and its output (the ReLU mask), 128 bytes, from 0 until its B ends at 6; the gradient
    arrives at 4, where its B adds 160 bytes of gradients. Device 1 gets the input at 1 (a buffer), then keeps
    it and its output (the loss's input) until its B ends at 4, its gradients appearing at 2."""
    schedule = Schedule.parse(["0F0 0B0", "1F0 1B0"])
    work = ShapeWorkload(layers_from_widths([4, 4, 4]), (range(0, 1), range(1, 2)), rows=[2])
    cost = prepared(RunConfig(cost="unit", devices=2, compute=False))[2]
    trace = simulate_shapes(schedule, work, cost, "never")
    assert trace is not None
    timeline = [[(s.time, s.grads, s.activations, s.buffers) for s in device] for device in trace.memory]
    assert timeline[0] == [(0.0, 0, 128, 0), (4.0, 160, 128, 64), (6.0, 160, 0, 0)]
    assert timeline[1] == [(0.0, 0, 0, 0), (1.0, 0, 128, 0), (2.0, 160, 128, 0), (4.0, 160, 0, 0)]
    assert trace.peaks == [(128, 160 + 160 + 128 + 64), (128, 160 + 160 + 128)]
    assert trace.makespan == 6.0 and [(t.src, t.dst, t.nbytes) for t in trace.transfers] == [(0, 1, 64), (1, 0, 64)]
