"""``pipesched profile``: the times file it writes reads back, covers every layer, sums into stages and simulates;
the timer's bookkeeping against a scripted clock; each bad input in one sentence. No timed asserts."""

import json
import math
import os
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched.balance.profile import time_passes
from pipesched.cli import main
from pipesched.compute import Held
from pipesched.partition import explicit
from pipesched.profile import Spread
from pipesched.times import TIME_UNITS, load_times

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: A tiny MLP: widths 8, 16, 16, 4 (three dense layers), micro-batches of 2 rows.
MLP = ["--layers", "8,16,16,4", "--batch", "4", "--microbatches", "2", "--warmup", "0", "--repeats", "3"]
#: tiny-gpt on sequences of 8 tokens: 11 layers (embedding, 8 blocks, final norm, output), micro-batches of 2.
GPT = ["--model", "tiny-gpt", "--seq-len", "8", "--batch", "4", "--microbatches", "2", "--warmup", "0"]
PASSES = ("F", "I", "W", "R")
SPREAD = re.compile(r"^(F|I|W|R) = (\S+)  # min (\S+), max (\S+)$", re.MULTILINE)


def _profile(tmp_path, args, name="times.toml"):
    path = tmp_path / name
    assert main(["profile", *args, "-o", str(path)]) == 0
    return path


def test_file_reads_back_and_covers_every_layer(tmp_path, capsys):
    path = _profile(tmp_path, MLP)
    assert "times of 3 layers (median of 3 runs each) written to" in capsys.readouterr().out
    data = tomllib.loads(path.read_text())
    assert set(data["layer"]) == {"0", "1", "2"} and "stage" not in data
    assert data["rows"] == 2 and data["time_unit"] in TIME_UNITS
    assert data["about"]["layers"] == "8,16,16,4" and data["about"]["repeats"] == 3
    for table in data["layer"].values():
        assert set(PASSES) <= set(table) and all(table[op] > 0 for op in PASSES)
    # each boundary sends 2 rows of the layer's output width in fp64, by hand; none after the last layer
    assert [data["layer"][n].get("activation_bytes") for n in "012"] == [2 * 16 * 8, 2 * 16 * 8, None]
    times = load_times(str(path))
    assert times.per_layer and times.rows == 2 and sorted(times.tables) == [0, 1, 2]


def test_median_lies_within_the_written_spread(tmp_path):
    text = _profile(tmp_path, MLP).read_text()
    blocks = [block for block in text.split("\n\n") if block.startswith("[layer.")]
    assert len(blocks) == 3
    for block in blocks:
        (table,) = tomllib.loads(block)["layer"].values()
        written = {op: (float(low), float(high)) for op, _, low, high in SPREAD.findall(block)}
        assert sorted(written) == sorted(PASSES)
        for op, (low, high) in written.items():
            assert 0 < low <= table[op] <= high
            # the interquartile range lies within the range (each end rounded to four digits)
            assert 0 <= table["spread"][op] <= (high - low) * (1 + 1e-3) + 1e-12


def test_layer_times_summed_by_a_partition_are_the_stage_times(tmp_path):
    path = _profile(tmp_path, GPT + ["--repeats", "1"])
    data = tomllib.loads(path.read_text())
    scale = TIME_UNITS[data["time_unit"]]
    layers = [data["layer"][str(n)] for n in range(11)]
    counts = [4, 3, 4]
    stages = load_times(str(path)).stage_times(3, explicit(counts, 11, 3))
    first = 0
    for stage, size in zip(stages, counts):
        run = layers[first : first + size]
        for op in PASSES:  # an independent sum of the file's own numbers
            assert getattr(stage, op) == pytest.approx(sum(layer[op] for layer in run) * scale, rel=1e-12)
        assert stage.activation_bytes == run[-1].get("activation_bytes")
        first += size
    # a decoder's boundary sends 2 sequences x 8 tokens x hidden 64 in bf16; the output layer has no boundary
    assert [layer.get("activation_bytes") for layer in layers] == [2 * 8 * 64 * 2] * 10 + [None]


def test_profile_simulates_with_its_own_times(tmp_path, capsys):
    path = _profile(tmp_path, MLP)
    capsys.readouterr()
    args = ["run", *MLP[:6], "--devices", "3", "--strategy", "gpipe", "--cost", "measured", "--times", str(path)]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    data = tomllib.loads(path.read_text())
    scale = TIME_UNITS[data["time_unit"]]
    # GPipe, one layer per device, 2 micro-batches of the measured 2 rows: busy = M (F + I + W) of its layer
    for device, busy in enumerate(result["busy"]):
        layer = data["layer"][str(device)]
        assert busy == pytest.approx(2 * (layer["F"] + layer["I"] + layer["W"]) * scale, rel=1e-9)


def test_stages_from_devices_or_counts(tmp_path):
    data = tomllib.loads(_profile(tmp_path, MLP + ["--devices", "2"]).read_text())
    assert set(data["stage"]) == {"0", "1"} and "layer" not in data
    assert data["stage"]["0"]["activation_bytes"] == 2 * 16 * 8 and "activation_bytes" not in data["stage"]["1"]
    path = _profile(tmp_path, MLP + ["--partition", "1,2"], "counts.toml")
    assert "[stage.1]  # layers 1-2: Dense(16->16, relu), Dense(16->4)" in path.read_text()
    assert len(load_times(str(path)).stage_times(2)) == 2


def test_without_output_prints_the_file(tmp_path, capsys, monkeypatch):
    """Without -o the whole times file goes to stdout, nothing else, and nothing is written to disk."""
    monkeypatch.chdir(tmp_path)
    assert main(["profile", *MLP]) == 0
    out = capsys.readouterr().out
    assert os.listdir(tmp_path) == [] and "written to" not in out
    data = tomllib.loads(out)  # the whole of stdout is one TOML file
    # by hand: 8 -> 16 -> 16 -> 4 is three dense layers, ReLU after all but the last; micro-batches of 4 / 2 rows
    for n, layer in enumerate(["Dense(8->16, relu)", "Dense(16->16, relu)", "Dense(16->4)"]):
        assert f"[layer.{n}]  # {layer}\n" in out
    assert sorted(data["layer"]) == ["0", "1", "2"] and data["rows"] == 2 and data["time_unit"] in TIME_UNITS
    assert data["about"]["layers"] == "8,16,16,4" and (data["about"]["repeats"], data["about"]["warmup"]) == (3, 0)
    # 2 rows x 16 wide in fp64 cross each of the two boundaries
    assert [data["layer"][n].get("activation_bytes") for n in "012"] == [2 * 16 * 8, 2 * 16 * 8, None]
    # each median lies within the min and max written beside it
    spreads = SPREAD.findall(out)
    assert len(spreads) == 3 * len(PASSES)
    assert all(0 < float(low) <= float(median) <= float(high) for _, median, low, high in spreads)


class _Script:
    """A workload whose passes advance a scripted clock: pass ``op`` of ``stage`` in run ``r`` lasts code + r."""

    CODE = {"F": 10, "I": 20, "W": 30, "R": 40}

    def __init__(self, stages):
        self.now, self.run, self.stages = 0.0, -1, stages

    def clock(self):
        return self.now

    def _take(self, op, stage):
        self.now += self.CODE[op] + 100 * stage + self.run

    def forward(self, stage, mb, x, keep):
        if keep and stage == 0:
            self.run += 1
        if keep:
            self._take("F", stage)
        return np.zeros(stage + 1), Held([x], remat=not keep)

    def backward_input(self, stage, mb, held, dy):
        self._take("I", stage)
        return None, Held([])

    def backward_weight(self, device, stage, mb, held):
        self._take("W", stage)

    def recompute(self, stage, mb, held):
        self._take("R", stage)
        return Held([])


def test_time_passes_keeps_the_timed_runs_of_each_pass():
    work = _Script(stages=2)
    samples, outputs = time_passes(work, 2, warmup=2, repeats=3, clock=work.clock)
    # by hand: runs 0 and 1 are the warm-up, runs 2, 3, 4 are kept; pass op of stage s lasts CODE[op] + 100 s + run
    for stage in range(2):
        for op, code in _Script.CODE.items():
            assert samples[stage][op] == [code + 100 * stage + run for run in (2, 3, 4)]
    assert [len(o) for o in outputs] == [1, 2]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=30))
def test_spread_against_numpy(samples):
    spread = Spread.of(samples)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])  # NumPy's linear method is the inclusive one
    assert spread.median == pytest.approx(median) and spread.low == min(samples) and spread.high == max(samples)
    assert spread.q1 == pytest.approx(q1) and spread.q3 == pytest.approx(q3)
    assert spread.low <= spread.q1 <= spread.median <= spread.q3 <= spread.high


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "unknown model preset 'nope'"),
        (["--model", "gpt3-175b"], "--model gpt3-175b needs at least"),
        (["--repeats", "0"], "--repeats 0 is not allowed; give a whole number of at least 1"),
        (["--warmup", "-1"], "--warmup -1 is not allowed; give a whole number of at least 0"),
        (["--chunks", "2"], "--chunks 2 counts stages per device; give --devices too"),
        (["--devices", "2", "--partition", "balanced"], "--partition balanced is chosen from layer times"),
        (["--partition", "1,1"], "--partition 1,1 sums to 2 layers but the model has 3"),
        (["--devices", "5"], "the schedule has 5 stages but the model has only 3 layers"),
        (["--seq-len", "8"], "--seq-len 8 is a decoder's sequence length; give --model too"),
        (["--batch", "1"], "--microbatches 2 is more than the batch of 1 samples"),
        (["--dtype", "int8"], "--dtype 'int8' is unknown"),
    ],
)
def test_bad_input_is_one_sentence(tmp_path, capsys, args, message):
    path = tmp_path / "times.toml"
    path.write_text("kept\n")
    assert main(["profile", *MLP, *args, "-o", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipesched: error: ") and message in err and err.count("\n") == 1
    assert path.read_text() == "kept\n"  # nothing written over it


def test_output_path_is_checked_before_timing(tmp_path, capsys):
    assert main(["profile", *MLP, "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["profile", *MLP, "-o", str(tmp_path / "missing" / "times.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_timing_covers_every_op_of_a_decoder(tmp_path):
    data = tomllib.loads(_profile(tmp_path, GPT + ["--repeats", "1"]).read_text())
    assert sorted(int(n) for n in data["layer"]) == list(range(11))
    assert all(math.isfinite(t[op]) and t[op] > 0 for t in data["layer"].values() for op in PASSES)
    assert data["about"]["model"] == "tiny-gpt" and data["about"]["seq_len"] == 8 and data["about"]["dtype"] == "bf16"
