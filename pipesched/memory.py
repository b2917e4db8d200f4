"""Per-device memory accounting: each distinct array a device holds counts once, by reference.

A device holds its parameters and their **optimizer** state (both from the
start of the step), its gradient buffers, and arrays in three roles:
**activations** kept for a backward, **deferred**, what a split backward's
weight-gradient W still needs after its I (layer inputs and pre-activation
gradients), and **buffers**, arrays on their way over a link
(held by the sender until the bytes have left, by the receiver from arrival
until used). One array can have several holders at once (an arrived input
becomes a kept activation; a stage's output is the next stage's input on the
same device), so arrays are counted by reference and their bytes sit in the
first role that still holds them, in the order above. A full backward's
pre-activation gradients live only while it runs, each freed as the next is
made, as autograd does, so they are not counted; an I's stay for W and are.
An array's bytes are its elements × the training precision's ``itemsize``
(``pipesched.precision.nbytes``), taken once when a device first holds it.

Where the count is kept: an array's holders on a device are an entry in the
device's table keyed by the array's identity; a shape-only stand-in
(``pipesched.compute.Buffer``) keeps its entry on itself instead, which saves
the table's look-ups on the engine's hottest path, and falls back to the
table on a second device that holds it meanwhile (a stage's output kept for
its own backward while the next device holds it as an arrived input). Both
count the same (property-tested against each other).

>>> from pipesched.compute import Buffer
>>> mem = DeviceMemory(params=100, optimizer=600)
>>> x, y = Buffer(8), Buffer(16)
>>> mem.hold([x], "buffers"); mem.hold([x, y], "activations"); mem.release([x], "buffers")
>>> mem.sample(1.0); mem.timeline[-1]
MemorySample(time=1.0, params=100, grads=0, optimizer=600, activations=24, deferred=0, buffers=0)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from .compute import Buffer
from .cost import CostModel, link_of
from .precision import nbytes as _nbytes
from .trace import MemorySample, Records, Trace

__all__ = ["DeviceMemory", "ROLES", "ACTIVATIONS", "DEFERRED", "BUFFERS", "finish_trace"]

#: The roles an array can have on a device, in the order its bytes are attributed.
ROLES = ("activations", "deferred", "buffers")
_INDEX = {role: i for i, role in enumerate(ROLES)}
#: Each role's index, as ``hold_one`` and ``release_one`` take it.
ACTIVATIONS, DEFERRED, BUFFERS = (_INDEX[role] for role in ROLES)


class DeviceMemory:
    """What one device holds, its timeline of samples, and an optional capacity.

    Args:
        params: parameter bytes, held all along.
        capacity: the device's memory in bytes, or None for unlimited.
        on_exceed: called with the first sample above ``capacity``.
        optimizer: optimizer-state bytes, held all along.
        itemsize: bytes per element of an array, the training precision's.
    """

    def __init__(
        self,
        params: int = 0,
        capacity: int | None = None,
        on_exceed: Callable[[MemorySample], None] | None = None,
        *,
        optimizer: int = 0,
        itemsize: int = 8,
    ):
        self.params = params
        self.optimizer = optimizer
        self.itemsize = itemsize
        self.grads = 0
        self._weights = params + optimizer  # parameters, gradients and optimizer state: one sum per sample
        self.capacity = capacity
        self.on_exceed = on_exceed
        self.exceeded: MemorySample | None = None
        # id -> [array, count per role..., the role its bytes are in, its bytes]
        self._arrays: dict[int, list[Any]] = {}
        #: bytes now held in each role, in ``ROLES`` order; ``pipesched.fastpath`` counts shape-only runs by
        #: arithmetic and changes these in place, then samples as the engine does
        self.by_role = [0] * len(ROLES)
        start = MemorySample(0.0, params, 0, optimizer, 0, 0, 0)
        self._timeline: Records[MemorySample] = Records(MemorySample)
        # the last sample's fields, written to the timeline once a later instant is sampled or the timeline is
        # read: a change at the same instant then replaces a tuple instead of the timeline's last record
        self._state: tuple[Any, ...] | None = tuple(start)
        self._last = 0.0  # the time of the last sample
        if capacity is not None and start.total_bytes > capacity:  # the weights and their state alone do not fit
            self.exceeded = start
            if on_exceed is not None:
                on_exceed(self.exceeded)
        self.peak_activation_bytes = 0
        self.peak_total_bytes = start.total_bytes
        # the state at the peak total, the first time it was reached, as its fields
        self._peak: tuple[float, int, int, int, int, int, int] = (0.0, params, 0, optimizer, 0, 0, 0)  # start's

    @property
    def timeline(self) -> Records[MemorySample]:
        """The samples so far: the state at each instant something changed, the last state of the instant.

        Reading it writes the last instant's state, kept aside until then (see ``sample``): a ``Records``
        read earlier lacks what was sampled since, until this is read again (a run's end does).
        """
        if self._state is not None:
            self._timeline.add(*self._state)
            self._state = None
        return self._timeline

    @property
    def peak_sample(self) -> MemorySample:
        """The state at the peak total, the first time it was reached."""
        return MemorySample(*self._peak)

    def hold(self, arrays: Iterable[Any], role: str) -> None:
        """``arrays`` gain a holder in ``role``."""
        i = _INDEX[role]
        for array in arrays:
            self.hold_one(array, i)

    # An array's entry: [who, count per role (3), the role its bytes are in, its bytes]. A stand-in keeps its
    # own (``Buffer.entry``), ``who`` being the device that counts it; an array, or a stand-in another device
    # counts meanwhile, has one in this device's table by identity, ``who`` being the array itself (which
    # keeps it alive, so its id is not reused while counted). Both are counted by the same lines below.
    def hold_one(self, array: Any, i: int) -> None:
        """``array`` gains a holder in the role ``ROLES[i]``: the engine's form, one call per array."""
        entry = array.entry if type(array) is Buffer else None
        if entry is None or entry[0] is not self:
            if entry is None and type(array) is Buffer and not (self._arrays and id(array) in self._arrays):
                entry = array.entry = [self, 0, 0, 0, i, array.nbytes]
                self.by_role[i] += array.nbytes  # new: its bytes appear, in this role
            else:
                entry = self._arrays.get(id(array))
                if entry is None:
                    size = _nbytes(array, self.itemsize)
                    entry = self._arrays[id(array)] = [array, 0, 0, 0, i, size]
                    self.by_role[i] += size
        if i < entry[4]:  # a role earlier in ROLES takes the bytes
            self.by_role[entry[4]] -= entry[5]
            self.by_role[i] += entry[5]
            entry[4] = i
        entry[1 + i] += 1

    def release(self, arrays: Iterable[Any], role: str) -> None:
        """``arrays`` lose a holder in ``role`` (taken by a matching ``hold``)."""
        i = _INDEX[role]
        for array in arrays:
            self.release_one(array, i)

    def release_one(self, array: Any, i: int) -> None:
        """``array`` loses a holder in the role ``ROLES[i]``: the engine's form, one call per array."""
        entry: Any = array.entry if type(array) is Buffer else None
        own = entry is not None and entry[0] is self
        if not own:
            entry = self._arrays[id(array)]
        entry[1 + i] -= 1
        if entry[1 + i] or entry[4] != i:
            return
        self.by_role[i] -= entry[5]
        for j in (0, 1, 2):  # the next role still holding it, if any, takes the bytes
            if entry[1 + j]:
                self.by_role[j] += entry[5]
                entry[4] = j
                return
        if own:
            array.entry = None
        else:
            del self._arrays[id(array)]

    def add_grads(self, nbytes: int) -> None:
        """A gradient buffer appears (it stays to the end of the step)."""
        self.grads += nbytes
        self._weights += nbytes

    def sample(self, time: float) -> None:
        """Record the state at ``time``, and the peaks.

        Several changes at one instant keep one sample, the last state; the
        peaks are taken at every change, so no transient one is lost. This
        runs several times per simulated action, so the instant's state is a
        tuple, written to the timeline once a later instant is sampled (or the
        timeline read), and the peak state is kept as that tuple.
        """
        act, deferred, buffers = self.by_role
        held = act + deferred
        if held > self.peak_activation_bytes:
            self.peak_activation_bytes = held
        total = self._weights + held + buffers
        state = (time, self.params, self.grads, self.optimizer, act, deferred, buffers)
        if total > self.peak_total_bytes:
            self.peak_total_bytes = total
            self._peak = state
        if self._last == time:
            if self._state is None:  # the timeline was read meanwhile: its last record is this instant's
                self._timeline.set_last(*state)
            else:
                self._state = state
        else:
            if self._state is not None:
                self._timeline.add(*self._state)
            self._state = state
            self._last = time
        if self.capacity is not None and self.exceeded is None and total > self.capacity:
            self.exceeded = MemorySample(*state)
            if self.on_exceed is not None:
                self.on_exceed(self.exceeded)


def finish_trace(trace: Trace, memory: list[DeviceMemory], cost: CostModel) -> None:
    """Give a finished run's ``trace`` each device's timeline and peaks, and which links are which.

    Both the engine and its fast path (``pipesched.fastpath``) end a run with it.
    """
    trace.memory = [m.timeline for m in memory]  # each timeline with its last instant written
    trace.peaks = [(m.peak_activation_bytes, m.peak_total_bytes) for m in memory]
    trace.peak_samples = [m.peak_sample for m in memory]
    # which links are which (intra- or inter-node), for the trace's readers (Perfetto, the Gantt chart)
    trace.links = {(src, dst): link_of(cost, src, dst) for src, dst in trace.link_pairs()}
