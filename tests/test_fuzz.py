"""Fuzzing the validator and the engine: corrupted schedules against independent definitions of a valid
schedule and of a deadlock; those that run must give the full-batch gradients."""

import itertools
import random
from collections import Counter

import networkx as nx
import numpy as np
from hypothesis import given, note, settings
from hypothesis import strategies as st

from pipesched import Action, DeadlockError, Overlap, Schedule, ScheduleError, validate
from pipesched.compute import NumpyWorkload, ShapeWorkload
from pipesched.cost import MeasuredCost, UnitCost
from pipesched.engine import simulate
from pipesched.microbatch import split
from pipesched.model import Model, full_batch_gradients, layers_from_widths, make_data
from pipesched.partition import uniform
from pipesched.testing import schedules, timeline_problem
from pipesched.times import StageTimes

#: Corruptions that may break a schedule: it may stay valid, turn invalid, or deadlock.
BREAKING = [
    "shuffle_device",
    "swap_adjacent",
    "swap_across",
    "delete",
    "duplicate",
    "renumber",
    "change_op",
    "move",
    "pair",
    "pair_any",
    "hoist_backward",
]
#: Corruptions that keep a valid, deadlock-free schedule so by construction (see ``corrupt``).
KEEPING = ["toggle_backward", "defer_weight", "relabel", "permute_devices"]
CORRUPTIONS = BREAKING + KEEPING


def _backwards(rows):
    return [(d, i) for d, row in enumerate(rows) for i, a in enumerate(row) if a.op in ("B", "I")]


def corrupt(schedule, kind, rng):
    """``schedule`` (of plain actions) changed by one corruption of ``kind``.

    The ``KEEPING`` kinds cannot make a valid, deadlock-free schedule invalid or
    deadlock: ``toggle_backward`` turns a B into an I with its W right after it,
    or an I and its W back into one B at the I's place, so every action that
    waited for the backward still waits for one at the same place;
    ``defer_weight`` moves a W (made from a B if need be) to the end of its
    device, and nothing waits for a W; ``relabel`` renumbers the micro-batches
    and ``permute_devices`` renumbers the devices, which changes no dependency.
    """
    rows = [list(a) for a in schedule.actions]
    nonempty = [d for d, row in enumerate(rows) if row]
    d = rng.choice(nonempty)
    i = rng.randrange(len(rows[d]))
    a = rows[d][i]
    if kind == "shuffle_device":
        rng.shuffle(rows[d])
    elif kind == "swap_adjacent":  # often still valid, sometimes a deadlock
        j = min(i + 1, len(rows[d]) - 1)
        rows[d][i], rows[d][j] = rows[d][j], rows[d][i]
    elif kind == "swap_across":
        e = rng.choice(nonempty)
        j = rng.randrange(len(rows[e]))
        rows[d][i], rows[e][j] = rows[e][j], rows[d][i]
    elif kind == "delete":
        del rows[d][i]
    elif kind == "duplicate":
        rows[rng.choice(nonempty)].insert(rng.randrange(len(rows[d]) + 1), a)
    elif kind == "renumber":
        rows[d][i] = Action(max(0, a.stage + rng.choice([-1, 1])), a.op, max(0, a.microbatch + rng.choice([-1, 1])))
    elif kind == "change_op":
        rows[d][i] = Action(a.stage, rng.choice("FBIW"), a.microbatch)
    elif kind == "move":
        del rows[d][i]
        e = rng.randrange(len(rows))
        rows[e].insert(rng.randrange(len(rows[e]) + 1), a)
    elif kind in ("pair", "pair_any"):
        # overlap a forward with a backward of the same device ("pair": one that comes after it, as
        # DualPipe does; "pair_any": any two actions, which may be no valid pair at all)
        picks = [j for j, b in enumerate(rows[d]) if kind == "pair_any" or b.op in "BI" and j > 0]
        if picks:
            j = rng.choice(picks)
            forwards = [
                k for k in range(len(rows[d])) if k != j and (kind == "pair_any" or (rows[d][k].op == "F" and k < j))
            ]
            if forwards:
                k = rng.choice(forwards)
                pair = Overlap(rows[d][k], rows[d][j])
                rows[d] = [pair if n == k else b for n, b in enumerate(rows[d]) if n != j]
    elif kind == "hoist_backward":  # still valid, and a deadlock when a later stage needs a forward it passes
        d, i = rng.choice(_backwards(rows))
        b = rows[d].pop(i)
        rows[d].insert(rows[d].index(Action(b.stage, "F", b.microbatch)) + 1, b)
    elif kind in ("toggle_backward", "defer_weight"):
        d, i = rng.choice(_backwards(rows))
        b = rows[d][i]
        weight = Action(b.stage, "W", b.microbatch)
        if b.op == "I":
            rows[d].remove(weight)  # it comes after the I, so the I stays at i
        if kind == "defer_weight":
            rows[d][i] = Action(b.stage, "I", b.microbatch)
            rows[d].append(weight)
        elif b.op == "I":
            rows[d][i] = Action(b.stage, "B", b.microbatch)
        else:
            rows[d][i : i + 1] = [Action(b.stage, "I", b.microbatch), weight]
    elif kind == "relabel":
        order = _permutation(schedule.microbatches, rng)
        rows = [[Action(b.stage, b.op, order[b.microbatch]) for b in row] for row in rows]
    elif kind == "permute_devices":
        rows = [rows[d] for d in _permutation(len(rows), rng)]
    return Schedule(rows)


def _permutation(n, rng):
    """A random order of range(n), never the identity when there is another."""
    order = list(range(n))
    while n > 1 and order == sorted(order):
        rng.shuffle(order)
    return order


# -- independent definitions ---------------------------------------------------------------------


def _places(schedule):
    """{action: (device, position)}, or None when an action appears twice. A pair's two actions share its place."""
    places = {}
    for d, row in enumerate(schedule.actions):
        for p, item in enumerate(row):
            for a in (item.forward, item.backward) if isinstance(item, Overlap) else (item,):
                if a in places:
                    return None
                places[a] = (d, p)
    return places


def is_valid(schedule, devices, microbatches):
    """Validity as DESIGN.md states it, for schedules of F, B, I, W and overlapped pairs, written from scratch.

    One list per device; stages 0..S-1 where S-1 is the highest stage named; for every stage s < S and
    micro-batch m < M exactly one F, and either one B or one I and one W, nothing else and nothing twice;
    the backward parts on F's device after it, W after I; a pair is a forward and a B or I of another
    (stage, micro-batch).
    """
    if len(schedule.actions) != devices:
        return False
    for row in schedule.actions:
        for item in row:
            if isinstance(item, Overlap) and not (
                item.forward.op == "F" and item.backward.op in ("B", "I") and item.forward[::2] != item.backward[::2]
            ):
                return False
    places = _places(schedule)
    if not places:
        return False
    stages = 1 + max(a.stage for a in places)
    wanted = set()
    for s, m in itertools.product(range(stages), range(microbatches)):
        ops = "".join(op for op in "FBIW" if Action(s, op, m) in places)
        if ops not in ("FB", "FIW"):
            return False
        wanted |= {Action(s, op, m) for op in ops}
        device, position = places[Action(s, "F", m)]
        for earlier, later in zip(ops, ops[1:]):  # F before B, or F before I before W
            before, after = places[Action(s, earlier, m)], places[Action(s, later, m)]
            if after[0] != device or after[1] <= before[1]:
                return False
    return wanted == set(places)  # no stage or micro-batch outside those ranges


def deadlocks(schedule):
    """Whether a valid schedule waits forever: its wait-for graph has a cycle.

    A node per item of a device's list; an edge from each item to the next on its device, and from each
    action's producer to it: stage s-1's forward to stage s's, stage s+1's backward (B or I) to stage s's.
    With free links (unit cost) an item runs once its predecessors have, so the schedule finishes exactly
    when the graph has no cycle. A pair is one node: it starts with both inputs, its outputs leave at its end.
    """
    places = _places(schedule)
    graph = nx.DiGraph()
    for d, row in enumerate(schedule.actions):
        graph.add_nodes_from((d, p) for p in range(len(row)))
        graph.add_edges_from(((d, p), (d, p + 1)) for p in range(len(row) - 1))
    for (s, op, m), place in places.items():
        if op == "F" and s > 0:
            graph.add_edge(places[Action(s - 1, "F", m)], place)
        if op in ("B", "I"):
            after = [places[b] for b in (Action(s + 1, "B", m), Action(s + 1, "I", m)) if b in places]
            graph.add_edges_from((producer, place) for producer in after)
    return not nx.is_directed_acyclic_graph(graph)


# -- the fuzzer -----------------------------------------------------------------------------------

#: At least this share of the examples must run, to its gradients, a schedule the corruption changed.
RAN_CHANGED_AT_LEAST = 1 / 3


def test_a_corrupted_schedule_is_refused_deadlocks_or_runs_exactly_as_the_definitions_say():
    """Each example: the validator refuses exactly the schedules ``is_valid`` refuses; the engine reports a
    deadlock exactly when ``deadlocks`` finds one; a schedule that runs gives the full-batch gradients.
    The ``KEEPING`` corruptions must run; and at least ``RAN_CHANGED_AT_LEAST`` of all examples run a
    changed schedule, so that a validator refusing too much cannot pass by refusing."""
    outcomes = Counter()

    @settings(max_examples=300, database=None)
    @given(seed=st.integers(0, 2**32 - 1), data=st.data())
    def fuzz(seed, data):
        # the configuration and the corruption from a seed, so that each is drawn evenly (hypothesis
        # leans towards the smallest and the first); the schedule from pipesched.testing
        rng = random.Random(seed)
        devices, microbatches, chunks = rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 2)
        kind = rng.choice(rng.choice([BREAKING, KEEPING]))  # half the examples keep the schedule valid
        remat = rng.choice(["never", "always"])
        note(f"{kind} on K={devices}, M={microbatches}, v={chunks}, remat {remat}")
        valid = data.draw(schedules(devices, microbatches, chunks))
        schedule = corrupt(valid, kind, rng)
        outcome = _outcome(schedule, devices, microbatches, remat, rng)
        assert outcome == "ran" or kind not in KEEPING, f"{kind} made {outcome}:\n{schedule}"
        outcomes[outcome if outcome != "ran" else "ran changed" if schedule != valid else "ran unchanged"] += 1

    fuzz()
    share = outcomes["ran changed"] / sum(outcomes.values())
    assert share >= RAN_CHANGED_AT_LEAST, f"only {share:.0%} ran a changed schedule: {dict(outcomes)}"
    assert outcomes["refused"] >= 0.2 * sum(outcomes.values())  # and the validator has work too


def _outcome(schedule, devices, microbatches, remat, rng):
    """ "refused", "deadlock" or "ran", each checked against the independent definitions. A schedule that
    runs runs again under measured times with unequal F, I, W and send times drawn from ``rng``: its
    timeline must be what they imply (``pipesched.testing.timeline_problem``)."""
    expected = is_valid(schedule, devices, microbatches)
    try:
        validate(schedule, devices, microbatches)
    except ScheduleError as exc:
        assert not expected, f"the validator refused a valid schedule ({exc}):\n{schedule}"
        assert str(exc) and "\n" not in str(exc)
        return "refused"
    assert expected, f"the validator passed an invalid schedule:\n{schedule}"
    widths = [3, 4, 2, 5, 3, 4, 2][: schedule.num_stages + 1]
    model = Model.from_sizes(widths)
    batch = microbatches + 1
    x, target = make_data(widths, batch, "mse")
    work = NumpyWorkload(
        model, uniform(len(widths) - 1, schedule.num_stages), x, target, "mse", split(batch, microbatches)
    )
    try:
        simulate(schedule, work, UnitCost(), remat)
    except DeadlockError as exc:
        assert deadlocks(schedule), f"a deadlock reported where there is none ({exc}):\n{schedule}"
        assert "waits at" in str(exc)
        return "deadlock"
    assert not deadlocks(schedule), f"a schedule with a cycle of waits ran:\n{schedule}"
    _, reference = full_batch_gradients(model, x, target, "mse")
    for (gw, gb), (rw, rb) in zip(work.model_gradients(), reference):
        np.testing.assert_allclose(gw, rw, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gb, rb, rtol=1e-10, atol=1e-14)
    times = tuple(_measured(rng) for _ in range(schedule.num_stages))
    shapes = ShapeWorkload(
        layers_from_widths(widths), uniform(len(widths) - 1, schedule.num_stages), [1] * microbatches
    )
    trace = simulate(schedule, shapes, MeasuredCost(times))
    problem = timeline_problem(schedule, trace, times)
    assert problem is None, f"{problem} under {times}:\n{schedule}"
    return "ran"


def _measured(rng):
    """One stage's measured times: halves (exact sums), I != W, a send that may be free."""
    i = rng.randint(1, 12) / 2
    w = rng.choice([h / 2 for h in range(1, 13) if h / 2 != i])
    f = rng.randint(1, 12) / 2
    return StageTimes(F=f, I=i, W=w, R=f, send=rng.randint(0, 4) / 2)


# -- the validator on every small schedule ----------------------------------------------------------


def _small_schedules(devices, alphabet, most):
    """Every schedule of ``devices`` lists drawn from ``alphabet`` with at most ``most`` items in all."""
    items = [Schedule.parse([text]).actions[0][0] for text in alphabet]
    for lengths in itertools.product(range(most + 1), repeat=devices):
        if sum(lengths) <= most:
            for rows in itertools.product(*(itertools.product(items, repeat=n) for n in lengths)):
                yield Schedule(rows)


def test_the_validator_and_the_engine_agree_with_the_definitions_on_every_small_schedule():
    cases = [  # (devices, micro-batches, alphabet, most items): overlapped pairs included
        (2, 1, ["0F0", "0B0", "0I0", "0W0", "1F0", "1B0", "(0F0;1B0)OVERLAP_F_B", "(1F0;0B0)OVERLAP_F_B"], 4),
        (1, 2, ["0F0", "0F1", "0B0", "0B1", "0I0", "0W0", "(0F1;0B0)OVERLAP_F_B", "(0F1;0I0)OVERLAP_F_B"], 4),
    ]
    verdicts = Counter()
    for devices, microbatches, alphabet, most in cases:
        for schedule in _small_schedules(devices, alphabet, most):
            try:
                validate(schedule, devices, microbatches)
            except ScheduleError:
                assert not is_valid(schedule, devices, microbatches), f"refused a valid schedule:\n{schedule}"
                verdicts["refused"] += 1
                continue
            assert is_valid(schedule, devices, microbatches), f"passed an invalid schedule:\n{schedule}"
            layers = layers_from_widths([2] * (schedule.num_stages + 1))
            work = ShapeWorkload(layers, uniform(len(layers), schedule.num_stages), [1] * microbatches)
            try:
                simulate(schedule, work, UnitCost())
                verdicts["ran"] += 1
                assert not deadlocks(schedule), f"a schedule with a cycle of waits ran:\n{schedule}"
            except DeadlockError:
                verdicts["deadlock"] += 1
                assert deadlocks(schedule), f"a deadlock reported where there is none:\n{schedule}"
    # every verdict, and many of each
    assert verdicts["ran"] >= 10 and verdicts["deadlock"] >= 10 and verdicts["refused"] > 1000, verdicts
