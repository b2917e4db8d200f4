"""SEND and RECV as PyTorch's runtime means them, blocking point-to-point, and exports both PyTorch readers run."""

import csv
import io
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import DeadlockError, RunConfig, Schedule, load_strategy, make_plan, run
from pipesched.cli import main
from pipesched.compute import ShapeWorkload
from pipesched.cost import UnitCost
from pipesched.engine import simulate
from pipesched.exchange import from_torch_csv, time_steps, to_torch_csv
from pipesched.model import layers_from_widths
from pipesched.schedule import OVERLAP, expand, parse_action, validate
from test_exchange import EXPORTABLE

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TORCH = FIXTURES / "torch"  # written by PyTorch 2.13 itself: derive.py, run by hand in a venv with torch


def _unit(path, **kw):
    return run(RunConfig(strategy=str(path), devices=2, microbatches=2, layers="4,5,6", batch=4, cost="unit", **kw))


# -- RECV posts a receive; only the consuming action waits -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, chunks, bubble",
    [
        # Megatron's interleaved bubble (K-1)/(vM+K-1), Narayanan et al. 2021, section 2.2
        ("interleaved-K4-M8-lowered.csv", 2, 3 / (2 * 8 + 3)),
        # ZB-V's (K-1)/(6M+K-1) under F = I = W, Qi et al. 2024, section 6
        ("zb-v-K4-M8-lowered.csv", 2, 3 / (6 * 8 + 3)),
    ],
)
def test_pytorchs_own_lowered_schedules_take_their_closed_form_time(name, chunks, bubble):
    # PyTorch's ScheduleInterleaved1F1B and ScheduleZBVZeroBubble for 4 ranks and 8 micro-batches,
    # with the SEND/RECV cells PyTorch's _add_send_recv inserts. Under unit cost each device computes
    # 24 units (2 chunks x 8 micro-batches x 3/2 per chunk), so the step is 24 / (1 - bubble):
    # 28.5 and 25.5. A RECV that held its device until the data came made them 47.5 and 34.5.
    result = run(RunConfig(strategy=str(TORCH / name), cost="unit", layers="8x9", batch=16))
    assert result.metrics.makespan == pytest.approx(24 / (1 - bubble), rel=1e-12)
    assert result.grad_rel_err < 1e-12


def test_a_posted_receive_does_not_hold_its_device():
    # Rank 1 posts both receives first; rank 0 posts both gradient receives before 0B1.
    # Under unit cost (F=1, B=2): 1F0 starts when 0F0's output lands (1), not when the second
    # receive completes (2); 0B1 starts when 1B1's gradient lands (5), 0B0 after 0B1 (7).
    starts = {s.name: s.start for s in _unit(FIXTURES / "early_recv.csv").trace.spans}
    assert starts == {"0F0": 0, "0F1": 1, "1F0": 1, "1F1": 2, "1B1": 3, "0B1": 5, "1B0": 5, "0B0": 7}


def test_blocking_receives_hold_their_device_in_order():
    # --p2p blocking: 1RECV_F1 holds rank 1 until 0F1's output lands at 2, so 1F0 runs 2-3;
    # 0RECV_B1 holds rank 0 until 6 and 0RECV_B0 until 8: 0B1 8-10, 0B0 10-12.
    result = _unit(FIXTURES / "early_recv.csv", p2p="blocking")
    starts = {s.name: s.start for s in result.trace.spans}
    assert starts == {"0F0": 0, "0F1": 1, "1F0": 2, "1F1": 3, "1B1": 4, "1B0": 6, "0B1": 8, "0B0": 10}
    assert result.grad_rel_err < 1e-12


# -- blocking point-to-point: crossed sends deadlock, and are named ----------------------------------------------------


def test_crossed_blocking_sends_deadlock_naming_both_devices_and_the_pair(capsys):
    # Rank 0 sends 0F1 before it posts the receive of 1B0's gradient; rank 1 sends that gradient
    # before it posts the receive of 0F1: with rendezvous sends each waits for the other.
    path = str(FIXTURES / "crossed_sends.csv")
    assert main(["run", "--schedule", path, "--cost", "unit", "--p2p", "blocking"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "devices 0 and 1 wait for each other: their sends 0SEND_F1 and 1SEND_B0 cross" in err
    assert "device 0 waits at 0SEND_F1, a blocking send that waits for device 1 to post 1RECV_F1" in err
    assert "use --p2p async" in err
    assert _unit(FIXTURES / "crossed_sends.csv").grad_rel_err < 1e-12  # --p2p async: no device waits in a send


def test_posting_one_receive_first_uncrosses_the_pair():
    # The same order, but rank 1 posts 1RECV_F1 before 1SEND_B0: rank 0's send completes at 4,
    # when rank 1 reaches the receive, and the step takes as long as without blocking (9 units).
    assert _unit(FIXTURES / "receive_first.csv", p2p="blocking").metrics.makespan == 9
    assert _unit(FIXTURES / "receive_first.csv").metrics.makespan == 9


def test_1f1b_with_unbatched_blocking_sends_deadlocks_and_gpipe_does_not():
    # Megatron-LM batches 1F1B's steady-state send_forward with recv_backward for exactly this reason:
    # the last device sends its first gradient back while the one before sends it a new activation.
    common = dict(cost="unit", compute=False, p2p="blocking")
    with pytest.raises(DeadlockError, match="devices 2 and 3 wait for each other: their sends 2SEND_F1 and 3SEND_B0"):
        run(RunConfig(strategy="1f1b", **common))
    # GPipe's waves never cross: (K-1+M)(F+B) = 11 x 3 units, as with asynchronous sends
    assert run(RunConfig(strategy="gpipe", **common)).metrics.makespan == 33


def test_an_unknown_p2p_mode_is_refused(capsys):
    assert main(["run", "--p2p", "rendezvous"]) == 2
    assert "--p2p 'rendezvous' is unknown; use one of async, blocking" in capsys.readouterr().err


# -- exports that both of PyTorch's readers run correctly --------------------------------------------------------------


def test_export_aligns_columns_to_time_steps_with_blank_bubbles():
    # GPipe, K=2, M=4 as in the GPipe paper's figure: rank 1 starts a step late, rank 0 idles two
    # steps while rank 1 finishes its forwards and starts 1B3.
    text = to_torch_csv(make_plan(load_strategy("gpipe"), 2, 4))
    assert text == "0F0,0F1,0F2,0F3,,,0B3,0B2,0B1,0B0\n,1F0,1F1,1F2,1F3,1B3,1B2,1B1,1B0\n"


def test_time_steps_wait_for_the_compute_not_for_its_send_or_receive():
    # Worked by hand: device 0 holds stage 1. 1F0 needs 0F0 (step 0), so stands at step 1, 1B0 at 2, its
    # send at 3; 0B0 needs 1B0 (step 2), so stands at 3, not after 1RECV_F0 or 0SEND_F0 as if they computed.
    schedule = Schedule.parse(["1RECV_F0 1F0 1B0 1SEND_B0", "0F0 0SEND_F0 0B0"])
    validate(schedule, devices=2, microbatches=1)
    assert time_steps(schedule) == [[0, 1, 2, 3], [0, 1, 3]]


def _producer(action):
    s, op, m = action
    if op == "F":
        return (s - 1, "F", m) if s > 0 else None
    return (s + 1, "B", m) if op in "BI" else None


@settings(max_examples=60, deadline=None)
@given(
    strategy=st.sampled_from(EXPORTABLE),
    devices=st.integers(1, 5),
    microbatches=st.integers(1, 12),
)
def test_every_export_reads_right_in_lockstep(strategy, devices, microbatches):
    """Every built-in PyTorch's CSV can hold (DualPipe's and Chimera's stages on two ranks it cannot)."""
    # PipelineScheduleMulti runs the CSV column by column: in step t each rank receives what its
    # neighbour computes in step t, so a consumer must stand in a later column than its producer on
    # another rank. The runtime classes skip blanks: the compact order must be the plan's.
    chunks = 1 if strategy in ("gpipe", "1f1b", "zb-h1", "zb-h2") else 2
    if strategy == "dualpipev":
        microbatches = max(microbatches, 2 * devices)
    if strategy == "interleaved-zb":  # rounds of equal size: the nearest M they divide
        microbatches -= microbatches % max(1, microbatches // devices)
    schedule = make_plan(load_strategy(strategy), devices, microbatches, chunks)
    rows = list(csv.reader(io.StringIO(to_torch_csv(schedule))))
    column, rank = {}, {}
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell:
                for a in expand([parse_action(cell)]):
                    if a.op != "W":  # a W sends nothing
                        key = (a.stage, "F" if a.op == "F" else "B", a.microbatch)
                        column[key], rank[key] = c, r
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if not cell:
                continue
            for a in expand([parse_action(cell)]):
                need = _producer(a)
                if need in column and rank[need] != r:
                    assert column[need] < c, f"{cell} at column {c} on rank {r} needs {need} from column {column[need]}"
    assert from_torch_csv(to_torch_csv(schedule)).schedule == schedule


def test_a_data_parallel_export_is_refused_with_the_reason(capsys, tmp_path):
    out = tmp_path / "dp.csv"
    assert main(["export", "--strategy", "dp", "--devices", "2", "--microbatches", "4", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "stage 0 runs on devices 0, 1; PyTorch's pipelining places each stage on one rank" in err
    assert not out.exists()


def test_overlapped_pairs_are_exported_as_one_cell():
    text = to_torch_csv(make_plan(load_strategy("dualpipev"), 2, 4, 2))
    assert OVERLAP in text and all(cell.count(OVERLAP) <= 1 for cell in text.replace("\n", ",").split(","))


# -- a message moves once its receive is posted; regressions from a second reading -------------------------------------


class _SlowLinks(UnitCost):
    """Unit compute, and every message occupies its link for one unit (no latency)."""

    def transfer_times(self, nbytes, src=0, dst=1, boundary=None):
        return 1.0, 0.0


def _simulate(rows, p2p="async"):
    schedule = Schedule.parse(rows)
    work = ShapeWorkload(layers_from_widths([4, 4, 4]), (range(0, 1), range(1, 2)), rows=[2] * schedule.microbatches)
    return simulate(schedule, work, _SlowLinks(), p2p=p2p)


def test_a_message_waits_for_its_receive_to_be_posted():
    # Rank 1 posts 1RECV_F1 only after 1B0, so 0F1's output (ready at 2) moves at 5, lands at 6:
    # 0F0 0-1 | F0 moves 1-2 | 1F0 2-3, 1B0 3-5 | B0's gradient moves 5-6 and F1 moves 5-6 |
    # 0B0 6-8, 1F1 6-7, 1B1 7-9 | B1's gradient moves 9-10 | 0B1 10-12. Moving F1 at 2 would give 11.
    trace = _simulate(["0F0 0F1 0B0 0B1", "1RECV_F0 1F0 1B0 1RECV_F1 1F1 1B1"])
    starts = {s.name: s.start for s in trace.spans}
    assert starts == {"0F0": 0, "0F1": 1, "1F0": 2, "1B0": 3, "0B0": 6, "1F1": 6, "1B1": 7, "0B1": 10}
    assert [(t.op, t.microbatch, t.start) for t in trace.transfers if t.src == 0] == [("F", 0, 1), ("F", 1, 5)]
    assert trace.makespan == 12


def test_a_receive_that_lands_a_parked_message_at_once_does_not_block():
    # Stages 1 and 2 share device 1 (3 stages on 2 devices: F = 2/3, B = 4/3 units). Under blocking
    # sends 0F1's output waits for 1F1 to post its receive at 2 and lands at once; the step is the
    # asynchronous one, 10 units: device 1 computes 8 from 2/3 on, with 0B1 (6 to 22/3) inside,
    # then 1B0 ends at 26/3 and 0B0 runs 26/3 to 10.
    path_rows = ["0F0 0F1 0B1 0B0", "1F0 2F0 1F1 2F1 2B1 1B1 2B0 1B0"]
    for p2p in ("async", "blocking"):
        trace = simulate(
            Schedule.parse(path_rows),
            ShapeWorkload(layers_from_widths([4] * 4), (range(0, 1), range(1, 2), range(2, 3)), rows=[2, 2]),
            UnitCost(),
            p2p=p2p,
        )
        assert trace.makespan == pytest.approx(10)


def test_a_cycle_with_a_blocking_receive_says_which_side_waits_for_data(capsys, tmp_path):
    # Rank 1 posts 1RECV_F1 first and blocks there; rank 0 blocks sending 0F0 to the 1RECV_F0 behind it.
    path = tmp_path / "order.csv"
    path.write_text("0F0,0SEND_F0,0F1,0SEND_F1,0B1,0B0\n1RECV_F1,1RECV_F0,1F0,1F1,1B1,1B0\n")
    assert main(["run", "--schedule", str(path), "--cost", "unit", "--p2p", "blocking"]) == 2
    err = capsys.readouterr().err
    assert (
        "devices 0 and 1 wait for each other: device 0 in 0SEND_F0 until device 1 posts its receive, "
        "device 1 at 1RECV_F1 waiting for data from device 0"
    ) in err
