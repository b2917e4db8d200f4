"""Measured layer costs: time each layer's real NumPy forward and backward, repeat, take the median.

Like torchgpipe's ``balance_by_time``, but every layer is timed ``repeats``
times after a warm-up and the median kept, so one slow run does not move a
cut. Measured times vary from machine to machine and run to run; the flops
cost model is the deterministic default.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from ..model import Model, backward_input, backward_weight, forward

__all__ = ["profile_layers"]


def profile_layers(model: Model, rows: int, repeats: int = 5, seed: int = 0) -> list[float]:
    """Median seconds of forward + backward (I and W) of each layer on ``rows`` samples.

    >>> times = profile_layers(Model.from_sizes([8, 8, 4]), rows=4, repeats=3)
    >>> len(times), all(t > 0 for t in times)
    (2, True)
    """
    if repeats < 1:
        raise ValueError(f"repeats {repeats} is not allowed; use 1 or more")
    rng = np.random.default_rng(seed)
    times = []
    for layer, params in zip(model.layers, model.params):
        x = rng.standard_normal((rows, layer.in_features))
        grads = [(np.zeros_like(params[0]), np.zeros_like(params[1]))]

        def step(layer=layer, params=params, x=x, grads=grads) -> None:  # bound now: timed in this iteration
            y, acts = forward([layer], [params], x)
            _, dzs = backward_input([layer], [params], acts, np.ones_like(y))
            backward_weight(acts, dzs, grads)

        step()  # warm-up: caches, lazy allocations
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            samples.append(time.perf_counter() - start)
        times.append(statistics.median(samples))
    return times
