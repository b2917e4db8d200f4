"""The command line: outputs a user reads, and every bad input as one sentence with exit status 2."""

import json
import os
import subprocess
import sys

import pytest

from pipesched import formulas
from pipesched.cli import main


def _run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


JSON_KEYS = {
    "strategy",
    "devices",
    "microbatches",
    "makespan",
    "bubble_fraction",
    "bubble_formula",
    "throughput",
    "loss",
    "grad_rel_err",
    "peak_activation_bytes",
    "peak_memory_bytes",
}


def test_run_json_has_the_documented_keys(capsys):
    status, out, _ = _run(capsys, "run", "--strategy", "gpipe", "--devices", "4", "--microbatches", "8", "--json")
    assert status == 0
    data = json.loads(out)
    assert JSON_KEYS <= data.keys()
    assert data["strategy"] == "gpipe" and data["devices"] == 4 and data["microbatches"] == 8
    assert data["bubble_formula"] == pytest.approx(3 / 11)
    assert len(data["peak_activation_bytes"]) == len(data["peak_memory_bytes"]) == 4
    assert data["grad_rel_err"] < 1e-12
    assert data["throughput"] == pytest.approx(32 / data["makespan"])


def test_run_is_deterministic(capsys):
    assert _run(capsys, "run", "--json") == _run(capsys, "run", "--json")


def test_run_table_shows_measured_and_closed_form_bubble(capsys):
    status, out, _ = _run(capsys, "run", "--cost", "unit", "--devices", "4", "--microbatches", "8")
    assert status == 0
    line = next(row for row in out.splitlines() if row.startswith("bubble fraction"))
    expected = f"{formulas.gpipe_bubble(4, 8):.4f}"
    assert f"{expected} measured, {expected} closed form" in line
    assert "grad rel. error" in out and "peak activations" in out


def test_trace_file_is_chrome_json(tmp_path, capsys):
    path = tmp_path / "t.json"
    status, _, _ = _run(capsys, "run", "--devices", "2", "--microbatches", "2", "--trace", str(path))
    assert status == 0
    events = json.loads(path.read_text())["traceEvents"]
    assert {e["name"] for e in events if e["ph"] == "X" and e["pid"] == 0} == {
        "0F0",
        "0F1",
        "1F0",
        "1F1",
        "0B0",
        "0B1",
        "1B0",
        "1B1",
    }


def test_train_loss_falls(capsys):
    status, out, _ = _run(capsys, "train", "--steps", "10", "--json", "--no-reference")
    losses = [r["loss"] for r in json.loads(out)]
    assert status == 0 and losses[-1] < 0.5 * losses[0]


def test_strategies_lists_the_builtins(capsys):
    status, out, _ = _run(capsys, "strategies")
    assert status == 0 and "gpipe" in out and "pipesched.strategies.gpipe:GPipe" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--devices", "0"], "--devices 0 is not allowed; use 1 or more"),
        (
            ["--devices", "12"],
            "strategy 'gpipe' plans 12 stages on --devices 12 but --layers 128,256x10,10 has only 11 layers",
        ),
        (["--seed", "-1"], "--seed -1 is negative; give a seed of 0 or more"),
        (["--link-latency", "inf"], "--link-latency inf is not between 0 and 1 second"),
        (["--link-latency", "1e9"], "--link-latency 1e+09 is not between 0 and 1 second"),
        (["--trace", ""], "--trace is empty; give a file path"),
        (["--devices", "100000000000000000000"], "more than the 4,000,000 pipesched plans for one step"),
        (
            ["--microbatches", "10000000", "--batch", "10000000", "--no-compute"],
            "more than the 4,000,000 pipesched plans for one step",
        ),
        (["--layers", "4,4", "--devices", "2"], "has only 1 layer; use fewer devices"),
        (["--device-flops", "0.5"], "--device-flops 0.5 is not a finite rate of at least 1 per second"),
        (["--trace", "/"], "--trace / is a folder; give a file path such as /trace.json"),
        (["--trace", "/no/such/dir/t.json"], "folder /no/such/dir does not exist"),
        (["--strategy", "mine.py"], "strategy 'mine.py' names a file but no class; write mine.py:ClassName"),
        (["--layers", "128,256x200000,10"], "asks for more than 100000 layers"),
        (["--microbatches", "0"], "--microbatches 0 is not allowed; use 1 or more"),
        (["--microbatches", "33"], "--microbatches 33 is more than the batch of 32 samples"),
        (["--layers", "128,,10"], "--layers '128,,10' is malformed at ''"),
        (
            ["--partition", "2,3,x"],
            "--partition '2,3,x' is neither 'uniform', 'balanced' nor comma-separated layer counts",
        ),
        (["--partition", "2,3,3,4"], "--partition 2,3,3,4 sums to 12 layers but the model has 11"),
        (["--partition", "5,6"], "--partition 5,6 has 2 stages but the schedule has 4"),
        (
            ["--strategy", "nope"],
            "unknown strategy 'nope'; use one of 1f1b, chimera, dp, dualpipe, dualpipev, gpipe, interleaved, "
            "interleaved-zb, looped-bfs, v-half, v-min, zb-h1, zb-h2, zb-v",
        ),
        (["--remat", "sometimes"], "--remat 'sometimes' is unknown; use one of never, always, except_last"),
        (["--cost", "free"], "--cost 'free' is unknown; use one of flops, unit"),
        (["--devices", "four"], "'four' is not a whole number"),
        (["--link-bandwidth", "0"], "--link-bandwidth 0 is not a finite rate of at least 1 per second"),
        (["--chunks", "2"], "gpipe places one stage per device, so --chunks 2 cannot apply"),
        # a negative value is the flag's own error however it is written, not argparse's "expected one argument"
        (["--device-memory", "-5GB"], "--device-memory -5GB is negative; give a size of at least one byte, e.g. 16GB"),
        (["--device-memory=-5GB"], "--device-memory -5GB is negative; give a size of at least one byte"),
        (["--device-mem", "-5GB"], "--device-memory -5GB is negative"),  # argparse's abbreviation
        (["--link-latency", "-1e-6"], "--link-latency -1e-06 is not between 0 and 1 second"),
        (["--link-bandwidth", "-inf"], "--link-bandwidth -inf is not a finite rate of at least 1 per second"),
        (["--device-memory", "-.5GB"], "--device-memory -.5GB is negative"),
    ],
)
def test_bad_input_is_one_sentence_and_status_2(capsys, argv, message):
    status, out, err = _run(capsys, "run", *argv)
    assert status == 2
    assert message in err and err.startswith("pipesched: error: ") and err.count("\n") == 1
    assert "Traceback" not in err and out == ""


def test_only_values_that_start_like_numbers_are_joined_to_their_flag(capsys):
    # an option after a flag that takes a value stays an option: argparse's own sentence
    status, _, err = _run(capsys, "run", "--device-memory", "--json")
    assert status == 2 and "argument --device-memory: expected one argument" in err
    # a flag without a value (--json) does not take the number that follows it
    status, _, err = _run(capsys, "run", "--json", "-5")
    assert status == 2 and "unrecognized arguments: -5" in err
    status, _, err = _run(capsys, "train", "--lr", "-1e-3")
    assert status == 2 and "--lr -0.001 is not positive" in err


@pytest.mark.parametrize("lr", ["inf", "nan", "0", "-1"])
def test_train_refuses_a_learning_rate_that_is_not_positive_and_finite(capsys, lr):
    status, _, err = _run(capsys, "train", "--lr", lr)
    assert status == 2 and "is not positive; give a learning rate above 0" in err


def test_plugin_file_errors_reach_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_module_anywhere\n")
    status, _, err = _run(capsys, "run", "--strategy", f"{bad}:X")
    assert status == 2 and "failed to import (ModuleNotFoundError" in err
    invalid = tmp_path / "invalid.py"
    invalid.write_text(
        "from pipesched import Schedule\n"
        "class Half:\n    name = 'half'\n"
        "    def plan(self, devices, microbatches, chunks=1):\n"
        "        return Schedule([[f'{d}F{m}' for m in range(microbatches)] for d in range(devices)])\n"
    )
    status, _, err = _run(capsys, "run", "--strategy", f"{invalid}:Half")
    assert status == 2 and "planned an invalid schedule: stage 0, micro-batch 0 has no 0B0" in err


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    trace = tmp_path / "out.json"
    command = os.path.join(os.path.dirname(sys.executable), "pipesched")  # the console script pip made
    assert os.path.exists(command)
    proc = subprocess.run(
        [command, "run", "--devices", "0", "--trace", str(trace)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "pipesched: error: --devices 0 is not allowed; use 1 or more\n"
    assert not os.path.exists(trace)  # nothing written on failure


def test_trace_refuses_special_files_and_writes_through_links(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["run", "--trace", str(fifo)]) == 2
    assert "is not a regular file" in capsys.readouterr().err and fifo.is_fifo()
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    os.chmod(real, 0o640)
    link.symlink_to(real)
    assert main(["run", "--devices", "2", "--microbatches", "2", "--trace", str(link)]) == 0
    assert link.is_symlink() and json.loads(real.read_text())["traceEvents"]
    assert (real.stat().st_mode & 0o777) == 0o640  # the file keeps its permissions
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pipesched-")] == []


def test_training_that_diverges_is_an_error_not_a_nan(capsys):
    assert main(["train", "--lr", "1e10", "--steps", "5", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "training diverged at step" in err and "use a smaller learning rate" in err
    assert "RuntimeWarning" not in err


def test_compare_names_the_strategy_that_fails_and_the_way_out(capsys):
    assert main(["compare", "--microbatches", "2", "--strategies", "gpipe,1f1b,dp"]) == 2
    assert "or leave dp out with --strategies gpipe,1f1b" in capsys.readouterr().err
    # the default list leaves out, with a note each, the strategies that cannot run the config
    assert main(["compare", "--microbatches", "2", "--cost", "unit", "--no-compute"]) == 0
    out, err = capsys.readouterr()
    assert "note: dp left out of the default comparison" in err and "note: dualpipev left out" in err
    assert "zb-v " in out and "\ndp " not in out and "dualpipev" not in out
    assert main(["compare", "--strategies", "gpipe,1f1b,gpipe"]) == 2
    assert "--strategies names gpipe more than once" in capsys.readouterr().err


def test_profile_writes_stats_that_pstats_reads(tmp_path, capsys):
    import pstats

    path = tmp_path / "run.prof"
    assert main(["run", "--no-compute", "--profile", str(path)]) == 0
    assert "cumulative" in capsys.readouterr().err
    stats = pstats.Stats(str(path))
    assert any("simulate" in name for _, _, name in stats.stats)  # the engine ran under the profiler


def test_the_command_returns_mains_status_and_freezes_what_is_left_for_the_shutdown(monkeypatch):
    """``console`` (the ``pipesched`` script) is ``main`` with the collector's shutdown passes spared: its
    status is main's, and every object alive as it returns is frozen, so those passes skip them."""
    import gc

    from pipesched import cli

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(sys, "argv", ["pipesched", "run", "--devices", "0"])
    assert cli.console() == 2 and frozen == [True]
    monkeypatch.setattr(sys, "argv", ["pipesched", "run", "--devices", "2", "--microbatches", "2", "--no-compute"])
    assert cli.console() == 0 and frozen == [True, True]
