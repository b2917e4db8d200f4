"""Metrics: the gradient error never hides a broken gradient; in-flight counts."""

import numpy as np
import pytest

from pipesched.compose import inflight_counts
from pipesched.metrics import grad_rel_err
from pipesched.schedule import Action


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
