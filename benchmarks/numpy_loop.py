"""Baseline: a plain NumPy loop doing the forwards and backwards pipesched's run does, nothing else.

The same model (He-initialised dense layers with ReLU, float64), the same
micro-batches, softmax cross-entropy, gradients accumulated over
micro-batches. Written out here, not imported from pipesched.

    python benchmarks/numpy_loop.py 1024x9 512 8
"""

import sys

import numpy as np


def main(layers: str, batch: int, microbatches: int) -> float:
    width, count = (int(v) for v in layers.split("x"))
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((width, width)) * np.sqrt(2.0 / width) for _ in range(count - 1)]
    biases = [np.zeros(width) for _ in weights]
    grads_w = [np.zeros_like(w) for w in weights]
    grads_b = [np.zeros_like(b) for b in biases]
    x_all = rng.standard_normal((batch, width))
    labels = rng.integers(0, width, batch)
    loss = 0.0
    for part in np.array_split(np.arange(batch), microbatches):
        acts = [x_all[part]]
        for i, (w, b) in enumerate(zip(weights, biases)):
            z = acts[-1] @ w
            z += b
            if i < len(weights) - 1:
                np.maximum(z, 0.0, out=z)
            acts.append(z)
        logits = acts[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        rows = np.arange(len(part))
        loss += float(np.sum(np.log(total[:, 0]) - shifted[rows, labels[part]])) / batch
        g = exp / total
        g[rows, labels[part]] -= 1.0
        g /= batch
        for i in reversed(range(len(weights))):
            if i < len(weights) - 1:
                g = g * (acts[i + 1] > 0)
            grads_w[i] += acts[i].T @ g
            grads_b[i] += g.sum(axis=0)
            if i > 0:
                g = g @ weights[i].T
    return loss


if __name__ == "__main__":
    print(f"loss {main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])):.6f}")
