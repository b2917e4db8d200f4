"""PyTorch's action CSV: round trips, hand-written files with communication and bubbles, and refusals by cell."""

import json
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched import RunConfig, Schedule, ScheduleError, load_strategy, make_plan, run
from pipesched.cli import main
from pipesched.exchange import from_torch_csv, time_steps, to_torch_csv
from pipesched.formulas import LOOPED
from pipesched.pipeline import BUILT_INS

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
#: the built-ins PyTorch's CSV can hold: it places each stage on one rank, so neither data parallelism nor a
#: bidirectional pipeline (every stage on two devices) exports
EXPORTABLE = [name for name in BUILT_INS if name not in ("dp", "dualpipe", "chimera")]


@given(
    strategy=st.sampled_from(EXPORTABLE),
    devices=st.integers(1, 4),
    microbatches=st.integers(1, 8),
    chunks=st.integers(1, 3),
)
def test_export_then_import_gives_the_same_schedule(strategy, devices, microbatches, chunks):
    chunks = chunks if strategy in LOOPED else getattr(load_strategy(strategy), "default_chunks", 1)
    if strategy == "dualpipev":
        microbatches = max(microbatches, 2 * devices)
    if strategy == "interleaved-zb":  # rounds of equal size, as PyTorch's: one round
        microbatches = min(microbatches, devices)
    schedule = make_plan(load_strategy(strategy), devices, microbatches, chunks)
    assert from_torch_csv(to_torch_csv(schedule)).schedule == schedule


@pytest.mark.parametrize("strategy", ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zb-v", "dualpipev"])
def test_an_exported_file_simulates_exactly_like_its_strategy(tmp_path, capsys, strategy):
    path = tmp_path / f"{strategy}.csv"
    assert main(["export", "--strategy", strategy, "--devices", "4", "--microbatches", "8", "-o", str(path)]) == 0
    chunks = 2 if strategy in ("interleaved", "zb-v", "dualpipev") else 1
    common = dict(devices=4, microbatches=8, layers="8x9", batch=16)
    direct = run(RunConfig(strategy=strategy, chunks=chunks, **common))
    imported = run(RunConfig(strategy=str(path), **common))
    assert imported.schedule == direct.schedule
    assert imported.metrics == direct.metrics and imported.trace.spans == direct.trace.spans
    assert imported.trace.transfers == direct.trace.transfers and imported.grad_rel_err < 1e-12


def test_sends_and_receives_are_ordering_points():
    # Rank 0 sends both activations only after computing both forwards, so 1F0
    # starts at 2, not 1; rank 1 sends its gradients after each backward.
    result = run(
        RunConfig(strategy=str(FIXTURES / "comm.csv"), devices=2, microbatches=2, layers="4,5,6", batch=4, cost="unit")
    )
    starts = {s.name: s.start for s in result.trace.spans}
    assert starts == {"0F0": 0, "0F1": 1, "1F0": 2, "1F1": 3, "1B1": 4, "0B1": 6, "1B0": 6, "0B0": 8}
    assert result.grad_rel_err < 1e-12


def test_reduce_grad_places_the_all_reduce_and_sharding_is_left_out(capsys):
    path = str(FIXTURES / "dp_reduce.csv")
    assert main(["run", "--schedule", path, "--layers", "6,8,4", "--batch", "4", "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["devices"] == 2 and data["microbatches"] == 4 and data["grad_rel_err"] < 1e-12
    assert "4 UNSHARD/RESHARD actions left out" in err
    result = run(RunConfig(strategy=path, devices=2, microbatches=4, layers="6,8,4", batch=4))
    assert len([t for t in result.trace.transfers if t.op == "allreduce"]) == 2 * 2  # 2(R-1) steps, 2 replicas


@pytest.mark.parametrize(
    "name, message",
    [
        ("bad_action.csv", r"bad_action.csv row 1, column 2: action '0X0' is not in the form"),
        ("bad_placement.csv", r"bad_placement.csv row 2, column 1: 1B0 needs 1F0, which runs on device 0"),
        ("incomplete.csv", r"incomplete.csv: stage 1, micro-batch 1 has no 1B1"),
        ("send_too_early.csv", r"send_too_early.csv row 1, column 1: 0SEND_F0 comes before 0F0"),
    ],
)
def test_malformed_files_are_refused_by_row_and_column(capsys, name, message):
    assert main(["run", "--schedule", str(FIXTURES / name)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    import re

    assert re.search(message, err), err


def test_blank_cells_and_bubbles_are_skipped_with_columns_kept():
    imported = from_torch_csv("0F0,,None,0B0\n,1F0,1B0\n")
    assert imported.schedule == Schedule.parse(["0F0 0B0", "1F0 1B0"])
    assert imported.where(0, 1) == "row 1, column 4" and imported.where(1, 0) == "row 2, column 2"


def test_text_export_is_the_step_by_rank_table(capsys):
    assert main(["export", "--strategy", "gpipe", "--devices", "2", "--microbatches", "2", "--format", "text"]) == 0
    assert capsys.readouterr().out.split() == "device 0 device 1 0F0 1F0 0F1 1F1 0B1 1B1 0B0 1B0".split()


def test_a_file_run_with_other_sizes_is_refused(capsys):
    assert main(["run", "--schedule", str(FIXTURES / "comm.csv"), "--devices", "4"]) == 2
    assert "has 2 ranks and 2 micro-batches; run it with --devices 2 --microbatches 2" in capsys.readouterr().err


def test_compare_takes_a_schedule_file_beside_strategies(capsys, tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(to_torch_csv(make_plan(load_strategy("1f1b"), 4, 8)))
    assert main(["compare", "--strategies", "gpipe", "--schedule", str(path), "--cost", "unit", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["strategy"] == "gpipe" and rows[1]["strategy"].endswith("mine.csv")
    assert rows[0]["makespan"] == rows[1]["makespan"]  # gpipe and 1f1b take as long under unit cost


def test_reduce_grad_runs_the_all_reduce_where_it_stands():
    # Two replicas of a two-stage model: stage 1's all-reduce is placed before 0B0, so its
    # chunks move before 0B0 starts; by default it would wait for the end.
    result = run(
        RunConfig(strategy=str(FIXTURES / "hybrid_reduce.csv"), devices=2, microbatches=2, layers="6,8,4", batch=4)
    )
    assert result.grad_rel_err < 1e-12
    b0 = next(s for s in result.trace.spans if s.name == "0B0" and s.device == 0)
    stage1 = [t for t in result.trace.transfers if t.op == "allreduce" and t.stage == 1]
    stage0 = [t for t in result.trace.transfers if t.op == "allreduce" and t.stage == 0]
    assert len(stage1) == len(stage0) == 2 * 2
    assert max(t.arrival for t in stage1) <= b0.start < min(t.start for t in stage0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("0F0,0B0\r1F0,1B0\r", r"row 1: not CSV"),
        ("0F0,0B0\n\n1F0,1B0\n", r"row 2 is empty; remove it, or write None"),
        ("0F\u0660,0B0\n", r"action '0F\u0660' is not in the form"),
    ],
)
def test_odd_csv_text_is_refused_by_row(text, message):
    with pytest.raises(ScheduleError, match=message):
        from_torch_csv(text)


def test_a_byte_order_mark_is_not_a_cell():
    assert from_torch_csv("\ufeff0F0,0B0\n").schedule == Schedule.parse(["0F0 0B0"])


def test_a_device_held_up_by_a_late_send_is_told_so(tmp_path, capsys):
    # Rank 0 keeps 0F0's output for a SEND it only reaches after 0B0, which needs 1B0: a deadlock.
    path = tmp_path / "late.csv"
    path.write_text("0F0,0RECV_B0,0B0,0SEND_F0\n1F0,1B0\n")
    assert main(["run", "--schedule", str(path)]) == 2
    err = capsys.readouterr().err
    assert "device 1 waits at 1F0 for the activation of micro-batch 0 from 0F0, held until 0SEND_F0 on device 0" in err


def test_export_writes_compute_actions_only(tmp_path):
    csv_text = to_torch_csv(Schedule.parse(["0F0 0SEND_F0 0B0", "1RECV_F0 1F0 1B0"]))
    assert csv_text == "0F0,,,0B0\n,1F0,1B0\n"  # columns are time steps: 1F0 after 0F0, 0B0 after 1B0


def test_a_bidirectional_schedule_is_refused_by_export_yet_read_back_from_a_hand_written_file(tmp_path, capsys):
    # DualPipe runs stage s on devices s and K-1-s; PyTorch maps each stage to one rank, so the export refuses it
    # (exit 2, one sentence), as it refuses dp. The CSV's cells can still hold it: written by hand, one row per
    # device in time-step columns as the export writes them, pipesched reads back the same schedule, and it
    # simulates exactly as the strategy does.
    assert main(["export", "--strategy", "dualpipe", "--devices", "4", "--microbatches", "8"]) == 2
    err = capsys.readouterr().err
    assert "stage 0 runs on devices 0, 3" in err and "bidirectional" in err and len(err.strip().splitlines()) == 1
    schedule = load_strategy("dualpipe").plan(4, 8)
    rows = []
    for actions, columns in zip(schedule.actions, time_steps(schedule)):
        cells = [""] * (columns[-1] + 1)
        for action, column in zip(actions, columns):
            cells[column] = str(action)
        rows.append(",".join(cells))
    path = tmp_path / "dualpipe.csv"
    path.write_text("\n".join(rows) + "\n")
    assert from_torch_csv(path.read_text()).schedule == schedule
    common = dict(devices=4, microbatches=8, layers="8x5", batch=16)
    direct, imported = run(RunConfig(strategy="dualpipe", **common)), run(RunConfig(strategy=str(path), **common))
    assert imported.metrics == direct.metrics and imported.trace.spans == direct.trace.spans
    assert imported.trace.transfers == direct.trace.transfers and imported.grad_rel_err < 1e-12
