"""The decoder's NumPy layers against independent references: finite differences, plain loops, complex rotations."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched.decoder.attention import causal_attention, rope, rope_tables
from pipesched.decoder.config import DecoderConfig
from pipesched.decoder.layers import Block, Embedding, FinalNorm, Output, cross_entropy
from pipesched.errors import ConfigError


def _config(**changes):
    base = dict(
        hidden_size=8,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        intermediate_size=12,
        vocab_size=11,
        max_positions=8,
        tie_embeddings=False,
    )
    base.update(changes)
    return DecoderConfig(**base)


# Every variant a block has, crossed so that each appears with others: GPT-2's, LLaMA's, and two mixes.
BLOCKS = {
    "gpt": _config(activation="gelu", position="learned", norm="layernorm", bias=True),
    "llama-gqa": _config(num_heads=4, num_kv_heads=2, activation="silu", position="rotary", norm="rmsnorm", bias=False),
    "mqa-rotary-gelu-bias": _config(num_heads=4, num_kv_heads=1, activation="gelu", position="rotary", bias=True),
    "rms-silu-bias": _config(activation="silu", position="learned", norm="rmsnorm", bias=True),
}


def _random_params(layer, rng):
    """Parameters far from their initial values (gains not 1, biases not 0), so every term of a gradient shows."""
    return {
        name: rng.standard_normal(shape) * 0.5 + (1.0 if name.endswith("gain") else 0.0)
        for name, shape in layer.shapes().items()
    }


def _directional_check(f, point, grad, rng, eps=1e-5, directions=2):
    """Central differences of the scalar ``f`` at ``point`` along random directions against ``<grad, direction>``."""
    for _ in range(directions):
        direction = rng.standard_normal(point.shape)
        keep = point.copy()
        point += eps * direction
        plus = f()
        point[...] = keep - eps * direction
        minus = f()
        point[...] = keep
        numeric = (plus - minus) / (2 * eps)
        analytic = float(np.sum(grad * direction))
        assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic)), (numeric, analytic)


def _check_layer(layer, params, x, rng, recompute="none"):
    """I and W of ``layer`` against finite differences of ``sum(forward(x) * probe)``."""
    y, kept = layer.forward(params, x, recompute)
    probe = rng.standard_normal(y.shape)  # loss = sum(y * probe), so dy = probe

    def loss():
        return float(np.sum(layer.forward(params, x, recompute)[0] * probe))

    dx, deferred = layer.backward_input(params, kept, probe)
    grads = layer.zeros()
    layer.backward_weight(params, deferred, grads)
    if dx is not None:
        _directional_check(loss, x, dx, rng)
    for name in params:
        _directional_check(loss, params[name], grads[name], rng)
    return dx, grads


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("recompute", ["none", "selective"])
def test_block_input_and_weight_gradients_match_finite_differences(name, recompute):
    block = Block(BLOCKS[name])
    rng = np.random.default_rng(1)
    params = _random_params(block, rng)
    x = rng.standard_normal((2, 5, 8))
    _check_layer(block, params, x, rng, recompute)


def test_selective_recompute_gives_the_same_gradients_and_keeps_no_probabilities():
    block = Block(BLOCKS["llama-gqa"])
    rng = np.random.default_rng(2)
    params = _random_params(block, rng)
    x, dy = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 5, 8))
    results = {}
    for mode in ("none", "selective"):
        y, kept = block.forward(params, x, mode)
        dx, deferred = block.backward_input(params, kept, dy)
        grads = block.zeros()
        block.backward_weight(params, deferred, grads)
        results[mode] = (y, dx, grads, set(kept))
    assert results["none"][3] - results["selective"][3] == {"p"}
    np.testing.assert_array_equal(results["none"][0], results["selective"][0])
    np.testing.assert_allclose(results["none"][1], results["selective"][1], rtol=1e-13, atol=1e-15)
    for key, g in results["none"][2].items():
        np.testing.assert_allclose(g, results["selective"][2][key], rtol=1e-13, atol=1e-15)


def test_a_block_refuses_full_recompute_which_the_engine_does():
    block = Block(BLOCKS["gpt"])
    params = block.init(np.random.default_rng(0))
    with pytest.raises(ConfigError, match="a block's forward takes recompute 'none' or 'selective', not 'full'"):
        block.forward(params, np.zeros((1, 2, 8)), "full")


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_embedding_weight_gradient_matches_finite_differences(position):
    layer = Embedding(_config(position=position))
    rng = np.random.default_rng(3)
    params = _random_params(layer, rng)
    ids = np.array([[1, 4, 1, 7], [4, 4, 0, 10]])  # repeated tokens: their gradients must add up
    y, kept = layer.forward(params, ids)
    probe = rng.standard_normal(y.shape)
    dx, deferred = layer.backward_input(params, kept, probe)
    assert dx is None and y.shape == (2, 4, 8)
    grads = layer.zeros()
    layer.backward_weight(params, deferred, grads)
    for name in params:
        _directional_check(lambda: float(np.sum(layer.forward(params, ids)[0] * probe)), params[name], grads[name], rng)
    untouched = [i for i in range(11) if i not in ids]
    assert not grads["token"][untouched].any()


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_final_norm_gradients_match_finite_differences(norm):
    layer = FinalNorm(_config(norm=norm))
    rng = np.random.default_rng(4)
    _check_layer(layer, _random_params(layer, rng), rng.standard_normal((2, 3, 8)), rng)


def test_output_layer_gradients_match_finite_differences():
    layer = Output(_config())
    rng = np.random.default_rng(5)
    _check_layer(layer, _random_params(layer, rng), rng.standard_normal((2, 3, 8)), rng)


def test_cross_entropy_gradient_matches_finite_differences_and_a_plain_loop():
    rng = np.random.default_rng(6)
    logits, labels = rng.standard_normal((2, 3, 11)), rng.integers(11, size=(2, 3))
    scale = 1.0 / 6
    value, dlogits = cross_entropy(logits, labels, scale)
    reference = 0.0  # -log softmax at the label, position by position
    for b in range(2):
        for t in range(3):
            row = logits[b, t]
            reference += -(row[labels[b, t]] - math.log(sum(math.exp(v) for v in row)))
    assert value == pytest.approx(reference * scale, rel=1e-13)
    _directional_check(lambda: cross_entropy(logits, labels, scale, grad=False)[0], logits, dlogits, rng)


def _plain_attention(q, k, v):
    """Causal attention by loops: head h reads key/value head h // (heads / kv_heads)."""
    b, heads, s, d = q.shape
    group = heads // k.shape[1]
    out = np.zeros_like(q)
    for n in range(b):
        for h in range(heads):
            j = h // group
            for i in range(s):
                scores = [float(q[n, h, i] @ k[n, j, t]) / math.sqrt(d) for t in range(i + 1)]
                top = max(scores)
                weights = [math.exp(x - top) for x in scores]
                total = sum(weights)
                out[n, h, i] = sum(w / total * v[n, j, t] for t, w in enumerate(weights))
    return out


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_attention_core_equals_a_plain_loop_for_mha_gqa_and_mqa(heads, kv_heads):
    rng = np.random.default_rng(heads * 10 + kv_heads)
    q = rng.standard_normal((2, heads, 5, 3))
    k, v = rng.standard_normal((2, kv_heads, 5, 3)), rng.standard_normal((2, kv_heads, 5, 3))
    out, p = causal_attention(q, k, v)
    np.testing.assert_allclose(out, _plain_attention(q, k, v), rtol=1e-12, atol=1e-14)
    assert not np.triu(p, k=1).any()  # nothing above the diagonal: no position reads a later one
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-14)


def _gqa_as_mha(config, params):
    """The MHA block and parameters equal to a GQA block: each key/value head copied to the query heads it serves."""
    group, d = config.num_heads // config.num_kv_heads, config.head_dim
    heads = [h // group for h in range(config.num_heads)]
    mha = dict(params)
    for name in ("wk", "wv", "bk", "bv"):
        if name in params:
            mha[name] = np.concatenate([params[name][..., j * d : (j + 1) * d] for j in heads], axis=-1)
    from dataclasses import replace

    return Block(replace(config, num_kv_heads=config.num_heads)), mha


@pytest.mark.parametrize("name", ["llama-gqa", "mqa-rotary-gelu-bias"])
def test_gqa_equals_mha_with_key_value_heads_repeated(name):
    config = BLOCKS[name]
    gqa = Block(config)
    rng = np.random.default_rng(7)
    params = _random_params(gqa, rng)
    mha, mha_params = _gqa_as_mha(config, params)
    x, dy = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 5, 8))
    y_gqa, kept_gqa = gqa.forward(params, x)
    y_mha, kept_mha = mha.forward(mha_params, x)
    np.testing.assert_allclose(y_gqa, y_mha, rtol=1e-12, atol=1e-14)
    dx_gqa, def_gqa = gqa.backward_input(params, kept_gqa, dy)
    dx_mha, def_mha = mha.backward_input(mha_params, kept_mha, dy)
    np.testing.assert_allclose(dx_gqa, dx_mha, rtol=1e-12, atol=1e-14)
    g_gqa, g_mha = gqa.zeros(), mha.zeros()
    gqa.backward_weight(params, def_gqa, g_gqa)
    mha.backward_weight(mha_params, def_mha, g_mha)
    group, d = config.num_heads // config.num_kv_heads, config.head_dim
    for name_ in ("wk", "wv", "bk", "bv"):
        if name_ in g_gqa:  # a shared key/value head's gradient is the sum over the query heads it serves
            for j in range(config.num_kv_heads):
                served = sum(g_mha[name_][..., h * d : (h + 1) * d] for h in range(j * group, (j + 1) * group))
                np.testing.assert_allclose(g_gqa[name_][..., j * d : (j + 1) * d], served, rtol=1e-12, atol=1e-14)
    for name_ in ("wq", "wo", "w_down"):
        np.testing.assert_allclose(g_gqa[name_], g_mha[name_], rtol=1e-12, atol=1e-14)


def test_rope_rotates_pairs_as_complex_numbers():
    rng = np.random.default_rng(8)
    seq, d, theta = 6, 8, 10000.0
    x = rng.standard_normal((2, 3, seq, d))
    cos, sin = rope_tables(seq, d, theta)
    half = d // 2
    z = (x[..., :half] + 1j * x[..., half:]) * np.exp(
        1j * np.outer(np.arange(seq), theta ** (-2.0 * np.arange(half) / d))
    )  # Su et al. 2021: pair i of position t turns by t * theta^(-2i/d)
    np.testing.assert_allclose(rope(x, cos, sin), np.concatenate([z.real, z.imag], axis=-1), rtol=1e-12, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 7), st.integers(0, 7), st.integers(0, 7), st.integers(0, 10**6))
def test_rope_scores_depend_only_on_the_distance_between_positions(t1, t2, shift, seed):
    """<rope(q, t1), rope(k, t2)> = <rope(q, t1 + c), rope(k, t2 + c)>: RoPE encodes relative position."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal(4), rng.standard_normal(4)
    cos, sin = rope_tables(16, 4, 10000.0)

    def score(a, b):
        return float(rope(q, cos[a], sin[a]) @ rope(k, cos[b], sin[b]))

    assert score(t1, t2) == pytest.approx(score(t1 + shift, t2 + shift), rel=1e-9, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from(sorted(BLOCKS)),
    st.integers(1, 5),
    st.integers(0, 10**6),
)
def test_a_block_output_at_t_does_not_depend_on_inputs_after_t(name, cut, seed):
    block = Block(BLOCKS[name])
    rng = np.random.default_rng(seed)
    params = _random_params(block, rng)
    x = rng.standard_normal((2, 6, 8))
    later = x.copy()
    later[:, cut:] = rng.standard_normal((2, 6 - cut, 8))
    y, _ = block.forward(params, x)
    y_later, _ = block.forward(params, later)
    np.testing.assert_allclose(y[:, :cut], y_later[:, :cut], rtol=1e-12, atol=1e-14)
    assert not np.allclose(y[:, cut:], y_later[:, cut:])  # the later positions did change: the check can fail
