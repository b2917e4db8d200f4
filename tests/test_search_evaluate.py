"""The search's fast evaluator against the engine: the same makespan, busy time and peak in flight, exactly,
on every built-in strategy and random reorderings of it; the same deadlocks; refusals in one sentence."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from pipesched import Action, DeadlockError, RunConfig, Schedule, ScheduleError, expand, run, validate
from pipesched.compute import ShapeWorkload
from pipesched.cost import FlopsCost, MeasuredCost
from pipesched.engine import simulate
from pipesched.errors import ConfigError, PipeschedError
from pipesched.metrics import measure
from pipesched.microbatch import split
from pipesched.model import layers_from_widths
from pipesched.partition import uniform
from pipesched.pipeline import prepare
from pipesched.schedule import Overlap
from pipesched.search import action_times, evaluate, from_prepared, placement_of
from pipesched.strategy import load_strategy, make_plan
from pipesched.testing import configs, measured_times
from pipesched.times import StageTimes

#: The built-in strategies of one pipeline; DualPipeV's overlapped pairs are run de-paired (see ``depaired``).
STRATEGIES = (
    "gpipe", "1f1b", "interleaved", "looped-bfs", "interleaved-zb", "zb-h1", "zb-h2", "zb-v", "dualpipev", "v-min",
    "v-half",
)  # fmt: skip


def depaired(schedule: Schedule) -> Schedule:
    """Each overlapped pair as its forward, then its backward: a valid schedule the evaluator runs."""
    return Schedule([list(expand(row)) for row in schedule.actions])


def dependencies(schedule: Schedule) -> dict[Action, list[Action]]:
    """Per action, the actions it needs, by the engine's rules: the data it reads and its own F (I before W)."""
    actions = {a for row in schedule.actions for a in expand(row)}
    stages = schedule.num_stages
    needs: dict[Action, list[Action]] = {}
    for a in actions:
        s, op, m = a
        if op == "F":
            needs[a] = [Action(s - 1, "F", m)] if s > 0 else []
        elif op == "W":
            needs[a] = [Action(s, "I", m)]
        else:
            later = [b for b in (Action(s + 1, "B", m), Action(s + 1, "I", m)) if b in actions]
            needs[a] = [Action(s, "F", m)] + (later if s + 1 < stages else [])
    return needs


def reorder(schedule: Schedule, rng: random.Random, local: bool) -> Schedule:
    """The same actions on the same devices in a random order that ``validate`` accepts.

    ``local``: each device's order respects only its own rules (F before its
    B or I, I before W), so the result may deadlock; else a random order of
    every dependency across devices (a linear extension), which never does.
    """
    needs = dependencies(schedule)
    device = {a: d for d, row in enumerate(schedule.actions) for a in row}
    if local:
        needs = {a: [b for b in bs if device[b] == device[a]] for a, bs in needs.items()}
    done: set[Action] = set()
    rows: list[list[Action]] = [[] for _ in schedule.actions]
    todo = sorted(needs)
    while todo:
        ready = [a for a in todo if all(b in done for b in needs[a])]
        a = rng.choice(ready)
        todo.remove(a)
        done.add(a)
        rows[device[a]].append(a)
    return Schedule(rows)


@st.composite
def problems(draw: st.DrawFn, name: str, pairs: bool = False) -> tuple[Schedule, ShapeWorkload, MeasuredCost, str]:
    """Strategy ``name``'s schedule on random measured costs: unequal F, I, W per stage, sends timed or
    over links with latency, micro-batches of uneven sizes (their times scaled by rows, or not).

    DualPipeV's overlapped pairs are kept with ``pairs``, else run de-paired."""
    strategy = load_strategy(name)
    chunks = getattr(strategy, "default_chunks", 1)
    fewest = 2 if name == "dualpipev" else 0  # DualPipeV plans M >= 2K only
    config = draw(configs(max_devices=3, max_microbatches=7, chunks=(chunks,), microbatches_per_device=fewest))
    try:
        schedule = make_plan(strategy, config.devices, config.microbatches, chunks)
    except PipeschedError:  # this strategy cannot plan this K and M (DualPipeV needs M >= 2K)
        assume(False)
    schedule = schedule if pairs else depaired(schedule)
    stages = schedule.num_stages
    # times in halves add up exactly; scaled by factors that are no powers of two they round, as real ones do
    scale = st.sampled_from([1.0, 0.1, 1 / 3]) | st.floats(0.01, 30)
    times = []
    for t in draw(measured_times(stages)):
        f, i, w, r, send = (
            draw(scale) * x for x in (t.F, t.I, t.W, draw(st.sampled_from([t.F, t.F / 2])), t.send or 0)
        )
        times.append(StageTimes(f, i, w, r, None if draw(st.booleans()) else send))
    links = FlopsCost(
        link_bandwidth=draw(st.sampled_from([1e3, 3e4, 1e9])), link_latency=draw(st.sampled_from([0.0, 0.3, 1e-3]))
    )
    cost = MeasuredCost(tuple(times), links, rows=draw(st.sampled_from([None, 1, 2])))
    rows = [s.stop - s.start for s in split(config.batch, config.microbatches)]
    work = ShapeWorkload(layers_from_widths(config.widths), uniform(len(config.widths) - 1, stages), rows)
    return schedule, work, cost, draw(st.sampled_from(["never", "always", "except_last"]))


def assert_same(schedule: Schedule, work: ShapeWorkload, cost: MeasuredCost, remat: str) -> None:
    """The evaluator's answer is the engine's: the same numbers, or a deadlock in both."""
    times = action_times(placement_of(schedule), schedule.devices, work, cost, remat)
    got = evaluate(schedule, times)
    note(str(schedule))
    try:
        trace = simulate(schedule, work, cost, remat, fast=False)  # the engine itself, not its shape-only fast path
    except DeadlockError:
        assert got.deadlock is not None and got.makespan == float("inf")
        return
    assert got.deadlock is None, got.deadlock
    metrics = measure(trace, 1)
    assert got.makespan == metrics.makespan and got.period == metrics.period
    assert list(got.busy) == metrics.busy
    assert list(got.peak_inflight) == metrics.peak_inflight_microbatches


@pytest.mark.parametrize("name", STRATEGIES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_equals_the_engine_on_every_built_in_strategy(name: str, data: st.DataObject) -> None:
    assert_same(*data.draw(problems(name)))


@pytest.mark.parametrize("name", STRATEGIES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), local=st.booleans())
def test_equals_the_engine_on_random_reorderings(name: str, data: st.DataObject, seed: int, local: bool) -> None:
    schedule, work, cost, remat = data.draw(problems(name))
    shuffled = reorder(schedule, random.Random(seed), local)
    validate(shuffled, schedule.devices, schedule.microbatches)  # the reordering is a valid schedule
    assert_same(shuffled, work, cost, remat)


#: One pipeline, shape-only, under every cost model and on nodes, MLP and decoders (one with a tied embedding).
RUNS = [
    dict(strategy="1f1b", cost="unit"),
    dict(strategy="zb-h2", cost="flops", remat="always"),
    dict(strategy="interleaved", cost="flops", hardware="h100-sxm", devices_per_node=2, batch=24),
    dict(strategy="zb-v", cost="flops", node_map="0,0,1,1", inter_node_bandwidth=1e8, remat="except_last"),
    dict(strategy="gpipe", cost="flops", device_speed="2=0.5", batch=13),
    dict(strategy="zb-h1", model="tiny-gpt", seq_len=16, batch=8),  # tied: the all-reduce at the end
    dict(strategy="1f1b", model="llama2-7b", seq_len=32, batch=8, hardware="a100-80gb", devices_per_node=2),
]


@pytest.mark.parametrize("settings_", RUNS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_equals_run(settings_: dict) -> None:
    config = RunConfig(devices=4, microbatches=8, compute=False, allow_oom=True, **settings_)
    prepared = prepare(config)
    got = evaluate(prepared.schedule, from_prepared(prepared))
    metrics = run(config).metrics
    assert (got.makespan, got.period, list(got.busy)) == (metrics.makespan, metrics.period, metrics.busy)
    assert list(got.peak_inflight) == metrics.peak_inflight_microbatches


def test_equals_run_under_measured_times(tmp_path) -> None:
    path = tmp_path / "times.toml"
    path.write_text(
        'time_unit = "ms"\n[default]\nF = 1.5\nI = 1.25\nW = 0.75\nsend = 0.125\n'
        "[stage.0]\nF = 2\nB = 3\n[stage.2]\nF = 1\nI = 2\nW = 0.5\n"
    )
    config = RunConfig(
        strategy="zb-h1", devices=3, microbatches=6, layers="8x4", cost="measured", times=str(path), compute=False
    )
    prepared = prepare(config)
    got, metrics = evaluate(prepared.schedule, from_prepared(prepared)), run(config).metrics
    assert (got.makespan, got.period) == (metrics.makespan, metrics.period)


def test_a_hand_timed_schedule() -> None:
    """GPipe on two devices, two micro-batches, measured F 1 and 2, B 2 and 3, sends 0.5, worked out by hand."""
    cost = MeasuredCost((StageTimes(F=1, I=1, W=1, R=1, send=0.5), StageTimes(F=2, I=1, W=2, R=2)))
    schedule = Schedule.parse(["0F0 0F1 0B0 0B1", "1F0 1F1 1B0 1B1"])
    work = ShapeWorkload(layers_from_widths([2, 2, 2]), uniform(2, 2), [1, 1])
    got = evaluate(schedule, action_times((0, 1), 2, work, cost))
    # device 0: 0F0 [0,1], 0F1 [1,2]; sends land 1.5 and 2.5 (the second waits for none: the link is free at 1.5)
    # device 1: 1F0 [1.5,3.5], 1F1 [3.5,5.5], 1B0 [5.5,8.5] (gradient lands 9), 1B1 [8.5,11.5] (lands 12)
    # device 0: 0B0 [9,11], 0B1 [12,14]
    assert got.makespan == 14.0
    assert got.busy == (1 + 1 + 2 + 2, 2 + 2 + 3 + 3)
    assert got.peak_inflight == (2, 2)


def test_a_queue_on_the_link() -> None:
    """Sends longer than the forward queue on their link: the second leaves when the first has left."""
    cost = MeasuredCost((StageTimes(F=1, I=1, W=1, R=1, send=3), StageTimes(F=1, I=1, W=1, R=1)))
    schedule = Schedule.parse(["0F0 0F1 0B0 0B1", "1F0 1F1 1B0 1B1"])
    work = ShapeWorkload(layers_from_widths([2, 2, 2]), uniform(2, 2), [1, 1])
    # 0F0 ends 1, its send [1,4]; 0F1 ends 2, its send waits for the link: [4,7]. 1F0 [4,5], 1F1 [7,8],
    # 1B0 [8,10] lands 13, 1B1 [10,12] lands 16 (after 1B0's on the link), 0B0 [13,15], 0B1 [16,18]
    assert evaluate(schedule, action_times((0, 1), 2, work, cost)).makespan == 18.0


def test_deadlock_is_found_and_described() -> None:
    # device 0 waits at 0B0 for 1B0, which device 1 runs only after 1F0, which needs 0F1, after 0B0 on device 0
    schedule = Schedule.parse(["0F0 0B0 0F1 0B1", "1F1 1B1 1F0 1B0"])
    work = ShapeWorkload(layers_from_widths([2, 2, 2]), uniform(2, 2), [1, 1])
    cost = MeasuredCost((StageTimes(F=1, I=1, W=1, R=1, send=0), StageTimes(F=1, I=1, W=1, R=1)))
    got = evaluate(schedule, action_times((0, 1), 2, work, cost))
    assert got.makespan == float("inf")
    assert got.deadlock is not None
    assert got.deadlock == (
        "the schedule deadlocks: device 0 waits at 0B0 for the gradient of micro-batch 0 from stage 1's backward "
        "(on device 1); device 1 waits at 1F1 for the activation of micro-batch 1 from 0F1 (on device 0); "
        "reorder the actions so that every input is produced before a device waits for it"
    )
    with pytest.raises(DeadlockError, match="deadlocks"):
        got.check()
    with pytest.raises(DeadlockError):
        simulate(schedule, work, cost)


def test_refuses_what_it_does_not_run() -> None:
    prepared = prepare(RunConfig(strategy="dualpipev", devices=2, microbatches=4, cost="unit", compute=False))
    times = from_prepared(prepared)
    with pytest.raises(ScheduleError, match=r"runs \(.*\)OVERLAP_F_B; the fast evaluator runs only F, B, I and W"):
        evaluate(prepared.schedule, times, check=False)
    with pytest.raises(ConfigError, match="--data-parallel 2: the fast evaluator runs one pipeline"):
        from_prepared(prepare(RunConfig(strategy="1f1b", devices=2, data_parallel=2, cost="unit", compute=False)))
    with pytest.raises(ConfigError, match="--p2p blocking: the fast evaluator runs asynchronous sends only"):
        from_prepared(prepare(RunConfig(strategy="1f1b", devices=2, p2p="blocking", cost="unit", compute=False)))
    one = from_prepared(prepare(RunConfig(strategy="1f1b", devices=2, microbatches=2, cost="unit", compute=False)))
    swapped = Schedule.parse(["1F0 1F1 1B0 1B1", "0F0 0F1 0B0 0B1"])
    with pytest.raises(ConfigError, match=r"places stages on devices \[1, 0\] but the times were built for \[0, 1\]"):
        evaluate(swapped, one)


def test_overlapped_pairs_are_refused_even_unvalidated() -> None:
    schedule = Schedule([[Action(0, "F", 0), Overlap(Action(0, "F", 1), Action(0, "B", 0)), Action(0, "B", 1)]])
    work = ShapeWorkload(layers_from_widths([2, 2]), uniform(1, 1), [1, 1])
    times = action_times((0,), 1, work, MeasuredCost((StageTimes(F=1, I=1, W=1, R=1),)))
    with pytest.raises(ScheduleError, match="no SEND, RECV, REDUCE_GRAD or overlapped pairs"):
        evaluate(schedule, times)
