"""Study and sweep files take a decoder in [model] (model, seq_len, compute), checked by key path."""

import json
import os
import pathlib
from importlib import resources

import pytest

from pipesched.cli import main
from pipesched.report import collect, load_study
from pipesched.sweep import load_sweep

#: tiny-gpt by hand (tests/test_decoder_run.py): V 256, h 64, 128 positions, 8 blocks, f 256, tied
_H, _F = 64, 256
TINY_GPT_PARAMETERS = 256 * _H + 128 * _H + 8 * (4 * _H * _H + 4 * _H + 2 * _H * _F + _F + _H + 4 * _H) + 2 * _H
#: meta-llama/Llama-2-7b-hf's model card: 6,738,415,616 parameters
LLAMA2_7B_PARAMETERS = 6_738_415_616

SMALL_STUDY = """
title = "tiny"
[model]
model = "tiny-gpt"
seq_len = 16
batch = 8
[hardware]
devices = 2
[compare]
strategies = ["gpipe", "zb-h1"]
microbatches = 4
[sweep]
microbatches = [2, 4]
devices = [1, 2]
"""


def _tiny_gpt_config() -> dict:
    """tiny-gpt's config.json, as a user's file would hold it."""
    presets = json.loads(resources.files("pipesched.decoder").joinpath("presets.json").read_text())
    return presets["presets"]["tiny-gpt"]["config"]


def test_a_decoder_study_runs_and_its_metrics_carry_the_model(tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text(SMALL_STUDY)
    assert main(["report", str(study), "-o", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for row in metrics["compare"]:
        assert (row["model"], row["seq_len"], row["parameters"]) == ("tiny-gpt", 16, TINY_GPT_PARAMETERS)
        assert row["layers"] is None and row["partition"] == [6, 5]  # 11 layers: embedding, 8 blocks, norm, output
        assert row["grad_rel_err"] < 1e-10  # real NumPy: the full-batch check holds through a study too
    # the figures a decoder cannot have yet are left out, each with its sentence in the report
    assert set(metrics["left_out"]) == {"stage-costs", "training"} and metrics["train"] == {}
    figures = os.listdir(tmp_path / "out" / "figures")
    assert "stage-costs.png" not in figures and "training.png" not in figures and "memory.png" in figures
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "a study of a decoder does not train yet" in markdown and "Model tiny-gpt" in markdown
    assert [r["devices"] for r in metrics["sweep_devices"]] == [1, 2]


def test_a_7b_study_shape_only_counts_the_model_cards_parameters(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text(
        '[model]\nmodel = "llama2-7b"\nseq_len = 512\nbatch = 4\ncompute = false\n[hardware]\ndevices = 2\n'
        '[compare]\nstrategies = ["1f1b"]\nmicrobatches = 2\n[sweep]\nmicrobatches = [2]\ndevices = [2]\n'
    )
    results = collect(load_study(str(study)), progress=False)
    (row,) = results.metrics()["compare"]
    assert (row["model"], row["seq_len"], row["parameters"]) == ("llama2-7b", 512, LLAMA2_7B_PARAMETERS)
    assert row["grad_rel_err"] is None and (row["dtype"], row["optimizer"]) == ("bf16", "adam")


def test_a_config_json_is_found_next_to_the_study_not_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.json").write_text(json.dumps(_tiny_gpt_config()))
    (tmp_path / "s.toml").write_text('[model]\nmodel = "models/mine.json"\nseq_len = 64\n')
    monkeypatch.chdir("/")
    study = load_study(str(tmp_path / "s.toml"))
    assert study.model.model == str(tmp_path / "models" / "mine.json") and study.model.seq_len == 64
    assert study.compare.partitions == ("uniform",)  # a decoder study's balanced is not wired yet
    config = study.run_config(strategy="gpipe")
    assert (config.model, config.seq_len, config.compute) == (study.model.model, 64, True)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[model]\nmodel = "tiny-gpt"\nlayers = "8,8"',
            "[model].layers: a decoder's layers come from [model].model; give either layers or model",
        ),  # fmt: skip
        ('[model]\nmodel = "gpt5"', "[model].model: unknown model preset 'gpt5'; use one of bloom-176b, gpt3-175b"),
        ('[model]\nmodel = "none/here.json"', "[model].model: model config file"),
        ("[model]\nmodel = 7", "[model].model: 7 is not a string"),
        ('[model]\nmodel = "tiny-gpt"\nseq_len = 129', "[model].seq_len: sequence length 129 is longer than the 128"),
        ('[model]\nmodel = "tiny-gpt"\nseq_len = 0', "[model].seq_len: 0 is not a whole number of at least 1"),
        ("[model]\nseq_len = 16", "[model].seq_len: only a decoder has a sequence length"),
        ('[model]\nmodel = "tiny-gpt"\ncompute = "no"', '[model].compute: "no" is not true or false'),
        ('[model]\nmodel = "tiny-gpt"\nloss = "mse"', "[model].loss: 'mse' is the MLP's"),
        (
            '[model]\nmodel = "tiny-gpt"\n[compare]\npartitions = ["uniform", "balanced"]',
            "[compare].partitions: 'balanced' is not wired into studies of a decoder ([model].model) yet",
        ),  # fmt: skip
        (
            '[model]\nmodel = "tiny-gpt"\n[train]\nsteps = 2',
            "[train]: a study does not train a decoder ([model].model) yet",
        ),
        ("[model]\ncompute = false\n[train]\nsteps = 2", "[train]: training needs real compute"),
        ('[model]\nmodel = "tiny-gpt"\n[compare]\npartitions = ["5,5"]', "'5,5' does not sum to the 11 layers"),
        (
            '[model]\nmodel = "tiny-gpt"\n[sweep]\ndevices = [12]',
            "12 devices are more than the 11 layers of [model].model",
        ),  # fmt: skip
    ],
)
def test_a_bad_decoder_study_names_the_key_and_writes_nothing(tmp_path, capsys, text, message):
    study = tmp_path / "bad.toml"
    study.write_text(text)
    assert main(["report", str(study), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "bad.toml" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["bad.toml"]


SWEEP = """
[model]
model = "tiny-gpt"
batch = 8

[axes]
strategy = ["gpipe", "zb-h1"]
seq_len = [32, 128]
devices = [2]
microbatches = [4]
"""


def test_a_decoder_sweep_gives_what_pipesched_run_gives_for_each_point(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(path), "-o", str(out), "--workers", "1"]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in open(out)]
    assert sorted((r["point"]["strategy"], r["point"]["seq_len"]) for r in records) == [
        ("gpipe", 32), ("gpipe", 128), ("zb-h1", 32), ("zb-h1", 128)
    ]  # fmt: skip
    for record in records:
        p = record["point"]
        assert record["ok"], record
        argv = ["run", "--model", "tiny-gpt", "--seq-len", str(p["seq_len"]), "--batch", "8", "--devices", "2",
                "--microbatches", "4", "--strategy", p["strategy"], "--no-compute", "--json"]  # fmt: skip
        assert main(argv) == 0
        single = json.loads(capsys.readouterr().out)
        assert record["makespan"] == single["makespan"]
        assert record["bubble_fraction"] == single["bubble_fraction"]
        assert record["peak_memory_bytes"] == max(single["peak_memory_bytes"])
        assert record["peak_activation_bytes"] == max(single["peak_activation_bytes"])
    # four times the tokens: more work and more activations kept, on the same schedule
    by = {(r["point"]["strategy"], r["point"]["seq_len"]): r for r in records}
    for strategy in ("gpipe", "zb-h1"):
        assert by[strategy, 128]["makespan"] > by[strategy, 32]["makespan"]
        assert by[strategy, 128]["peak_activation_bytes"] > by[strategy, 32]["peak_activation_bytes"]


def test_a_sweeps_config_json_is_found_next_to_the_sweep_file(tmp_path, monkeypatch):
    (tmp_path / "mine.json").write_text(json.dumps(_tiny_gpt_config()))
    (tmp_path / "s.toml").write_text('[model]\nmodel = "mine.json"\nseq_len = 16\n[axes]\ndevices = [2]\n')
    monkeypatch.chdir("/")
    (point,) = load_sweep(str(tmp_path / "s.toml")).points()
    assert point["model"] == str(tmp_path / "mine.json") and point["seq_len"] == 16


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[model]\nmodel = "tiny-gpt"\nlayers = "8,8"\n[axes]\ndevices = [2]',
            "[model].layers: a decoder's layers come from [model].model; give either layers or model",
        ),  # fmt: skip
        ('[model]\nmodel = "gpt5"\n[axes]\ndevices = [2]', "[model].model: unknown model preset 'gpt5'; use one of"),
        (
            '[model]\nmodel = "tiny-gpt"\nseq_len = 200\n[axes]\ndevices = [2]',
            "[model].seq_len: sequence length 200 is longer than the 128 positions",
        ),  # fmt: skip
        (
            '[model]\nmodel = "tiny-gpt"\n[axes]\nseq_len = [64, 256]',
            "[axes].seq_len: sequence length 256 is longer than the 128 positions",
        ),  # fmt: skip
        ("[axes]\nseq_len = [64]", "[axes].seq_len: only a decoder has a sequence length"),
        ('[model]\nmodel = "tiny-gpt"\n[axes]\nseq_len = [0]', "[axes].seq_len: 0 is not a whole number"),
        (
            '[model]\nmodel = "tiny-gpt"\n[axes]\npartition = ["uniform", "balanced"]',
            "[axes].partition: 'balanced' is not wired into sweeps of a decoder ([model].model) yet",
        ),  # fmt: skip
        (
            '[model]\nmodel = "tiny-gpt"\n[axes]\npartition = ["5,5"]',
            "[axes].partition: 5,5 sums to 10 layers but the model has 11",
        ),  # fmt: skip
    ],
)
def test_bad_decoder_sweep_files_are_named(tmp_path, capsys, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    assert main(["sweep", str(path), "-o", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r.jsonl").exists()


def test_the_committed_7b_report_is_the_model_cards_model_and_the_readme_quotes_it():
    root = pathlib.Path(__file__).resolve().parent.parent
    study = load_study(str(root / "reports" / "llama2-7b.toml"))
    assert (study.model.model, study.model.compute, study.hardware.devices) == ("llama2-7b", False, 8)
    metrics = json.loads((root / "reports" / "llama2-7b" / "metrics.json").read_text())
    rows = {r["strategy"]: r for r in metrics["compare"]}
    assert {r["parameters"] for r in rows.values()} == {LLAMA2_7B_PARAMETERS}
    readme = " ".join((root / "README.md").read_text().split())  # the bullet's lines joined
    for strategy in ("zb-v", "1f1b", "gpipe"):  # the step and bubble the README quotes, from the committed run
        row = rows[strategy]
        assert f"{row['makespan']:.2f} s" in readme and f"{row['bubble_fraction']:.4f}" in readme
    # 16 micro-batches in flight on GPipe: the peak the README quotes, in GiB
    assert f"{max(rows['gpipe']['peak_memory_bytes']) / 2**30:.2f} GiB" in readme


def test_a_decoder_study_too_big_for_this_machine_names_the_compute_key(tmp_path, capsys, monkeypatch):
    # tiny-gpt's float64 weights alone, three copies (model, gradients, reference), are 24 x 424,576 bytes
    monkeypatch.setattr("pipesched.decoder.assemble.machine_memory", lambda: 24 * TINY_GPT_PARAMETERS - 1)
    study = tmp_path / "big.toml"
    study.write_text('[model]\nmodel = "tiny-gpt"\nseq_len = 16\nbatch = 32\n')
    assert main(["report", str(study), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "big.toml: [model].compute: tiny-gpt with real NumPy compute needs at least" in err
    assert "use compute = false, a smaller model such as tiny-gpt, or a smaller [model].batch" in err
    assert err.count("\n") == 1 and sorted(os.listdir(tmp_path)) == ["big.toml"]
    study.write_text('[model]\nmodel = "tiny-gpt"\nseq_len = 16\nbatch = 32\ncompute = false\n')
    load_study(str(study))  # shapes only: no arrays to hold
