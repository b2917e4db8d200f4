"""1F1B, PipeDream-flush (Narayanan et al., 2021; DAPPLE), as in Megatron-LM and DeepSpeed.

Device d holds stage d and runs min(K-1-d, M) warm-up forwards, then one
forward and one backward in turn, then drains the backwards. For K=4, M=8,
device 0 runs::

    0F0 0F1 0F2 0F3 0B0 0F4 0B1 0F5 0B2 0F6 0B3 0F7 0B4 0B5 0B6 0B7

Bubble under unit cost: (K-1)/(K-1+M), as GPipe. Peak in-flight micro-batches
on device d: min(K-d, M) instead of GPipe's M.

>>> print(OneFOneB().plan(devices=2, microbatches=3))
device 0: 0F0 0F1 0B0 0F2 0B1 0B2
device 1: 1F0 1B0 1F1 1B1 1F2 1B2
"""

from __future__ import annotations

from pipesched import Action, Schedule, formulas
from pipesched.compose import one_f_one_b, require_one_chunk

__all__ = ["OneFOneB"]


class OneFOneB:
    """1F1B (PipeDream-flush): warm up, then one forward one backward, then drain."""

    name = "1f1b"

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        require_one_chunk(chunks, "1f1b places one stage per device", "use interleaved")
        return Schedule(
            [
                one_f_one_b(
                    [Action(d, "F", m) for m in range(microbatches)],
                    [[Action(d, "B", m)] for m in range(microbatches)],
                    warmup=devices - 1 - d,
                )
                for d in range(devices)
            ]
        )

    def stages(self, devices: int, chunks: int = 1) -> int:
        """One stage per device."""
        return devices

    def bubble(self, devices: int, microbatches: int, chunks: int = 1) -> float:
        return formulas.gpipe_bubble(devices, microbatches)
