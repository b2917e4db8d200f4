"""``pipesched train --model``: real optimizer steps on a decoder, held to a plain NumPy loop of full-batch
gradients and hand-written SGD and Adam updates (a tied matrix updated once)."""

import json

import numpy as np
import pytest

from pipesched import RunConfig, pipeline
from pipesched.cli import main
from pipesched.decoder import DecoderModel, full_batch_gradients, load_config, make_tokens

#: A GPT-2-shaped decoder (LayerNorm, GELU, learned positions, tied) and a LLaMA-shaped one (RMSNorm,
#: SwiGLU, grouped-query attention, rotary positions, untied), both tiny.
GPT = {"model_type": "gpt2", "n_embd": 8, "n_layer": 2, "n_head": 2, "n_inner": 16, "n_positions": 6,
       "vocab_size": 12, "activation_function": "gelu_new", "tie_word_embeddings": True}  # fmt: skip
LLAMA = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "intermediate_size": 12, "vocab_size": 12, "max_position_embeddings": 6,
         "hidden_act": "silu", "tie_word_embeddings": False}  # fmt: skip


def reference_training(path, batch, seq_len, seed, steps, lr, optimizer):
    """The plain loop: full-batch gradients, then SGD or Adam (Kingma and Ba 2015, Algorithm 1) by hand.

    A tied output matrix is the embedding's own array: its gradient (the pair's sum) is applied once.
    """
    model = DecoderModel.from_config(load_config(path), seed=seed)
    inputs, labels = make_tokens(model.config, batch, seq_len, seed=seed)
    tied = {tie.second for tie in model.ties}  # the second place of a tied pair: the same array as the first
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    moments, squares, losses = {}, {}, []
    for t in range(1, steps + 1):
        loss, grads = full_batch_gradients(model, inputs, labels)
        losses.append(loss)
        for i, layer_params in enumerate(model.params):
            for name, w in layer_params.items():
                if (i, name) in tied:
                    continue
                g = grads[i][name]
                if optimizer == "sgd":
                    w -= lr * g
                    continue
                m = moments[(i, name)] = beta1 * moments.get((i, name), 0.0) + (1 - beta1) * g
                v = squares[(i, name)] = beta2 * squares.get((i, name), 0.0) + (1 - beta2) * g * g
                w -= lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
    return losses, model


def _train_keeping_the_model(monkeypatch, config, steps, lr):
    """``train``'s results and the decoder it updated (the run it prepares, caught on its way back)."""
    prepared = []
    real_prepare = pipeline.prepare

    def prepare(c):
        prepared.append(real_prepare(c))
        return prepared[-1]

    monkeypatch.setattr(pipeline, "prepare", prepare)
    results = pipeline.train(config, steps=steps, lr=lr)
    assert len(prepared) == 1  # one model, updated in place step after step
    return results, prepared[0].decoder_model


@pytest.mark.parametrize(
    "shape, strategy, devices, microbatches, optimizer, lr",
    [
        ("gpt", "gpipe", 2, 3, "adam", 0.01),  # uneven micro-batches; the tied pair on devices 0 and 1
        ("gpt", "zb-v", 2, 4, "sgd", 0.5),  # split backward; the V puts both ends of the tie on device 0
        ("gpt", "dp", 2, 4, "adam", 0.01),  # replicas: Adam steps on the all-reduced sum
        ("llama", "interleaved", 2, 4, "adam", 0.01),  # untied, GQA, SwiGLU, two stages per device
        ("llama", "1f1b", 3, 5, "sgd", 0.5),
    ],
)
def test_every_decoder_step_equals_a_plain_numpy_loop(
    tmp_path, monkeypatch, shape, strategy, devices, microbatches, optimizer, lr
):
    path = tmp_path / f"{shape}.json"
    path.write_text(json.dumps(GPT if shape == "gpt" else LLAMA))
    batch, seq_len, seed, steps = 7, 5, 3, 4
    config = RunConfig(model=str(path), seq_len=seq_len, batch=batch, seed=seed, strategy=strategy, devices=devices,
                       microbatches=microbatches, optimizer=optimizer, cost="unit")  # fmt: skip
    results, model = _train_keeping_the_model(monkeypatch, config, steps, lr)
    losses, reference = reference_training(str(path), batch, seq_len, seed, steps, lr, optimizer)
    assert [r.loss for r in results] == pytest.approx(losses, rel=1e-10, abs=1e-10)
    assert losses[-1] < losses[0]  # the case learns, so a wrong update cannot hide in a flat loss
    for got, want in zip(model.params, reference.params):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-10)
    if shape == "gpt":  # still one matrix, stepped once (twice would leave the loop behind)
        assert model.params[-1]["weight"] is model.params[0]["token"]


def test_train_takes_a_decoder_from_the_command_line(capsys):
    argv = ["train", "--model", "tiny-gpt", "--seq-len", "8", "--batch", "8", "--steps", "3", "--lr", "0.003"]
    assert main([*argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["optimizer"] for row in rows] == ["adam"] * 3  # a decoder's own optimizer
    assert all(row["grad_rel_err"] < 1e-10 for row in rows) and rows[-1]["loss"] < rows[0]["loss"]
