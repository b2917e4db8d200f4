"""Schedules as data: the action notation, the table, and the validator's rules."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched import Action, Schedule, ScheduleError, validate
from pipesched.strategies.gpipe import GPipe

actions = st.builds(Action, st.integers(0, 20), st.sampled_from("FBIW"), st.integers(0, 50))


@given(st.lists(st.lists(actions, max_size=6), min_size=1, max_size=4))
def test_text_form_round_trips(per_device):
    schedule = Schedule(per_device)
    rows = [line.split(": ", 1)[1] if ": " in line else "" for line in str(schedule).splitlines()]
    assert Schedule.parse(rows) == schedule
    assert all(Action.parse(str(a)) == a for dev in per_device for a in dev)


def test_action_notation_follows_pytorch_pipelining():
    assert Action.parse("2F0") == Action(stage=2, op="F", microbatch=0)
    assert Action.parse("1B3").op == "B" and str(Action(0, "I", 2)) == "0I2" and str(Action(0, "W", 2)) == "0W2"
    assert repr(Action(2, "F", 0)) == "Action('2F0')"


@pytest.mark.parametrize("text", ["F0", "2X0", "2F", "a2F0", "-1F0"])
def test_malformed_actions_are_refused(text):
    with pytest.raises(ScheduleError, match="is not in the form STAGE OP MICROBATCH"):
        Action.parse(text)


def test_gpipe_matches_the_paper_figure():
    # Huang et al. 2019, figure 2(c): K=4, M=4, every forward then the backwards, last first.
    expected = [
        "0F0 0F1 0F2 0F3 0B3 0B2 0B1 0B0",
        "1F0 1F1 1F2 1F3 1B3 1B2 1B1 1B0",
        "2F0 2F1 2F2 2F3 2B3 2B2 2B1 2B0",
        "3F0 3F1 3F2 3F3 3B3 3B2 3B1 3B0",
    ]
    assert GPipe().plan(4, 4) == Schedule.parse(expected)


def test_table_is_step_by_device():
    table = Schedule.parse(["0F0 0B0", "1F0 1B0"]).table().splitlines()
    assert table[0].split() == ["device", "0", "device", "1"]
    assert table[1].split() == ["0F0", "1F0"] and table[2].split() == ["0B0", "1B0"]


VALID = ["0F0 0F1 0B1 0B0", "1F0 1F1 1B1 1B0"]


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            ["0F0 0F1 0B1 0B0 0F1", VALID[1]],
            r"device 0, position 4: 0F1 repeats the action first planned at device 0, position 1",
        ),
        (["0F0 0B0 0F1 0B1", "1F0 1F1 1B1"], r"stage 1, micro-batch 0 has no 1B0; every forward needs its backward"),
        (
            ["0F0 0B1 0F1 0B0", VALID[1]],
            r"device 0, position 1: 0B1 comes before 0F1 on the same device; a stage's backward must follow",
        ),
        (["0F0 0F1 0B0", "1F0 1F1 1B1 1B0 0B1"], r"device 1, position 4: 0B1 needs 0F1, which runs on device 0"),
        (
            ["0F0 0F1 0B1 0B0", "1F0 1B0 1F1 1W1 1I1"],
            r"1W1 comes before 1I1 on the same device; a weight-gradient must follow",
        ),
        (["0F0 0F1 0B1 0B0", "1F0 1F1 1B1 1B0 1I0 1W0"], r"1I0 repeats|has both a full backward"),
        (["0F0 0F1 0B1 0B0 0F2", VALID[1]], r"names micro-batch 2, outside 0..1"),
        (["0F0 0F1 0B1 0B0", "1F0 1F1 1B1 1I0"], r"has no 1W0"),
        (["0F0 0F1 0B1 0B0", "2F0 2F1 2B1 2B0"], r"stage 1, micro-batch 0 has no forward 1F0"),
        ([VALID[0]], r"the schedule has 1 devices but 2 were asked for"),
    ],
)
def test_validator_names_device_position_action_and_rule(rows, message):
    with pytest.raises(ScheduleError, match=message):
        validate(Schedule.parse(rows), devices=2, microbatches=2)


def test_a_valid_split_backward_schedule_passes():
    validate(Schedule.parse(["0F0 0F1 0I0 0I1 0W0 0W1", "1F0 1I0 1F1 1I1 1W1 1W0"]), devices=2, microbatches=2)


def test_placement_reads_replicas_off_the_schedule():
    dp = Schedule.parse(["0F0 0B0", "0F1 0B1"])
    assert dp.placement() == {0: (0, 1)}


@pytest.mark.parametrize(
    "action, message",
    [
        (Action(-1, "F", 0), r"has stage -1; use a whole number of 0 or more"),
        (Action(0, "F", 0.5), r"has micro-batch 0.5; use a whole number"),
        (Action(0, "F", "1"), r"has micro-batch '1'; use a whole number"),
        ("0F0", r"holds '0F0', not an Action"),
    ],
)
def test_action_fields_are_checked(action, message):
    schedule = Schedule([[Action(0, "F", 0), Action(0, "B", 0)]])
    schedule.actions = ((action,) + schedule.actions[0],)  # smuggled past the constructor
    with pytest.raises(ScheduleError, match=message):
        validate(schedule, devices=1, microbatches=1)


@pytest.mark.parametrize(
    "rows, held",
    [
        (["0F0 0B0", "1F0 1B0"], 1),  # one stage per device
        (["0F0 0B0", "0F1 0B1"], 1),  # data parallel: the same stage on both
        (["0F0 3F0 3B0 0B0", "1F0 2F0 2B0 1B0"], 2),  # a V: stages d and 2K-1-d
        (["0F0 2F0 4F0 4B0 2B0 0B0", "1F0 3F0 5F0 5B0 3B0 1B0"], 3),  # looped, v = 3
        (["0F0 1F1 1B1 0B0", "0F1 1F0 1B0 0B1"], 2),  # bidirectional: K stages, yet two on each device
    ],
)
def test_stages_per_device_counts_what_each_device_holds(rows, held):
    assert Schedule.parse(rows).stages_per_device == held


# what one (stage, micro-batch) may have by the time the validator counts: its F first, W only after its I
PAIR_ACTIONS = st.sampled_from(["", "F", "FB", "FI", "FIW", "FBI", "FBIW"])


@given(
    stages=st.integers(1, 3),
    microbatches=st.integers(1, 3),
    data=st.data(),
)
def test_counting_finds_a_step_complete_exactly_when_every_pair_is(stages, microbatches, data):
    """The validator's count (``_complete``) against asking each (stage, micro-batch) for its actions."""
    from pipesched.schedule import _complete

    have = {(s, m): data.draw(PAIR_ACTIONS) for s in range(stages) for m in range(microbatches)}
    seen = {Action(s, op, m): (0, 0) for (s, m), ops in have.items() for op in ops}
    by_pair = all(ops in ("FB", "FIW") for ops in have.values())
    assert _complete(seen, stages, microbatches) == by_pair
    # and the validator agrees on the schedule of those actions, one device, in that order (its stages are
    # those up to the last any action names)
    schedule = Schedule([list(seen)])
    pairs = [(s, m) for s in range(schedule.num_stages) for m in range(microbatches)]
    if seen and all(have[pair] in ("FB", "FIW") for pair in pairs):
        validate(schedule, 1, microbatches)
    else:
        with pytest.raises(ScheduleError):
            validate(schedule, 1, microbatches)
