"""Metrics: the gradient error never hides a broken gradient; in-flight counts."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched.compose import inflight_counts
from pipesched.metrics import grad_rel_err, peak_inflight
from pipesched.schedule import Action
from pipesched.trace import Span, Trace


def test_non_finite_gradients_give_an_infinite_error():
    ref = [(np.ones(2), np.ones(1))]
    assert grad_rel_err([(np.array([np.nan, 1.0]), np.ones(1))], ref) == float("inf")
    assert grad_rel_err([(np.ones(2), np.array([np.inf]))], ref) == float("inf")


def test_mismatched_gradients_are_refused():
    with pytest.raises(ValueError):
        grad_rel_err([(np.ones(2), np.ones(1))], [])


def test_relative_error_per_tensor_takes_the_worst():
    ref = [(np.array([3.0, 4.0]), np.zeros(1))]  # norm 5; a zero reference counts absolutely
    assert grad_rel_err([(np.array([3.0, 4.5]), np.array([0.25]))], ref) == pytest.approx(0.25)


def test_inflight_counts_a_split_backward_until_its_weights():
    order = [Action.parse(a) for a in "0F0 0F1 0I0 0F2 0W0 0I1 0B2 0W1".split()]
    assert inflight_counts(order) == [1, 2, 2, 3, 2, 2, 1, 0]


def _inflight_by_hand(spans, devices):
    """The count span by span, each device's spans in start order (ties as recorded)."""
    held, peak = [0] * devices, [0] * devices
    for span in sorted(spans, key=lambda s: s.start):  # sorted is stable: ties keep their recorded order
        held[span.device] += {"F": 1, "B": -1, "W": -1}.get(span.op, 0)
        peak[span.device] = max(peak[span.device], held[span.device])
    return peak


@given(
    st.lists(
        st.builds(
            Span,
            device=st.integers(0, 3),
            op=st.sampled_from(["F", "B", "I", "W", "R"]),
            stage=st.integers(0, 3),
            microbatch=st.integers(0, 5),
            start=st.integers(0, 12).map(float),
            end=st.just(0.0),
        ),
        max_size=40,
    )
)
def test_peak_in_flight_counts_each_devices_spans_in_start_order(spans):
    """``peak_inflight`` (NumPy over the trace's columns) against the count span by span."""
    trace = Trace(devices=4, time_unit="unit")
    for span in spans:
        trace.spans.append(span)
    assert peak_inflight(trace) == _inflight_by_hand(spans, 4)


@given(
    st.lists(st.tuples(st.integers(0, 3), st.floats(0, 1e6, allow_subnormal=False), st.floats(0, 1e3)), max_size=60),
    st.lists(st.floats(0, 2e6), max_size=5),
)
def test_busy_time_and_makespan_are_the_plain_loops_to_the_last_bit(spans, arrivals):
    """``busy_time`` (NumPy's bincount) adds each device's span lengths in their order, as a loop over the spans
    does, so the sums agree bit for bit; the makespan is the latest end or arrival."""
    from pipesched.trace import Transfer

    trace = Trace(
        devices=4,
        time_unit="s",
        spans=[Span(d, "F", 0, i, start, start + length) for i, (d, start, length) in enumerate(spans)],
        transfers=[Transfer(0, 1, 0, "F", 0, 8, t, t, t) for t in arrivals],
    )
    busy = [0.0] * 4
    for d, start, length in spans:
        busy[d] += (start + length) - start
    assert trace.busy_time() == busy
    assert trace.makespan == max([start + length for _, start, length in spans] + arrivals, default=0.0)
