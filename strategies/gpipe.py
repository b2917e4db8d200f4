"""GPipe F-then-B (Huang et al., 2019): all forwards, then all backwards, last micro-batch first.

Device d holds stage d. For K=2, M=3::

    device 0: 0F0 0F1 0F2 0B2 0B1 0B0
    device 1: 1F0 1F1 1F2 1B2 1B1 1B0

Backwards run in reverse order, as autograd unwinds them in GPipe and
torchgpipe, so the last micro-batch's backward follows its forward at once
(which is why re-materialization ``except_last`` spares it). PyTorch's
``ScheduleGPipe`` runs them in forward order instead; under equal costs both
give the same step length. Bubble under unit
cost: (K-1)/(K-1+M). Peak in-flight micro-batches per device: M.

>>> print(GPipe().plan(devices=2, microbatches=3))
device 0: 0F0 0F1 0F2 0B2 0B1 0B0
device 1: 1F0 1F1 1F2 1B2 1B1 1B0
"""

from __future__ import annotations

from pipesched import Action, Schedule, formulas
from pipesched.compose import require_one_chunk

__all__ = ["GPipe"]


class GPipe:
    """GPipe F-then-B with one stage per device."""

    name = "gpipe"

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        require_one_chunk(chunks, "gpipe places one stage per device")
        return Schedule(
            [
                [Action(d, "F", m) for m in range(microbatches)]
                + [Action(d, "B", m) for m in reversed(range(microbatches))]
                for d in range(devices)
            ]
        )

    def stages(self, devices: int, chunks: int = 1) -> int:
        """One stage per device."""
        return devices

    def bubble(self, devices: int, microbatches: int, chunks: int = 1) -> float:
        return formulas.gpipe_bubble(devices, microbatches)
