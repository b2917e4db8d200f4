"""What tensor and sequence parallelism and a sharded optimizer leave each device, against counts by hand.

tiny-gpt: h = 64, 4 heads, MLP 4h, vocabulary 256 (already a multiple of 128·T, so no padding), 128
positions, tied embeddings; its 11 layers split 6,5 over K = 2: stage 0 the embedding and 5 blocks,
stage 1 three blocks, the final norm and the output layer.
"""

import json
import math

import pytest

from pipesched import RunConfig, run
from pipesched.cli import main
from pipesched.division import causes, describe_division
from pipesched.report.collect import StudyResults
from pipesched.report.render import _notes
from pipesched.report.study import load_study

H, V, P = 64, 256, 128


def _block(t):
    """A block's parameters on one of T devices (Shoeybi et al. 2019, section 3): the QKV columns (3h^2 + 3h),
    the projection rows (h^2), the MLP's first columns (4h^2 + 4h) and second rows (4h^2) divide; both norms
    (4h) and the two row-parallel biases (2h), added after the all-reduce, stay whole on every device."""
    return 6 * H + (12 * H * H + 7 * H) // t


def _run(**kw):
    base = dict(model="tiny-gpt", seq_len=16, devices=2, batch=4, microbatches=2, compute=False)
    return run(RunConfig(**{**base, **kw}))


def test_parameters_divide_as_megatron_splits_them():
    result = _run(tensor_parallel=2)
    size = result.memory_division[0]["parameters"]["whole"] // (V * H + P * H + 5 * _block(1))  # bytes per element
    assert size == 2  # bf16, a decoder's own precision
    # stage 0: the vocabulary-parallel embedding (V h / T) and the whole position table, five blocks
    d0, d1 = result.memory_division
    assert d0["parameters"] == {
        "held": size * (V * H // 2 + P * H + 5 * _block(2)),
        "whole": size * 24576 + size * 5 * 49984,
    }
    # stage 1: three blocks, the final norm (2h, whole) and the output matrix (V h / T, counted though tied)
    assert d1["parameters"] == {
        "held": size * (3 * _block(2) + 2 * H + V * H // 2),
        "whole": size * (3 * 49984 + 2 * H + V * H),
    }
    assert d1["gradients"] == d1["parameters"]


def test_a_sharded_optimizer_holds_one_replicas_share_of_the_tensor_parallel_share():
    plain = _run(tensor_parallel=2, data_parallel=2, batch=8)
    sharded = _run(tensor_parallel=2, data_parallel=2, batch=8, grad_sync="sharded")
    for a, b in zip(plain.memory_division, sharded.memory_division):
        state = a["optimizer"]["whole"] // (a["parameters"]["whole"] // 2)  # optimizer bytes per parameter
        assert state == 12  # Adam in mixed precision: fp32 master weights and two moments
        assert a["optimizer"]["held"] == a["parameters"]["held"] // 2 * state  # T alone
        assert b["optimizer"]["held"] == math.ceil(a["optimizer"]["held"] / 2)  # and 1/D of that
        assert b["optimizer"]["whole"] == a["optimizer"]["whole"]


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_activations_divide_as_korthikanti_counts(sequence_parallel):
    """On the last device (three blocks, the final norm, the output layer), one micro-batch of b = 2 rows:
    with sequence parallelism every kept activation divides over T (Korthikanti et al. 2022, section 4.2.2;
    tiny-gpt has no dropout masks) but the stage input, which arrives whole over the pipeline link and
    whose own share the first block keeps: held = whole / 2 + x / 2, x = b s h bytes. Without it, the 4 s b h
    of each block outside attention and the MLP (Table 2's 10 sbh less the masks), the final norm's input and
    the output layer's input stay whole: held = whole / 2 + (3 x 4 + 1 + 1) s b h / 2."""
    result = _run(tensor_parallel=2, sequence_parallel=sequence_parallel)
    acts = result.memory_division[1]["activations_per_microbatch"]
    sbh = 2 * 16 * H * 2  # rows x tokens x h, in bf16 bytes
    if sequence_parallel:
        assert acts["held"] == acts["whole"] // 2 + sbh // 2
    else:
        assert acts["held"] == acts["whole"] // 2 + (3 * 4 + 1 + 1) * sbh // 2
    assert acts["whole"] == _run().memory_division[1]["activations_per_microbatch"]["held"]  # T = 1's own


def test_the_mlp_divides_only_its_optimizer_state():
    result = run(RunConfig(devices=2, data_parallel=2, microbatches=2, batch=8, grad_sync="sharded", optimizer="adam"))
    for d in result.memory_division:
        assert d["parameters"]["held"] == d["parameters"]["whole"] and "activations_per_microbatch" not in d
        assert d["optimizer"]["held"] == math.ceil(d["optimizer"]["whole"] / 2) > 0


def test_json_text_and_report_show_the_division(capsys, tmp_path):
    flags = ["--model", "tiny-gpt", "--seq-len", "16", "--devices", "2", "--batch", "8", "--microbatches", "2"]
    flags += ["--tensor-parallel", "2", "--data-parallel", "2", "--grad-sync", "sharded", "--no-compute"]
    assert main(["run", *flags, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["memory_division"]
    assert main(["run", *flags]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("memory division"))
    fullest = int(line.split("device ")[1].split()[0])
    shares = listed[fullest]
    ratio = shares["optimizer"]["whole"] / shares["optimizer"]["held"]
    assert f"optimizer state 1/{ratio:.2f}" in line and "T=2, sharded over D=2" in line
    assert describe_division(shares, causes(2, False, 2, "sharded")) in line
    # a study: the report's notes say the same of its first run
    study = tmp_path / "s.toml"
    study.write_text(
        '[model]\nmodel = "tiny-gpt"\nseq_len = 16\nbatch = 8\ncompute = false\n'
        '[hardware]\ndevices = 2\ndata_parallel = 2\ntensor_parallel = 2\ngrad_sync = "sharded"\n'
        '[compare]\nmicrobatches = 2\nstrategies = ["1f1b"]\n[sweep]\nmicrobatches = [2]\n'
    )
    loaded = load_study(str(study))
    first = run(loaded.run_config(strategy="1f1b"))
    note = _notes(StudyResults(loaded, compare=[first]))
    assert "Memory per device is divided: 1f1b's fullest device" in note and "sharded over D=2" in note
