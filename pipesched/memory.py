"""Per-device memory accounting: each distinct array a device holds counts once, by reference.

A device holds its parameters and gradient buffers (fixed bytes), the arrays it
keeps for backward (activations) and arrays that have arrived from a link but
are not consumed yet (buffers). One array can be held several times at once
(a stage's output is the next stage's input on the same device; an arrived
activation becomes a kept input), so arrays are counted by reference: the bytes
appear with the first hold and go with the last release.

>>> from pipesched.compute import Buffer
>>> mem = DeviceMemory(fixed_bytes=100)
>>> x, y = Buffer(8), Buffer(16)
>>> mem.hold([x], kept=False); mem.hold([x, y], kept=True); mem.release([x], kept=False)
>>> mem.sample(1.0)
MemorySample(time=1.0, activation_bytes=24, total_bytes=124)
"""

from __future__ import annotations

from typing import Any, Iterable

from .trace import MemorySample

__all__ = ["DeviceMemory"]


class _Counted:
    """Distinct objects with reference counts and the sum of their ``nbytes``."""

    __slots__ = ("refs", "nbytes")

    def __init__(self) -> None:
        self.refs: dict[int, list[Any]] = {}  # id -> [object, count]; the object keeps the id unique
        self.nbytes = 0

    def hold(self, items: Iterable[Any]) -> None:
        for item in items:
            entry = self.refs.get(id(item))
            if entry is None:
                self.refs[id(item)] = [item, 1]
                self.nbytes += item.nbytes
            else:
                entry[1] += 1

    def release(self, items: Iterable[Any]) -> None:
        for item in items:
            entry = self.refs[id(item)]
            entry[1] -= 1
            if entry[1] == 0:
                del self.refs[id(item)]
                self.nbytes -= item.nbytes


class DeviceMemory:
    """What one device holds, and its timeline of samples."""

    def __init__(self, fixed_bytes: int = 0):
        self.fixed_bytes = fixed_bytes
        self._kept = _Counted()
        self._all = _Counted()
        self.timeline: list[MemorySample] = [MemorySample(0.0, 0, fixed_bytes)]

    def hold(self, arrays: list[Any], kept: bool) -> None:
        """Hold ``arrays``: ``kept`` ones for backward (activations), others as buffers."""
        if kept:
            self._kept.hold(arrays)
        self._all.hold(arrays)

    def release(self, arrays: list[Any], kept: bool) -> None:
        """Release what a matching ``hold`` took."""
        if kept:
            self._kept.release(arrays)
        self._all.release(arrays)

    def add_fixed(self, nbytes: int) -> None:
        """Bytes held to the end of the step: a gradient buffer appearing."""
        self.fixed_bytes += nbytes

    def sample(self, time: float) -> MemorySample:
        """Record the current state at ``time``; every change is sampled, so no peak is lost."""
        sample = MemorySample(time, self._kept.nbytes, self.fixed_bytes + self._all.nbytes)
        self.timeline.append(sample)
        return sample
