"""``pipesched run --model``: a decoder end to end through the command line, held to hand counts."""

import json

import pytest

from pipesched.cli import main


def _json(capsys, *argv):
    assert main(["run", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("strategy", ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-v", "dualpipev", "dp"])
def test_tiny_gpt_runs_every_strategy_with_the_full_batch_gradients(capsys, strategy):
    data = _json(capsys, "--model", "tiny-gpt", "--seq-len", "16", "--batch", "8", "--strategy", strategy)
    assert data["grad_rel_err"] < 1e-10 and data["model"] == "tiny-gpt" and data["seq_len"] == 16
    # tiny-gpt by hand (V 256, h 64, 128 positions, 8 blocks, f 256, LayerNorm, biases, tied):
    # embedding 256*64 + 128*64; per block 4h^2 + 4h (attention) + 2hf + f + h (MLP) + 4h (two norms);
    # final norm 2h; the tied output matrix counted once, with the embedding
    h, f = 64, 256
    block = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    assert data["parameters"] == 256 * h + 128 * h + 8 * block + 2 * h == 424_576
    assert (data["dtype"], data["optimizer"]) == ("bf16", "adam")  # a decoder's own precision


def test_a_7b_model_shape_only_holds_its_weights_and_adam_state_by_hand(capsys):
    # LLaMA-2 7B on 8 devices, uniform: 35 layers (embedding, 32 blocks, final norm, output) as 5,5,5,4,...;
    # device 0 holds the token table (32000 x 4096) and 4 blocks of 4h^2 + 3hf + 2h parameters.
    data = _json(capsys, "--model", "llama2-7b", "--no-compute", "--devices", "8", "--microbatches", "16",
                 "--batch", "16")  # fmt: skip
    assert data["partition"] == [5, 5, 5, 4, 4, 4, 4, 4] and data["seq_len"] == 4096
    h, f = 4096, 11008
    count = 32000 * h + 4 * (4 * h * h + 3 * h * f + 2 * h)
    roles = data["memory_by_role"][0]
    assert roles["parameters"] == roles["gradients"] == 2 * count  # bf16
    assert roles["optimizer"] == 12 * count  # fp32 master weights and two moments (ZeRO, section 3.1)
    assert data["parameters"] == 6_738_415_616


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--model", "gpt5"], "unknown model preset 'gpt5'; use one of"),
        (["run", "--model", "tiny-gpt", "--seq-len", "129"], "sequence length 129 is longer than the 128 positions"),
        (["run", "--model", "tiny-gpt", "--loss", "mse"], "--loss mse is the MLP's; a decoder's loss is next-token"),
        (["run", "--model", "llama2-70b"], "--model llama2-70b with real NumPy compute needs at least"),
        (["run", "--model", "tiny-gpt", "--devices", "12"], "but --model tiny-gpt has only 11 layers"),
        (["run", "--model", "missing.json"], "missing.json"),
        (["run", "--seq-len", "16"], "--seq-len 16 is a decoder's sequence length; give --model too"),
        (["balance", "--model", "tiny-gpt", "--balance-by", "measured"], "--balance-by measured does not take --model"),
    ],
)
def test_bad_decoder_runs_are_one_sentence(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_compare_takes_a_decoder_and_every_row_is_exact(capsys):
    assert main(["compare", "--model", "tiny-gpt", "--seq-len", "8", "--batch", "8", "--cost", "unit", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 15  # the fourteen built-ins and auto
    assert all(row["grad_rel_err"] < 1e-10 and row["model"] == "tiny-gpt" for row in rows)
    # under unit cost the schedules keep their closed-form bubbles on a decoder too
    assert all(row["bubble_fraction"] == pytest.approx(row["bubble_formula"]) for row in rows if row["bubble_formula"])


def test_export_takes_the_model_options_and_checks_its_layers(capsys, tmp_path):
    out = tmp_path / "s.csv"
    assert main(["export", "--model", "tiny-gpt", "--devices", "4", "--microbatches", "8", "-o", str(out)]) == 0
    assert out.read_text().count("\n") == 4  # one row per rank
    capsys.readouterr()
    # ZB-V puts 2K = 12 stages on 6 devices; tiny-gpt's chain has 11 layers (embedding, 8 blocks, norm, output)
    assert main(["export", "--model", "tiny-gpt", "--strategy", "zb-v", "--devices", "6", "--microbatches", "12"]) == 2
    assert "plans 12 stages on --devices 6 and --chunks 2 but --model tiny-gpt has only 11 layers" in (
        capsys.readouterr().err
    )
