"""Uniform and explicit partitions."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched.errors import ConfigError
from pipesched.partition import parse_partition, uniform


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_uniform_is_contiguous_and_balanced_within_one(case):
    layers, stages = case
    parts = uniform(layers, stages)
    assert [i for p in parts for i in p] == list(range(layers))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sorted(sizes, reverse=True) == sizes


def test_explicit_counts():
    assert [list(p) for p in parse_partition("2,3,3,3", 11, 4)] == [[0, 1], [2, 3, 4], [5, 6, 7], [8, 9, 10]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("2,3,3", "has 3 stages but the schedule has 4"),
        ("2,3,3,4", "sums to 12 layers but the model has 11"),
        ("0,3,4,4", "has an empty stage"),
        ("two,three", "is neither 'uniform', 'balanced' nor comma-separated layer counts"),
        ("balanced-ish", "is neither 'uniform'"),
    ],
)
def test_bad_partitions_name_the_value(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_partition(text, 11, 4)


def test_more_stages_than_layers_is_refused():
    with pytest.raises(ConfigError, match="has 5 stages but the model has only 3 layers"):
        uniform(3, 5)
