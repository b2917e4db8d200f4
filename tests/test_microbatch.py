"""Micro-batch splitting."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched.errors import ConfigError
from pipesched.microbatch import split


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_split_covers_the_batch_in_order_with_sizes_within_one(case):
    batch, m = case
    slices = split(batch, m)
    assert len(slices) == m
    assert slices[0].start == 0 and slices[-1].stop == batch
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_more_microbatches_than_samples_is_refused():
    with pytest.raises(ConfigError, match=r"--microbatches 9 is more than the batch of 8 samples"):
        split(8, 9)


def test_zero_microbatches_is_refused():
    with pytest.raises(ConfigError, match=r"--microbatches 0 is not allowed"):
        split(8, 0)
