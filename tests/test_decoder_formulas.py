"""``pipesched formulas --model``: a decoder's closed forms, each against a number worked out by hand here."""

import json

from pipesched.cli import main


def test_llama2_7b_forms_are_the_hand_counts(capsys):
    assert main(["formulas", "--model", "llama2-7b", "--json"]) == 0
    forms = json.loads(capsys.readouterr().out)["model"]
    h, f, a, s, V = 4096, 11008, 32, 4096, 32000  # LLaMA-2 7B: Touvron et al. 2023, Table 1 and config.json
    assert forms["seq_len"] == s  # its context length by default
    # per block: q, k, v, o (4h^2, no bias, MHA), SwiGLU gate/up/down (3hf), two RMSNorm gains (2h)
    assert forms["parameters_per_block"] == 4 * h * h + 3 * h * f + 2 * h == 202_383_360
    # in all: 32 blocks, token table and untied output (2Vh), final norm (h): the model card's 6.74B
    assert forms["parameters"] == 32 * 202_383_360 + 2 * V * h + h == 6_738_415_616
    # forward of one block on one sequence: 2 FLOPs per multiply-add over the projections, plus
    # q k^T and p v (2 s^2 h each); I and W each repeat the projections, I the attention core twice
    projections = 2 * s * (4 * h * h + 3 * h * f)
    assert forms["block_flops_per_sequence"] == {
        "forward": projections + 4 * s * s * h,
        "input_gradient": projections + 8 * s * s * h,
        "weight_gradient": projections,
    }
    # Korthikanti et al. 2022, Table 2, b = 1: 34sbh + 5as^2b, 34sbh, 2sbh
    assert forms["korthikanti_block_bytes_per_sequence"] == {
        "none": 34 * s * h + 5 * a * s * s,
        "selective": 34 * s * h,
        "full": 2 * s * h,
    }
    assert forms["bytes_per_parameter_mixed_precision_adam"] == 16  # ZeRO, section 3.1: 2 + 2 + 12
    assert forms["weights_gradients_optimizer_bytes"] == 16 * 6_738_415_616
    assert main(["formulas", "--model", "llama2-7b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["allreduce_bytes"] == 2 * 6_738_415_616  # the model's gradients in bf16, not the MLP's


def test_a_shorter_sequence_and_the_table(capsys):
    assert main(["formulas", "--model", "tiny-gpt", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "model tiny-gpt" in out and "one sequence of 64 tokens" in out and "Korthikanti et al. Table 2" in out


def test_bad_models_are_one_sentence(capsys, tmp_path):
    for argv, message in [
        (["--model", "gpt5"], "unknown model preset 'gpt5'; use one of bloom-176b, gpt3-175b, llama2-70b, llama2-7b"),
        (["--model", "tiny-gpt", "--seq-len", "129"], "sequence length 129 is longer than the 128 positions"),
    ]:
        assert main(["formulas", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
