"""Split a batch into M micro-batches whose sizes differ by at most one."""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["split"]


def split(batch: int, microbatches: int) -> list[slice]:
    """Row slices of ``batch`` rows into ``microbatches`` parts, larger parts first.

    >>> [s.stop - s.start for s in split(10, 4)]
    [3, 3, 2, 2]
    """
    if microbatches < 1:
        raise ConfigError(f"--microbatches {microbatches} is not allowed; use 1 or more")
    if microbatches > batch:
        raise ConfigError(
            f"--microbatches {microbatches} is more than the batch of {batch} samples; "
            f"use at most {batch} micro-batches or a larger --batch"
        )
    base, extra = divmod(batch, microbatches)
    slices, start = [], 0
    for m in range(microbatches):
        stop = start + base + (m < extra)
        slices.append(slice(start, stop))
        start = stop
    return slices
