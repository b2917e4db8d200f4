"""Numbers read off a trace: makespan, bubble, throughput, memory peaks; and the gradient error.

>>> from pipesched.trace import Span, Trace
>>> t = Trace(devices=2, time_unit="unit", spans=[Span(0, "F", 0, 0, 0.0, 1.0), Span(1, "F", 1, 0, 1.0, 2.0)])
>>> m = measure(t, samples=4)
>>> m.makespan, m.bubble_fraction, m.throughput
(2.0, 0.5, 2.0)
>>> m.period, m.steady_bubble_fraction  # back to back, each device is busy all its window
(1.0, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import Params
from .trace import Trace

__all__ = ["Metrics", "measure", "peak_inflight", "grad_rel_err"]


@dataclass(frozen=True)
class Metrics:
    """Timing and memory of one simulated step."""

    makespan: float
    bubble_fraction: float
    throughput: float
    period: float  # steps back to back: one starts this long after the last (``Trace.period``)
    steady_bubble_fraction: float  # the idle share over a period
    busy: list[float]
    peak_activation_bytes: list[int]
    peak_memory_bytes: list[int]
    peak_inflight_microbatches: list[int]
    memory_by_role: list[dict[str, int]]  # per device, its bytes at its peak by role; they sum to its peak


def measure(trace: Trace, samples: int) -> Metrics:
    """Metrics of ``trace`` for a step of ``samples`` samples (see ``formulas`` for "bubble")."""
    makespan = trace.makespan
    busy = trace.busy_time()
    capacity = trace.devices * makespan
    period = trace.period()
    steady = trace.devices * period
    # idle / capacity, not 1 - busy / capacity: under unit cost both terms are
    # whole numbers, so the quotient is the closed form to the last bit
    return Metrics(
        makespan=makespan,
        bubble_fraction=(capacity - sum(busy)) / capacity if capacity else 0.0,
        period=period,
        steady_bubble_fraction=(steady - sum(busy)) / steady if steady else 0.0,
        throughput=samples / makespan if makespan else float("inf"),
        busy=busy,
        peak_activation_bytes=trace.peak_activation_bytes(),
        peak_memory_bytes=trace.peak_memory_bytes(),
        peak_inflight_microbatches=peak_inflight(trace),
        memory_by_role=trace.memory_by_role(),
    )


def peak_inflight(trace: Trace) -> list[int]:
    """Per device, the most (stage, micro-batch) pairs whose F has run there and whose B or W has not finished.

    A micro-batch in two chunks of one device counts twice, as Megatron's
    warm-up count does: each chunk holds its own activations.
    """
    # Each device's spans in start order (ties in the order recorded: the engine's order), each F one more in
    # flight and each B or W one fewer; the most at once is the largest running sum. In NumPy, on the columns:
    # a large step has a million spans.
    spans = trace.spans
    peak = [0] * trace.devices
    if not len(spans):
        return peak
    devices, ops = np.asarray(spans.column("device")), np.asarray(spans.column("op"))
    change = np.zeros(max(ops) + 1, dtype=np.int64)
    for op, step in (("F", 1), ("B", -1), ("W", -1)):
        if spans.has_word(op):
            change[spans.code(op)] = step
    order = np.lexsort((np.arange(len(devices)), np.asarray(spans.column("start")), devices))
    devices, running = devices[order], np.cumsum(change[ops[order]])
    first = np.flatnonzero(np.r_[True, devices[1:] != devices[:-1]])  # where each device's spans begin
    before = np.r_[0, running[first[1:] - 1]]  # the running sum up to the device's first span
    for d, most in zip(devices[first], np.maximum.reduceat(running, first) - before):
        peak[int(d)] = max(0, int(most))
    return peak


def grad_rel_err(grads: Params, reference: Params) -> float:
    """Largest relative error over all parameter tensors: ||g - ref|| / ||ref||.

    A tensor whose reference is all zeros (a dead ReLU's bias) counts its
    absolute error instead. A non-finite gradient gives ``inf``, never a
    reassuring zero.

    >>> ref = [(np.ones((2, 2)), np.zeros(2))]
    >>> grad_rel_err([(np.ones((2, 2)) * 1.5, np.zeros(2))], ref)
    0.5
    """
    worst = 0.0
    for pair, ref_pair in zip(grads, reference, strict=True):
        for g, ref in zip(pair, ref_pair, strict=True):
            if not np.all(np.isfinite(g)):
                return float("inf")
            scale = float(np.linalg.norm(ref)) or 1.0
            worst = max(worst, float(np.linalg.norm(g - ref)) / scale)
    return worst
