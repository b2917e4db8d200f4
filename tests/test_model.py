"""The NumPy layers against finite differences, and the layer-width parser."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched.errors import ConfigError
from pipesched.model import (
    LOSSES,
    Model,
    backward_input,
    backward_weight,
    forward,
    full_batch_gradients,
    make_data,
    parse_layers,
    saved_widths,
)


def _loss(model, x, target, loss):
    y, _ = forward(model.layers, model.params, x)
    return LOSSES[loss](y, target, 1.0 / len(x))[0]


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_gradients_match_central_finite_differences(loss):
    widths = [5, 7, 6, 3]
    model = Model.from_sizes(widths, seed=3)
    x, target = make_data(widths, batch=9, loss=loss, seed=3)
    _, grads = full_batch_gradients(model, x, target, loss)
    eps = 1e-6
    for (w, b), (gw, gb) in zip(model.params, grads):
        for param, grad in ((w, gw), (b, gb)):
            numeric = np.zeros_like(param)
            for idx in np.ndindex(param.shape):
                keep = param[idx]
                param[idx] = keep + eps
                plus = _loss(model, x, target, loss)
                param[idx] = keep - eps
                minus = _loss(model, x, target, loss)
                param[idx] = keep
                numeric[idx] = (plus - minus) / (2 * eps)
            np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_input_gradient_matches_finite_differences():
    widths = [4, 5, 3]
    model = Model.from_sizes(widths, seed=1)
    x = np.random.default_rng(0).standard_normal((3, 4))
    probe = np.random.default_rng(1).standard_normal((3, 3))  # loss = sum(y * probe)
    _, acts = forward(model.layers, model.params, x)
    dx, _ = backward_input(model.layers, model.params, acts, probe)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        yp = forward(model.layers, model.params, xp)[0]
        ym = forward(model.layers, model.params, xm)[0]
        numeric[idx] = np.sum((yp - ym) * probe) / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-9)


@given(rows=st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_gradients_of_row_blocks_add_up_to_the_full_batch(rows):
    """Losses are scaled by the whole batch, so micro-batch gradients simply add."""
    widths = [3, 4, 2]
    model = Model.from_sizes(widths, seed=2)
    x, target = make_data(widths, batch=sum(rows), loss="cross_entropy", seed=2)
    _, reference = full_batch_gradients(model, x, target, "cross_entropy")
    total = model.zeros_like_params()
    start = 0
    for n in rows:
        part = slice(start, start + n)
        y, acts = forward(model.layers, model.params, x[part])
        _, dy = LOSSES["cross_entropy"](y, target[part], 1.0 / len(x))
        _, dzs = backward_input(model.layers, model.params, acts, dy, need_dx=False)
        backward_weight(acts, dzs, total)
        start += n
    for (gw, gb), (rw, rb) in zip(total, reference):
        np.testing.assert_allclose(gw, rw, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gb, rb, rtol=1e-12, atol=1e-15)


def test_the_seed_model_has_eleven_layers():
    model = Model.from_sizes(parse_layers("128,256x10,10"))
    assert len(model.layers) == 11
    assert [layer.relu for layer in model.layers] == [True] * 10 + [False]
    assert model.layers[-1].out_features == 10


def test_saved_widths_counts_inputs_and_a_needed_output():
    model = Model.from_sizes([4, 6, 5, 3])
    assert saved_widths(model.layers, keep_output=False) == 4 + 6 + 5
    assert saved_widths(model.layers, keep_output=True) == 4 + 6 + 5 + 3


@pytest.mark.parametrize("text", ["", "12", "a,b", "12,0", "12,4x0", "12,,4", "12,4y3"])
def test_malformed_layers_are_refused_by_name(text):
    with pytest.raises(ConfigError, match="--layers"):
        parse_layers(text)
