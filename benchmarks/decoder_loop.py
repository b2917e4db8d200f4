"""Baseline: the decoder's forwards and backwards over the micro-batches in a plain loop, nothing else.

The same layers pipesched runs (``pipesched.decoder``: its arithmetic is what
is being timed against, not reimplemented), the same micro-batches, the
loss, gradients accumulated: no engine, no schedule, no memory accounting.

    python benchmarks/decoder_loop.py tiny-gpt 64 32 8
"""

import sys

import numpy as np

from pipesched.decoder import DecoderModel, make_tokens, preset
from pipesched.decoder import model as dm
from pipesched.decoder.layers import cross_entropy


def main(name: str, seq_len: int, batch: int, microbatches: int) -> float:
    model = DecoderModel.from_config(preset(name), seed=0)
    inputs, labels = make_tokens(model.config, batch, seq_len, seed=0)
    grads = model.zeros_like_params()
    loss = 0.0
    for part in np.array_split(np.arange(batch), microbatches):
        logits, kept = dm.forward(model.layers, model.params, inputs[part])
        value, dlogits = cross_entropy(logits, labels[part], 1.0 / labels.size)
        loss += value
        _, deferred = dm.backward_input(model.layers, model.params, kept, dlogits)
        dm.backward_weight(model.layers, model.params, deferred, grads)
    return loss


if __name__ == "__main__":
    print(f"loss {main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])):.6f}")
