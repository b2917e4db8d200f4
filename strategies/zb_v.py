"""ZB-V, the V-shaped zero-bubble schedule (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024,
section 6), in the order of PyTorch's ``ScheduleZBVZeroBubble``.

The model is cut into 2K stages and placed in a V: device d holds stage d
(chunk 0, on the way down) and stage 2K-1-d (chunk 1, on the way back), so
device 0 holds both the first and the last stage, and every micro-batch
crosses the links 2(K-1) times each way (stages K-1 and K share device K-1),
twice 1F1B's K-1. Device d warms up
with 2(K-d)-1 forwards of chunk 0, then d pairs of chunk-1 and chunk-0
forwards, then K-d rounds of F, I and W of chunk 1; in the steady state it
runs F, I, W of chunk 0 and then of chunk 1; it drains with I passes and the
deferred Ws. For K=2, M=4 (stages 0 and 3 on device 0, 1 and 2 on device 1)::

    device 0: 0F0 0F1 0F2 3F0 3I0 3W0 3F1 3I1 3W1 0F3 0I0 0W0 3F2 3I2 3W2 0I1 0W1 3F3 3I3 3W3 0I2 0W2 0I3 0W3
    device 1: 1F0 2F0 1F1 2F1 2I0 2W0 1F2 1I0 1W0 2F2 2I1 2W1 1F3 1I1 1W1 2F3 2I2 2W2 1I2 2I3 1I3 1W2 2W3 1W3

Under unit cost (a chunk's F = I = W = 1/2, so each device computes 3M)
the step lasts 3M + (K-1)/2 once M >= 3K/2: every device idles only the
(K-1)/2 the first micro-batch takes to reach the bottom of the V, half of
ZB-H1's K-1, a bubble of (K-1)/(6M+K-1) (``formulas.zb_v_unit_makespan`` has
the form for fewer micro-batches). With M >= 2K - 1 that idle time falls at
the start of a device's step or at its end, never inside: run back to back,
steps are 3M apart and the bubble is 0, the paper's zero
(``formulas.zero_bubble_steady_bubble``). Memory: device d holds at most
min(M, 2K-1-d) + min(M, d+1) chunk-micro-batches, 2K once M >= 2K - 1, each
half a 1F1B stage's activations: 1F1B's first-device peak (K micro-batches
of one stage), on every device, as the paper says.

>>> print(ZBV().plan(devices=2, microbatches=2))
device 0: 0F0 0F1 3F0 3I0 3W0 3F1 3I1 3W1 0I0 0W0 0I1 0W1
device 1: 1F0 2F0 1F1 2F1 2I0 2W0 1I0 1W0 2I1 2W1 1I1 1W1
"""

from __future__ import annotations

from pipesched import Schedule, formulas
from pipesched.compose import Steps, require_chunks

__all__ = ["ZBV"]


def _device_order(d: int, devices: int, microbatches: int) -> list:
    down, up = d, 2 * devices - 1 - d  # chunk 0 and chunk 1 of device d
    # written for at least 2K - 1 micro-batches, the fewest that fill the V; Steps drops the rest
    n = max(microbatches, 2 * devices - 1)
    s = Steps(limit=microbatches)
    for _ in range(2 * (devices - d) - 1):
        s.forward(down)
    for _ in range(d):
        s.forward(up)
        s.forward(down)
    for _ in range(devices - d):
        s.forward(up)
        s.backward(up, split=True)
        s.weight(up)
    while s.count(up, "F") < s.count(down, "F") or s.count(down, "F") < n:
        if s.count(down, "F") < n:
            s.forward(down)
        s.backward(down, split=True)
        s.weight(down)
        s.forward(up)
        s.backward(up, split=True)
        s.weight(up)
    for _ in range(d):
        s.backward(down, split=True)
        s.backward(up, split=True)
    for _ in range(devices - d):
        s.backward(down, split=True)
        s.weight(down)
    for stage in (up, down):  # the deferred Ws, chunk 1's first
        while s.count(stage, "B") > s.count(stage, "W"):
            s.weight(stage)
    return s.order


class ZBV:
    """ZB-V: two chunks per device in a V (stages d and 2K-1-d), split backward, Ws filling the bubbles."""

    name = "zb-v"
    default_chunks = 2

    def plan(self, devices: int, microbatches: int, chunks: int = 2) -> Schedule:
        require_chunks(chunks, 2, "zb-v places two stages on each device, d and 2K-1-d")
        return Schedule([_device_order(d, devices, microbatches) for d in range(devices)])

    def stages(self, devices: int, chunks: int = 2) -> int:
        """2K stages in a V, whatever ``chunks`` says (plan refuses any but 2)."""
        return 2 * devices

    def bubble(self, devices: int, microbatches: int, chunks: int = 2) -> float | None:
        return formulas.zb_v_bubble(devices, microbatches)
