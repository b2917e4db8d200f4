"""Data parallelism, the comparator: every device holds the whole model.

Device d runs forward and backward of micro-batches d, d+K, d+2K, ... (one at
a time, so it holds one micro-batch's activations), then the devices
all-reduce the gradients over the links as a ring: 2(K-1) steps, each moving
1/K of the gradient bytes. For K=2, M=4::

    device 0: 0F0 0B0 0F2 0B2
    device 1: 0F1 0B1 0F3 0B3

Every device stores all parameters and gradients, which is the point of the
comparison. Under unit cost (a replica of the whole model costs F=K, B=2K per
micro-batch, the work of K pipeline stages) and free links the bubble is
1 - M / (K·ceil(M/K)): zero when K divides M.

>>> print(DataParallel().plan(devices=2, microbatches=3))
device 0: 0F0 0B0 0F2 0B2
device 1: 0F1 0B1
"""

from __future__ import annotations

from pipesched import Action, Schedule, formulas
from pipesched.compose import require_one_chunk

__all__ = ["DataParallel"]


class DataParallel:
    """Data parallel: the whole model on every device, gradients all-reduced as a ring."""

    name = "dp"

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        require_one_chunk(chunks, "dp holds the whole model on every device")
        if microbatches < devices:
            raise ValueError(
                f"dp gives each device its own micro-batches, so --microbatches {microbatches} leaves devices idle; "
                f"use at least {devices} micro-batches"
            )
        return Schedule(
            [[Action(0, op, m) for m in range(d, microbatches, devices) for op in "FB"] for d in range(devices)]
        )

    def stages(self, devices: int, chunks: int = 1) -> int:
        """One stage, the whole model, replicated on every device."""
        return 1

    def bubble(self, devices: int, microbatches: int, chunks: int = 1) -> float | None:
        return formulas.data_parallel_bubble(devices, microbatches) if microbatches >= devices else None
