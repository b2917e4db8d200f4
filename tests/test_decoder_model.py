"""A whole decoder: its gradient against finite differences, micro-batches adding up, tied matrices, causality."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched.decoder.config import DecoderConfig, preset
from pipesched.decoder.layers import cross_entropy
from pipesched.decoder.model import (
    DecoderModel,
    backward_input,
    backward_weight,
    forward,
    full_batch_gradients,
    make_tokens,
)

GPT = DecoderConfig(
    hidden_size=8,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    intermediate_size=16,
    vocab_size=13,
    max_positions=8,
    tie_embeddings=True,
    activation="gelu",
    position="learned",
    norm="layernorm",
    bias=True,
)
LLAMA = replace(
    GPT,
    num_heads=4,
    num_kv_heads=2,
    tie_embeddings=False,
    activation="silu",
    position="rotary",
    norm="rmsnorm",
    bias=False,
)
CONFIGS = {"gpt-tied": GPT, "llama-gqa": LLAMA, "llama-tied": replace(LLAMA, tie_embeddings=True)}


def _model(config, seed=0):
    """A model whose every parameter is far from its start (std 0.5; gains not 1, biases not 0)."""
    model = DecoderModel.from_config(config, seed=seed, std=0.5)
    rng = np.random.default_rng(seed + 1)
    for params in model.params:
        for name, array in params.items():
            if name.endswith("gain") or name.endswith("bias") or name.startswith("b"):
                array[...] = rng.standard_normal(array.shape) * 0.3 + (1.0 if name.endswith("gain") else 0.0)
    return model


def _loss(model, inputs, labels):
    logits, _ = forward(model.layers, model.params, inputs)
    return cross_entropy(logits, labels, 1.0 / labels.size, grad=False)[0]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_full_model_gradient_matches_finite_differences_at_random_coordinates(name):
    model = _model(CONFIGS[name])
    inputs, labels = make_tokens(model.config, batch=3, seq_len=6, seed=1)
    _, grads = full_batch_gradients(model, inputs, labels)
    rng = np.random.default_rng(2)
    eps = 1e-6
    for i, params in enumerate(model.params):
        for key, array in params.items():
            for _ in range(2):  # two coordinates of every tensor
                idx = tuple(int(rng.integers(n)) for n in array.shape)
                if key == "token":  # a row the data uses, so that the coordinate's gradient is not zero
                    idx = (int(inputs[0, 0]),) + idx[1:]
                keep = array[idx]
                array[idx] = keep + eps
                plus = _loss(model, inputs, labels)
                array[idx] = keep - eps
                minus = _loss(model, inputs, labels)
                array[idx] = keep
                numeric = (plus - minus) / (2 * eps)
                assert grads[i][key][idx] == pytest.approx(numeric, rel=1e-6, abs=1e-9), (i, key, idx)


def _microbatch_gradients(model, inputs, labels, sizes):
    """Each micro-batch through the whole chain with the full batch's scale; gradients and losses summed."""
    scale = 1.0 / labels.size
    grads = model.zeros_like_params()
    total = 0.0
    start = 0
    for size in sizes:
        part = slice(start, start + size)
        start += size
        logits, kept = forward(model.layers, model.params, inputs[part])
        loss, dlogits = cross_entropy(logits, labels[part], scale)
        total += loss
        dx, deferred = backward_input(model.layers, model.params, kept, dlogits)
        assert dx is None  # the embedding's input is token ids
        backward_weight(model.layers, model.params, deferred, grads)
    return total, model.tie_gradients(grads)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(sorted(CONFIGS)), st.lists(st.integers(1, 3), min_size=1, max_size=4), st.integers(0, 100))
def test_microbatch_gradients_add_up_to_the_full_batch_gradient(name, sizes, seed):
    model = _model(CONFIGS[name], seed=seed)
    inputs, labels = make_tokens(model.config, batch=sum(sizes), seq_len=5, seed=seed)
    loss, reference = full_batch_gradients(model, inputs, labels)
    total, grads = _microbatch_gradients(model, inputs, labels, sizes)
    assert total == pytest.approx(loss, rel=1e-12)
    for layer_grads, layer_ref in zip(grads, reference):
        for key, ref in layer_ref.items():
            # the key bias's gradient is zero up to round-off (softmax ignores a score added to a whole row)
            assert np.linalg.norm(layer_grads[key] - ref) <= 1e-10 * np.linalg.norm(ref) + 1e-14, key


def test_tied_gradient_is_the_sum_of_the_untied_embedding_and_output_gradients():
    tied = _model(GPT)
    untied = DecoderModel.from_config(replace(GPT, tie_embeddings=False))
    for params, same in zip(untied.params, tied.params):
        for key in params:
            params[key] = same[key].copy()  # the same values, in two separate matrices
    untied.params[-1]["weight"] = tied.params[0]["token"].copy()
    inputs, labels = make_tokens(GPT, batch=2, seq_len=5, seed=3)
    loss_tied, g_tied = full_batch_gradients(tied, inputs, labels)
    loss_untied, g_untied = full_batch_gradients(untied, inputs, labels)
    assert loss_tied == loss_untied
    assert tied.params[0]["token"] is tied.params[-1]["weight"]
    total = g_untied[0]["token"] + g_untied[-1]["weight"]
    np.testing.assert_allclose(g_tied[0]["token"], total, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(g_tied[-1]["weight"], total, rtol=1e-13, atol=1e-16)
    # and the sum is the derivative with respect to the one shared entry, by finite differences
    idx, eps, shared = (int(inputs[1, 2]), 3), 1e-6, tied.params[0]["token"]
    keep = shared[idx]
    shared[idx] = keep + eps
    plus = _loss(tied, inputs, labels)
    shared[idx] = keep - eps
    minus = _loss(tied, inputs, labels)
    shared[idx] = keep
    assert total[idx] == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)


def test_the_parameter_count_counts_a_tied_matrix_once():
    tied, untied = DecoderModel.from_config(GPT), DecoderModel.from_config(replace(GPT, tie_embeddings=False))
    arrays = {id(a): a.size for params in tied.params for a in params.values()}  # distinct arrays only
    assert tied.parameter_count == sum(arrays.values())
    assert untied.parameter_count == tied.parameter_count + 13 * 8
    assert tied.layers[-1].param_count == 13 * 8  # the last stage still holds the matrix


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(sorted(CONFIGS)), st.integers(1, 5), st.integers(0, 1000))
def test_logits_at_t_do_not_depend_on_tokens_after_t(name, cut, seed):
    model = _model(CONFIGS[name], seed=seed)
    inputs, _ = make_tokens(model.config, batch=2, seq_len=6, seed=seed)
    later = inputs.copy()
    later[:, cut:] = (later[:, cut:] + 1 + np.arange(6 - cut)) % model.config.vocab_size
    logits, _ = forward(model.layers, model.params, inputs)
    logits_later, _ = forward(model.layers, model.params, later)
    np.testing.assert_allclose(logits[:, :cut], logits_later[:, :cut], rtol=1e-12, atol=1e-14)
    assert not np.allclose(logits[:, cut:], logits_later[:, cut:])


def test_token_data_is_deterministic_and_shifted_by_one():
    config = preset("tiny-gpt")
    a, b = make_tokens(config, 4, 16, seed=5), make_tokens(config, 4, 16, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    inputs, labels = a
    assert inputs.dtype == np.int64 and inputs.min() >= 0 and inputs.max() < config.vocab_size
    assert np.array_equal(inputs[:, 1:], labels[:, :-1])
    assert not np.array_equal(make_tokens(config, 4, 16, seed=6)[0], inputs)


def test_the_tiny_preset_learns_under_plain_sgd():
    """The data is learnable: a few SGD steps on the full-batch gradient lower the loss."""
    model = DecoderModel.from_config(preset("tiny-gpt"), seed=0)
    inputs, labels = make_tokens(model.config, batch=8, seq_len=32, seed=0)
    first, _ = full_batch_gradients(model, inputs, labels)
    for _ in range(5):
        loss, grads = full_batch_gradients(model, inputs, labels)
        seen = set()
        for params, layer_grads in zip(model.params, grads):
            for key, array in params.items():
                if id(array) not in seen:  # a tied matrix steps once, by the summed gradient
                    seen.add(id(array))
                    array -= 1.0 * layer_grads[key]
    assert loss < first - 0.1
