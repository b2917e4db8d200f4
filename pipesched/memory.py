"""Per-device memory accounting: each distinct array a device holds counts once, by reference.

A device holds its parameters and gradient buffers, and arrays in three
roles: **activations** kept for a backward, **deferred**, what a split
backward's weight-gradient W still needs after its I (layer inputs and
pre-activation gradients), and **buffers**, arrays on their way over a link
(held by the sender until the bytes have left, by the receiver from arrival
until used). One array can have several holders at once (an arrived input
becomes a kept activation; a stage's output is the next stage's input on the
same device), so arrays are counted by reference and their bytes sit in the
first role that still holds them, in the order above.

>>> from pipesched.compute import Buffer
>>> mem = DeviceMemory(params=100)
>>> x, y = Buffer(8), Buffer(16)
>>> mem.hold([x], "buffers"); mem.hold([x, y], "activations"); mem.release([x], "buffers")
>>> mem.sample(1.0)
MemorySample(time=1.0, params=100, grads=0, activations=24, deferred=0, buffers=0)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from .trace import MemorySample

__all__ = ["DeviceMemory", "ROLES"]

#: The roles an array can have on a device, in the order its bytes are attributed.
ROLES = ("activations", "deferred", "buffers")
_INDEX = {role: i for i, role in enumerate(ROLES)}


class DeviceMemory:
    """What one device holds, its timeline of samples, and an optional capacity.

    Args:
        params: parameter bytes, held all along.
        capacity: the device's memory in bytes, or None for unlimited.
        on_exceed: called with the first sample above ``capacity``.
    """

    def __init__(
        self,
        params: int = 0,
        capacity: int | None = None,
        on_exceed: Callable[[MemorySample], None] | None = None,
    ):
        self.params = params
        self.grads = 0
        self.capacity = capacity
        self.on_exceed = on_exceed
        self.exceeded: MemorySample | None = None
        self._arrays: dict[int, list[Any]] = {}  # id -> [array, role counts..., attributed role or -1]
        self._bytes = [0] * len(ROLES)
        self.timeline: list[MemorySample] = [MemorySample(0.0, params, 0, 0, 0, 0)]

    def hold(self, arrays: Iterable[Any], role: str) -> None:
        """``arrays`` gain a holder in ``role``."""
        self._change(arrays, _INDEX[role], +1)

    def release(self, arrays: Iterable[Any], role: str) -> None:
        """``arrays`` lose a holder in ``role`` (taken by a matching ``hold``)."""
        self._change(arrays, _INDEX[role], -1)

    def _change(self, arrays: Iterable[Any], role: int, step: int) -> None:
        for array in arrays:
            entry = self._arrays.get(id(array))
            if entry is None:
                # the entry keeps the array alive, so its id cannot be reused meanwhile
                entry = self._arrays[id(array)] = [array] + [0] * len(ROLES) + [-1]
            entry[1 + role] += step
            now = next((r for r in range(len(ROLES)) if entry[1 + r] > 0), -1)
            was = entry[-1]
            if now != was:
                if was >= 0:
                    self._bytes[was] -= array.nbytes
                if now >= 0:
                    self._bytes[now] += array.nbytes
                entry[-1] = now
            if now < 0:
                del self._arrays[id(array)]

    def add_grads(self, nbytes: int) -> None:
        """A gradient buffer appears (it stays to the end of the step)."""
        self.grads += nbytes

    def sample(self, time: float) -> MemorySample:
        """Record the state at ``time``; every change is sampled, so no peak is lost."""
        sample = MemorySample(time, self.params, self.grads, *self._bytes)
        self.timeline.append(sample)
        if self.capacity is not None and self.exceeded is None and sample.total_bytes > self.capacity:
            self.exceeded = sample
            if self.on_exceed is not None:
                self.on_exceed(sample)
        return sample
