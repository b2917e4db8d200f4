"""``pipesched compare`` runs ``auto`` beside the built-ins, at the memory limit they run under (issue 18, point 4)."""

import json

import pytest

from pipesched.cli import main
from pipesched.pipeline import BUILT_INS, COMPARE_DEFAULT
from pipesched.units import parse_bytes

#: Three devices, the last at half speed, joined by slow links (1 MB/s, 100 µs): unequal stages whose sends
#: cost more than their compute, so the fastest order is no built-in's.
SLOW = ["--devices", "3", "--microbatches", "6", "--layers", "8,16x6,4", "--device-flops", "1e8"]
SLOW += ["--link-bandwidth", "1e6", "--link-latency", "1e-4", "--device-speed", "2=0.5", "--no-compute"]


def _rows(capsys, *argv):
    """compare --json's runs by strategy."""
    assert main(["compare", *argv, "--json"]) == 0
    return {row["strategy"]: row for row in json.loads(capsys.readouterr().out)}


def _one_stage_per_device(rows):
    """The built-ins with one stage per device, the placement the search plans without --chunks 2.

    Not V placements (two stages per device, which auto plans only with --chunks 2) nor dp (the whole model on
    every device, whose in-flight count is not a pipeline stage's).
    """
    return [row for name, row in rows.items() if name != "auto" and len(row["partition"]) == row["devices"]]


@pytest.mark.parametrize(
    "argv, memory",
    [
        (["--no-compute"], "3.15MiB"),  # the seed MLP on its cpu-class devices: of the built-ins only 1F1B fits
        (SLOW, "24KiB"),  # GPipe and ZB-H2 do not fit; auto beats ZB-H1, the fastest that does
    ],
)
def test_auto_fits_the_limit_and_is_never_slower_than_a_built_in_that_fits_it(capsys, monkeypatch, argv, memory):
    monkeypatch.setattr("pipesched.search.configured.EXACT_DEVICES", 0)  # the heuristic: the limit is the subject
    rows = _rows(capsys, *argv, "--device-memory", memory, "--allow-oom")
    cap, auto = parse_bytes(memory), rows["auto"]
    assert not auto["oom"] and max(auto["peak_memory_bytes"]) <= cap and auto["device_memory"] == cap
    fits = [row for row in _one_stage_per_device(rows) if not row["oom"]]
    assert fits and any(row["oom"] for row in rows.values())  # the limit parts the built-ins: not vacuous
    assert all(max(row["peak_memory_bytes"]) <= cap for row in fits)
    assert auto["makespan"] <= min(row["makespan"] for row in fits)
    # the table says which fit: every row's last cell, auto's yes
    assert main(["compare", *argv, "--device-memory", memory, "--allow-oom"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[-1] for line in lines[2 : 2 + 1 + len(rows)]}
    assert table.pop("strategy") == "memory" and table == {n: "no" if r["oom"] else "yes" for n, r in rows.items()}
    assert f"auto: the fastest schedule pipesched search found for these costs, within {memory[:-3]}" in "\n".join(
        lines
    )


def test_without_a_memory_limit_auto_holds_k_micro_batches_in_flight_and_says_so(capsys):
    rows = _rows(capsys, *SLOW)
    auto = rows["auto"]
    assert max(auto["peak_inflight_microbatches"]) <= 3  # K = 3
    within = [row for row in _one_stage_per_device(rows) if max(row["peak_inflight_microbatches"]) <= 3]
    assert {row["strategy"] for row in within} == {"1f1b", "zb-h1"}  # GPipe holds M = 6, ZB-H2 2K-1 = 5
    assert auto["makespan"] <= min(row["makespan"] for row in within)
    assert main(["compare", *SLOW]) == 0
    out = capsys.readouterr().out
    assert "fits memory" not in out and any(line.startswith("auto ") for line in out.splitlines())
    assert (
        "auto: the fastest schedule pipesched search found for these costs, at most 3 micro-batches in flight per "
        "device (K: 1F1B's and ZB-H1's memory), as no memory limit is given; --device-memory or --max-inflight "
        "sets one" in out
    )


def test_data_parallel_compares_the_built_ins_and_says_why_auto_is_left_out(capsys):
    assert main(["compare", "--data-parallel", "2", "--cost", "unit", "--no-compute"]) == 0
    out, err = capsys.readouterr()
    names = [line.split()[0] for line in out.split("\n\n")[1].splitlines()[1:]]
    assert names == list(BUILT_INS)
    (note,) = [line for line in err.splitlines() if "auto" in line]
    assert note.startswith("pipesched: note: auto left out of the default comparison: ") and "--data-parallel" in note
    assert "auto: the fastest schedule" not in out
    # named, it must run: one sentence and the way out
    assert main(["compare", "--data-parallel", "2", "--strategies", "1f1b,auto", "--no-compute"]) == 2
    assert "or leave auto out with --strategies 1f1b" in capsys.readouterr().err


def test_max_inflight_marks_which_strategies_hold_that_few(capsys):
    """--max-inflight 2 under unit cost (K = 4, M = 8): 1F1B holds K - d on device d (4 on device 0), ZB-V's
    V 2K half-stages (4 whole), so neither is within 2; auto is, and says so."""
    assert main(["compare", "--max-inflight", "2", "--cost", "unit", "--no-compute",
                 "--strategies", "1f1b,zb-v,auto"]) == 0  # fmt: skip
    table = capsys.readouterr().out.split("per device")[0].splitlines()
    assert next(line for line in table if line.startswith("strategy ")).rstrip().endswith("≤ 2 in flight")
    within = {line.split()[0]: line.split()[-1] for line in table if line.split()[:1] in (["1f1b"], ["zb-v"], ["auto"])}
    assert within == {"1f1b": "no", "zb-v": "no", "auto": "yes"}


def test_data_parallel_holds_one_micro_batch_of_its_whole_model_in_flight(capsys):
    """dp: each device runs its micro-batches one after another, forward then backward, so one is in flight:
    within --max-inflight 1, its one (replicated) stage counting as a whole stage."""
    assert main(["compare", "--max-inflight", "1", "--cost", "unit", "--no-compute", "--strategies", "dp,auto"]) == 0
    table = capsys.readouterr().out.split("per device")[0].splitlines()
    assert {line.split()[0]: line.split()[-1] for line in table if line.split()[:1] in (["dp"], ["auto"])} == {
        "dp": "yes",
        "auto": "yes",
    }


def test_the_default_list_is_every_built_in_then_auto():
    """A new strategy in strategies/ joins compare, the reports and the planner by default (issue 19)."""
    from pipesched import available_strategies

    assert sorted(COMPARE_DEFAULT[:-1]) == sorted(available_strategies()) and COMPARE_DEFAULT[-1] == "auto"
    assert len(COMPARE_DEFAULT) == 15
