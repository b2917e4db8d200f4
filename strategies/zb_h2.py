"""ZB-H2, the zero-bubble schedule that buys its zero with memory (Qi et al., "Zero Bubble Pipeline
Parallelism", ICLR 2024, section 2.2 and figure 3, bottom).

ZB-H1 keeps 1F1B's warm-up, so device d idles while the first gradient
travels back. ZB-H2 fills that wait with forwards: device d warms up with
2(K-1-d) + 1 of them, twice 1F1B's, and defers each weight-gradient W by 2d
micro-batches so the Ws fill the tail. Under unit cost with F=I=W=1 and
M >= 2K - 1 every device then works without a gap from its first forward to
its last W:
device d is busy exactly from d to d + 3M, a parallelogram rather than a
trapezoid. For K=4, M=8 (the paper's figure; its B is pipesched's I)::

    device 0: 0F0 0F1 0F2 0F3 0F4 0F5 0F6 0I0 0W0 0F7 0I1 0W1 0I2 0W2 ... 0I7 0W7
    device 3: 3F0 3I0 3F1 3I1 3F2 3I2 ... 3F6 3I6 3W0 3F7 3I7 3W1 3W2 ... 3W7

The zero is a steady-state zero. One step still spans 3M + K - 1 for
M >= 2K - 2 (``formulas.zb_h2_unit_makespan``; the last device starts K - 1
late), so its bubble is ZB-H1's (K-1)/(3M+K-1). But each device is busy for
its whole window, so when steps run back to back, each device starting the
next as soon as it has finished this one, nothing is idle:
``Metrics.steady_bubble_fraction`` is 0 for M >= 2K - 1
(``formulas.zero_bubble_steady_bubble``). That needs the optimizer step not
to synchronise the stages between steps; the paper's post-validation removes
that synchronisation, and pipesched's back-to-back figure assumes it.

Memory: min(2K-1, M) micro-batches in flight on every device (the first
device's warm-up, and the Ws the last device defers), against 1F1B's K.

>>> print(ZBH2().plan(devices=2, microbatches=3))
device 0: 0F0 0F1 0F2 0I0 0W0 0I1 0W1 0I2 0W2
device 1: 1F0 1I0 1F1 1I1 1F2 1I2 1W0 1W1 1W2
"""

from __future__ import annotations

from pipesched import Schedule, formulas
from pipesched.compose import require_one_chunk, zero_bubble_order

__all__ = ["ZBH2"]


class ZBH2:
    """ZB-H2 zero-bubble: 1F1B with twice the warm-up, split backward and Ws deferred by twice the device index."""

    name = "zb-h2"

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        require_one_chunk(chunks, "zb-h2 places one stage per device")
        return Schedule(
            [zero_bubble_order(d, microbatches, warmup=2 * (devices - 1 - d), lag=2 * d) for d in range(devices)]
        )

    def stages(self, devices: int, chunks: int = 1) -> int:
        """One stage per device."""
        return devices

    def bubble(self, devices: int, microbatches: int, chunks: int = 1) -> float:
        return formulas.zb_h2_bubble(devices, microbatches)
