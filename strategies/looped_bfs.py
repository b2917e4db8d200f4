"""Looped breadth-first (Lamy-Poirier, "Breadth-First Pipeline Parallelism", MLSys 2023), in the order of
PyTorch's ``ScheduleLoopedBFS``.

Each device holds v stages, looped as in interleaved 1F1B: stage s runs on
device s mod K. Breadth first: a device runs every micro-batch's forward
through its first stage, then through its second, and so on; then the
backwards, last stage first, each stage's micro-batches last first (as
PyTorch's ``_calculate_single_rank_operations`` lists them). With v = 1 this
is GPipe (``gpipe``: the same order). For K=2, v=2, M=2 (stages 0 and 2 on
device 0, 1 and 3 on device 1)::

    device 0: 0F0 0F1 2F0 2F1 2B1 2B0 0B1 0B0
    device 1: 1F0 1F1 3F0 3F1 3B1 3B0 1B1 1B0

Under unit cost (a stage's F = 1/v, B = 2/v, free links) the step lasts
3M + 3(K-1)/v + 3(v-1)·max(0, K-M)/v. Derivation: device d starts at d/v
(micro-batch 0's forwards before it) and runs its first stage's M forwards
back to back (each input arrives 1/v after the one before). Micro-batch 0
comes back to device 0 for its next stage K/v after it left: with M >= K the
device is still busy with its M forwards, else it waits (K-M)/v, once per
stage after the first. So the forwards of device d end at
d/v + M + (v-1)·max(0, K-M)/v, the last device's at (K-1)/v + M + that wait;
the backwards mirror the forwards at twice the cost, from the last device
(its first backward follows its last forward at once) back to device 0,
which ends 2(K-1)/v after the last device's first backward could start plus
its 2M of backward work and the waits doubled. Bubble: 1 - 3M / that step;
for M >= K, (K-1)/(vM + K-1), interleaved 1F1B's. Peak in flight: every
stage-micro-batch, v·M per device (each backward follows every forward).

>>> print(LoopedBFS().plan(devices=2, microbatches=2, chunks=2))
device 0: 0F0 0F1 2F0 2F1 2B1 2B0 0B1 0B0
device 1: 1F0 1F1 3F0 3F1 3B1 3B0 1B1 1B0
"""

from __future__ import annotations

from pipesched import Action, Schedule, formulas

__all__ = ["LoopedBFS"]


class LoopedBFS:
    """Looped breadth-first: v stages per device (stage s on device s mod K), all forwards stage by stage,
    then all backwards in reverse."""

    name = "looped-bfs"
    default_chunks = 2

    def plan(self, devices: int, microbatches: int, chunks: int = 2) -> Schedule:
        orders = []
        for d in range(devices):
            mine = [d + devices * c for c in range(chunks)]
            forwards = [Action(s, "F", m) for s in mine for m in range(microbatches)]
            backwards = [Action(s, "B", m) for s in reversed(mine) for m in reversed(range(microbatches))]
            orders.append(forwards + backwards)
        return Schedule(orders)

    def bubble(self, devices: int, microbatches: int, chunks: int = 2) -> float:
        return formulas.looped_bfs_bubble(devices, microbatches, chunks)
