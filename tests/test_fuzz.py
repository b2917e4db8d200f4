"""Fuzzing the engine: permuted and corrupted schedules either run exactly or fail with a named error."""

import random

import numpy as np
from hypothesis import given, settings, strategies as st

from pipesched import Action, DeadlockError, Overlap, Schedule, ScheduleError, validate
from pipesched.compute import NumpyWorkload
from pipesched.cost import UnitCost
from pipesched.engine import simulate
from pipesched.microbatch import split
from pipesched.model import Model, full_batch_gradients, make_data
from pipesched.partition import uniform
from pipesched.testing import schedules

CORRUPTIONS = [
    "shuffle_device", "swap_adjacent", "swap_across", "delete", "duplicate", "renumber", "change_op", "move", "none",
    "pair", "pair_any",
]


def corrupt(schedule, kind, rng):
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
            forwards = [k for k in range(len(rows[d])) if k != j and (kind == "pair_any" or
                                                                       (rows[d][k].op == "F" and k < j))]
            if forwards:
                k = rng.choice(forwards)
                pair = Overlap(rows[d][k], rows[d][j])
                rows[d] = [pair if n == k else b for n, b in enumerate(rows[d]) if n != j]
    return Schedule(rows)


@settings(max_examples=300)
@given(
    devices=st.integers(1, 3), microbatches=st.integers(1, 4), chunks=st.integers(1, 2),
    kind=st.sampled_from(CORRUPTIONS), seed=st.integers(0, 2**16), remat=st.sampled_from(["never", "always"]),
    data=st.data(),
)
def test_a_corrupted_schedule_runs_exactly_or_fails_with_a_named_error(
    devices, microbatches, chunks, kind, seed, remat, data
):
    valid = data.draw(schedules(devices, microbatches, chunks))
    schedule = corrupt(valid, kind, random.Random(seed))
    stages = devices * chunks
    widths = [3, 4, 2, 5, 3, 4, 2][: stages + 1]
    model = Model.from_sizes(widths)
    batch = microbatches + 1
    x, target = make_data(widths, batch, "mse")
    try:
        validate(schedule, devices, microbatches)
    except ScheduleError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    work = NumpyWorkload(model, uniform(len(widths) - 1, schedule.num_stages), x, target, "mse",
                         split(batch, microbatches))
    try:
        simulate(schedule, work, UnitCost(), remat)
    except DeadlockError as exc:
        assert "waits at" in str(exc)
        return
    # it ran: then the gradients must be exact, whatever the order
    _, reference = full_batch_gradients(model, x, target, "mse")
    for (gw, gb), (rw, rb) in zip(work.model_gradients(), reference):
        np.testing.assert_allclose(gw, rw, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gb, rb, rtol=1e-10, atol=1e-14)
