"""Measured layer costs: time the real NumPy passes the engine runs, repeat, take the median.

Like torchgpipe's ``balance_by_time``, but every pass is timed ``repeats``
times after warm-up runs and the median kept, so one slow run does not move a
cut. ``time_passes`` times a workload's stages exactly as the engine calls
them (``pipesched.compute.Workload``: forward, input-gradient I,
weight-gradient W, and the recompute of ``--remat``); ``profile_layers``
sums a layer's passes for the balancer, and ``pipesched profile`` writes them
to a times file (``pipesched.profile``). Measured times vary from machine to
machine and run to run; the flops cost model is the deterministic default.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from ..compute import Held, NumpyWorkload, Workload
from ..model import Model, make_data

__all__ = ["PASSES", "Passes", "time_passes", "profile_layers"]

#: The passes ``time_passes`` measures, in the engine's names: forward, input-gradient, weight-gradient, recompute.
PASSES = ("F", "I", "W", "R")

#: Per stage, per pass, the seconds of each timed repeat.
Passes = list[dict[str, list[float]]]


def time_passes(
    work: Workload,
    stages: int,
    warmup: int = 1,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Passes, list[Any]]:
    """Seconds of every pass of every stage of ``work`` on its micro-batch 0, and each stage's output.

    Each repeat is one whole step of that micro-batch, as a pipeline runs it:
    the forwards from stage 0 on, each stage's output the next one's input,
    then from the last stage down its I (from the loss on the last stage,
    from the gradient the stage after it returned elsewhere), its W, and its
    recompute from the stage input it would have kept under ``--remat``
    (``Workload.recompute``, a forward run again). The first ``warmup``
    repeats (caches, lazy allocations, BLAS start-up) are left out.

    Returns per stage ``{pass: [seconds per repeat]}`` and the stage outputs
    of the last repeat (what crosses the boundary after the stage).
    """
    if repeats < 1:
        raise ValueError(f"repeats {repeats} is not allowed; use 1 or more")
    # the inputs a re-materialized forward keeps: the stage input alone (stage 0's is the data, which only
    # the workload knows, so a forward without keeping gives it); untimed, so also the first warm-up of F
    remat: list[Held] = []
    x: Any = None
    for stage in range(stages):
        x, held = work.forward(stage, 0, x, keep=False)
        remat.append(held)
    samples: Passes = [{op: [] for op in PASSES} for _ in range(stages)]
    outputs: list[Any] = [None] * stages
    for repeat in range(warmup + repeats):
        record = repeat >= warmup
        kept: list[Held] = []
        x = None
        for stage in range(stages):
            start = clock()
            x, held = work.forward(stage, 0, x, keep=True)
            seconds = clock() - start
            outputs[stage] = x
            kept.append(held)
            if record:
                samples[stage]["F"].append(seconds)
        dy: Any = None
        for stage in reversed(range(stages)):
            start = clock()
            dy, deferred = work.backward_input(stage, 0, kept[stage], dy)
            seconds = clock() - start
            begin = clock()
            work.backward_weight(0, stage, 0, deferred)
            weights = clock() - begin
            begin = clock()
            work.recompute(stage, 0, remat[stage])
            again = clock() - begin
            if record:
                for op, value in (("I", seconds), ("W", weights), ("R", again)):
                    samples[stage][op].append(value)
    return samples, outputs


def profile_layers(model: Model, rows: int, repeats: int = 5, seed: int = 0) -> list[float]:
    """Median seconds of forward + backward (I and W) of each layer on ``rows`` samples.

    Each layer is a stage of its own in ``time_passes``, so the balancer's
    costs are the passes the engine runs (the loss included on the last layer).

    >>> times = profile_layers(Model.from_sizes([8, 8, 4]), rows=4, repeats=3)
    >>> len(times), all(t > 0 for t in times)
    (2, True)
    """
    if repeats < 1:
        raise ValueError(f"repeats {repeats} is not allowed; use 1 or more")
    widths = [model.layers[0].in_features] + [layer.out_features for layer in model.layers]
    x, target = make_data(widths, rows, "cross_entropy", seed=seed)
    stages = [range(i, i + 1) for i in range(len(model.layers))]
    work = NumpyWorkload(model, stages, x, target, "cross_entropy", [slice(0, rows)])
    samples, _ = time_passes(work, len(stages), warmup=1, repeats=repeats)
    return [
        statistics.median(f + i + w for f, i, w in zip(passes["F"], passes["I"], passes["W"])) for passes in samples
    ]
