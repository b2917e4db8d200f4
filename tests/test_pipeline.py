"""train: every SGD and Adam step against a plain NumPy loop of the same model, data and update; the README's
loss figures."""

import pathlib
import re

import numpy as np
import pytest

from pipesched import pipeline
from pipesched.pipeline import RunConfig, train

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()


def _reference_training(widths, batch, seed, steps, lr, optimizer="sgd"):
    """Full-batch SGD or Adam on a ReLU MLP with softmax cross-entropy, written out in plain NumPy.

    Weights and data are drawn as ``pipesched.model`` documents it (He
    initialisation from ``default_rng(seed)``, zero biases; inputs N(0, 1) and
    labels from a random linear teacher, from ``default_rng(seed + 1_000_003)``);
    the forward, the backward and the update are this function's own (Adam's
    as Kingma and Ba 2015 write it, Algorithm 1, with their defaults).
    Returns the loss before each update and the final weights and biases.
    """
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in) for n_in, n_out in zip(widths, widths[1:])]
    biases = [np.zeros(n_out) for n_out in widths[1:]]
    data = np.random.default_rng(seed + 1_000_003)
    x = data.standard_normal((batch, widths[0]))
    teacher = data.standard_normal((widths[0], widths[-1])) / np.sqrt(widths[0])
    labels = np.argmax(x @ teacher, axis=1)
    rows = np.arange(batch)
    losses = []
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    moments = [[np.zeros_like(p) for p in (w, b)] for w, b in zip(weights, biases)]  # first, per array
    squares = [[np.zeros_like(p) for p in (w, b)] for w, b in zip(weights, biases)]  # second, per array
    for t in range(1, steps + 1):
        outputs = [x]  # the input of each layer, then the logits
        for i, (w, b) in enumerate(zip(weights, biases)):
            z = outputs[-1] @ w + b
            outputs.append(np.maximum(z, 0.0) if i < len(weights) - 1 else z)
        logits = outputs[-1] - outputs[-1].max(axis=1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses.append(-log_softmax[rows, labels].mean())
        dz = np.exp(log_softmax)
        dz[rows, labels] -= 1.0
        dz /= batch  # d(mean loss)/d(logits)
        grads = [None] * len(weights)
        for i in reversed(range(len(weights))):
            grads[i] = (outputs[i].T @ dz, dz.sum(axis=0))
            if i > 0:
                dz = (dz @ weights[i].T) * (outputs[i] > 0)  # through layer i-1's ReLU
        for i, (gw, gb) in enumerate(grads):
            if optimizer == "sgd":
                weights[i] = weights[i] - lr * gw
                biases[i] = biases[i] - lr * gb
                continue
            steps_taken = []
            for j, (p, g) in enumerate(((weights[i], gw), (biases[i], gb))):
                moments[i][j] = beta1 * moments[i][j] + (1 - beta1) * g
                squares[i][j] = beta2 * squares[i][j] + (1 - beta2) * g**2
                m_hat = moments[i][j] / (1 - beta1**t)
                v_hat = squares[i][j] / (1 - beta2**t)
                steps_taken.append(p - lr * m_hat / (np.sqrt(v_hat) + eps))
            weights[i], biases[i] = steps_taken
    return losses, weights, biases


def _train_keeping_the_model(monkeypatch, config, steps, lr):
    """``train``'s results and the model it updated (the run it prepares, caught on its way back)."""
    prepared = []

    def prepare(c):
        prepared.append(real_prepare(c))
        return prepared[-1]

    real_prepare = pipeline.prepare
    monkeypatch.setattr(pipeline, "prepare", prepare)
    results = train(config, steps=steps, lr=lr)
    assert len(prepared) == 1  # one model, updated in place step after step
    return results, prepared[0].model


def _unit(widths, **fields):
    """A unit-cost run config of the MLP with these layer widths."""
    return RunConfig(layers=",".join(map(str, widths)), cost="unit", **fields)


@pytest.mark.parametrize(
    "strategy, devices, microbatches",
    [
        ("gpipe", 2, 3),  # full backward, uneven micro-batches (4, 3, 3 rows)
        ("zb-h1", 3, 4),  # split backward: the gradient is summed by the Ws
        ("interleaved", 2, 5),  # two stages per device
        ("dp", 2, 4),  # replicas: the gradient is their all-reduced sum
    ],
)
def test_every_sgd_step_equals_a_plain_numpy_loop(monkeypatch, strategy, devices, microbatches):
    widths, batch, seed, steps, lr = [6, 9, 7, 8, 5, 4], 10, 3, 6, 0.5  # a large rate: every update shows
    config = _unit(widths, strategy=strategy, devices=devices, microbatches=microbatches, batch=batch, seed=seed)
    results, model = _train_keeping_the_model(monkeypatch, config, steps, lr)
    losses, weights, biases = _reference_training(widths, batch, seed, steps, lr)
    assert [r.loss for r in results] == pytest.approx(losses, rel=1e-12, abs=1e-12)
    assert losses[-1] < losses[0]  # the case learns, so a wrong update cannot hide in a flat loss
    for (w, b), ref_w, ref_b in zip(model.params, weights, biases):
        np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-12)
        np.testing.assert_allclose(b, ref_b, rtol=0, atol=1e-12)
        assert np.abs(ref_b).max() > 1e-3  # the biases moved: their update is under test


@pytest.mark.parametrize(
    "strategy, devices, microbatches, dtype",
    [
        ("gpipe", 2, 3, "bf16"),  # uneven micro-batches; the dtype changes what memory counts, not the update
        ("zb-h1", 3, 4, "fp64"),  # split backward
        ("dp", 2, 4, "fp32"),  # replicas: Adam steps on the all-reduced sum
    ],
)
def test_every_adam_step_equals_a_plain_numpy_loop(monkeypatch, strategy, devices, microbatches, dtype):
    widths, batch, seed, steps, lr = [6, 9, 7, 8, 5, 4], 10, 3, 6, 0.01
    config = _unit(
        widths, strategy=strategy, devices=devices, microbatches=microbatches, batch=batch, seed=seed, dtype=dtype,
        optimizer="adam",
    )  # fmt: skip
    results, model = _train_keeping_the_model(monkeypatch, config, steps, lr)
    losses, weights, biases = _reference_training(widths, batch, seed, steps, lr, optimizer="adam")
    sgd_losses, _, _ = _reference_training(widths, batch, seed, steps, lr)
    assert [r.loss for r in results] == pytest.approx(losses, rel=1e-12, abs=1e-12)
    assert losses[-1] < losses[0] and losses[1] != pytest.approx(sgd_losses[1], rel=1e-6)  # Adam's own steps
    for (w, b), ref_w, ref_b in zip(model.params, weights, biases):
        np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-12)
        np.testing.assert_allclose(b, ref_b, rtol=0, atol=1e-12)
        assert np.abs(ref_b).max() > 1e-3  # the biases moved: their update is under test


def test_the_readmes_training_figures_are_the_reference_losses(monkeypatch):
    # "`pipesched train --steps 10 --lr 0.01` ... (2.81 falling to 0.51 on the defaults)"
    claim = re.search(
        r"`pipesched train --steps (\d+) --lr ([\d.]+)`.*?\((\d+\.\d+) falling to (\d+\.\d+) "
        r"on the defaults\)",
        README,
        re.S,
    )
    assert claim, "the README no longer quotes the training losses; update this test with it"
    steps, lr, first, last = int(claim[1]), float(claim[2]), claim[3], claim[4]
    seed_model = [128] + [256] * 10 + [10]  # the README's seed model, 128,256x10,10
    losses, _, _ = _reference_training(seed_model, RunConfig.batch, RunConfig.seed, steps, lr)
    assert (f"{losses[0]:.2f}", f"{losses[-1]:.2f}") == (first, last)
    defaults = RunConfig(reference=False)  # GPipe, K=4, M=8; the gradient check changes no number here
    results, _ = _train_keeping_the_model(monkeypatch, defaults, steps, lr)
    assert [r.loss for r in results] == pytest.approx(losses, rel=1e-12, abs=1e-12)


def test_the_readmes_adam_figures_are_the_reference_losses(monkeypatch):
    # "`--optimizer adam` takes Adam steps instead, `--lr` their step size (with `--lr 0.001`, 2.81 falling to 0.0022)"
    claim = re.search(
        r"`--optimizer adam` takes\s+Adam steps.*?\(with `--lr ([\d.]+)`, (\d+\.\d+) falling to\s+([\d.]+)\)",
        README,
        re.S,
    )
    assert claim, "the README no longer quotes the Adam losses; update this test with it"
    lr, first, last = float(claim[1]), claim[2], claim[3]
    seed_model = [128] + [256] * 10 + [10]
    losses, _, _ = _reference_training(seed_model, RunConfig.batch, RunConfig.seed, 10, lr, optimizer="adam")
    assert (f"{losses[0]:.2f}", f"{losses[-1]:.2g}") == (first, last)
    results, _ = _train_keeping_the_model(monkeypatch, RunConfig(reference=False, optimizer="adam"), 10, lr)
    assert [r.loss for r in results] == pytest.approx(losses, rel=1e-10, abs=1e-12)
