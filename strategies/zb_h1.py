"""ZB-H1, the memory-efficient zero-bubble schedule (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024).

The backward splits into I (input gradient, on the critical path) and W
(weight gradient, free to move). ZB-H1 keeps 1F1B's order of F and I and
starts the W passes later on later devices: device d keeps d weight-gradients
pending, so every device holds min(K, M) micro-batches in flight, as 1F1B's
first device does, while the deferred Ws fill the drain bubbles. Deferred Ws
run first in, first out (PyTorch's zero-bubble schedules do the same; the
paper's patch picks other micro-batches for the same slots, with the same
timing and memory). For K=4, M=8, device 3 runs::

    3F0 3I0 3F1 3I1 3F2 3I2 3F3 3I3 3W0 3F4 3I4 3W1 3F5 3I5 3W2 3F6 3I6 3W3 3F7 3I7 3W4 3W5 3W6 3W7

Under unit cost with F=I=W=1 and M >= K the step takes exactly 3M + K - 1:
bubble (K-1)/(3M+K-1), a third of 1F1B's (with M < K, 2(M+K) - 1; see
``formulas.zb_h1_unit_makespan``). A deferred W keeps alive the layer
inputs and pre-activation gradients it needs, which the memory timeline shows.

>>> print(ZBH1().plan(devices=2, microbatches=2))
device 0: 0F0 0F1 0I0 0W0 0I1 0W1
device 1: 1F0 1I0 1F1 1I1 1W0 1W1
"""

from __future__ import annotations

from pipesched import Schedule, formulas
from pipesched.compose import require_one_chunk, zero_bubble_order

__all__ = ["ZBH1"]


class ZBH1:
    """ZB-H1 zero-bubble: 1F1B with split backward and Ws deferred by the device index."""

    name = "zb-h1"

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        require_one_chunk(chunks, "zb-h1 places one stage per device")
        return Schedule([zero_bubble_order(d, microbatches, warmup=devices - 1 - d, lag=d) for d in range(devices)])

    def stages(self, devices: int, chunks: int = 1) -> int:
        """One stage per device."""
        return devices

    def bubble(self, devices: int, microbatches: int, chunks: int = 1) -> float:
        return formulas.zb_h1_bubble(devices, microbatches)
