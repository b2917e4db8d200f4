"""DualPipeV, DeepSeek's V-shaped "cut-in-half" DualPipe (DeepSeek-AI, "DeepSeek-V3 Technical Report",
2024, section 3.2.1; the DualPipe repository's ``DualPipeV``; PyTorch's ``ScheduleDualPipeV``).

Like ZB-V it cuts the model into 2K stages placed in a V (device d holds
stages d and 2K-1-d), but in its steady state each step is an overlapped
pair: the forward of one chunk runs together with the full backward of the
other, so that each one's communication can hide behind the other's
computation (``schedule.Overlap``, written ``(0F4;7B0)OVERLAP_F_B``). Device
d runs, in DeepSeek's eight phases (chunk 0 = stage d, chunk 1 = stage 2K-1-d):

1. 2(K-1-d) forwards of chunk 0;
2. d+1 pairs of forwards, chunk 0 then chunk 1;
3. K-1-d rounds of chunk 1's I, its W, and chunk 1's next forward;
4. M-2K+d+1 rounds of two overlapped pairs, (F chunk 0 ; B chunk 1) and
   (F chunk 1 ; B chunk 0); the last device runs its first such pair as
   plain F then B, as DeepSeek's code does, to shorten the bubble;
5. K-1-d rounds of B chunk 1, then (F chunk 1 ; B chunk 0);
6. d+1 rounds of the backward of chunk 1 then chunk 0, full Bs for the
   first half and Is (W deferred) for the second;
7. K-1-d rounds of a deferred W and an I of chunk 0;
8. the d+1 Ws still deferred.

For K=2, M=4 (stages 0 and 3 on device 0, stages 1 and 2 on device 1)::

    device 0: 0F0 0F1 0F2 3F0 3I0 3W0 3F1 (0F3;3B1)OVERLAP_F_B (3F2;0B0)OVERLAP_F_B 3B2
              (3F3;0B1)OVERLAP_F_B 3B3 0I2 0W2 0I3 0W3
    device 1: 1F0 2F0 1F1 2F1 1F2 2B0 (2F2;1B0)OVERLAP_F_B (1F3;2B1)OVERLAP_F_B (2F3;1B1)OVERLAP_F_B
              2B2 1B2 2I3 1I3 2W3 1W3

DeepSeek's table (DualPipe README; PP there counts stages, so PP = 2K here):
bubble (K-1)(F&B + B - 3W) per device against 1F1B's (2K-1)(F+B) and
ZB1P's (2K-1)(F+B-2W) on 2K devices, F, B, W of one chunk; 2x the
parameters of a one-stage device and 2K+1 chunk-micro-batches of
activations per device. How long a pair (F&B) takes is the cost model's
``overlap`` rule: ``sum`` (default, F&B = F + B) or ``max``. Under unit cost
with a chunk's F = I = W = 1/2 and the sum rule, the measured idle time of
every device equals the table's (K-1)(F&B + B - 3W) = K-1 units for every
M >= 2K (``formulas.dualpipev_unit_makespan``): the step is 3M + K - 1 and
its bubble (K-1)/(3M+K-1), ZB-H1's, since overlap hides only communication
and unit cost makes that free. Under the ``max`` rule the last devices idle
the table's (K-1)(B + B - 3W) = (K-1)/2 and the others less. In-flight
activations peak at the table's 2K+1 chunk-micro-batches on every device,
each half a stage's.

Needs M >= 2K micro-batches, as DeepSeek's and PyTorch's versions do.

>>> print(DualPipeV().plan(devices=1, microbatches=2))
device 0: 0F0 1F0 0F1 1B0 (1F1;0B0)OVERLAP_F_B 1B1 0I1 0W1
"""

from __future__ import annotations

from pipesched import Schedule, formulas
from pipesched.compose import deepseek_phases, require_chunks

__all__ = ["DualPipeV"]


class DualPipeV:
    """DualPipeV: the V placement of ZB-V with overlapped forward-backward pairs in its steady state."""

    name = "dualpipev"
    default_chunks = 2

    def plan(self, devices: int, microbatches: int, chunks: int = 2) -> Schedule:
        require_chunks(chunks, 2, "dualpipev places two stages on each device, d and 2K-1-d")
        if microbatches < 2 * devices:
            raise ValueError(
                f"dualpipev needs at least 2K = {2 * devices} micro-batches on {devices} devices (as DeepSeek's and "
                f"PyTorch's do), not {microbatches}; use --microbatches {2 * devices} or more"
            )
        # device d is DeepSeek's rank d; its chunk 0 is stage d, its chunk 1 stage 2K-1-d
        return Schedule([deepseek_phases(d, 2 * devices - 1 - d, d, devices, microbatches) for d in range(devices)])

    def stages(self, devices: int, chunks: int = 2) -> int:
        """2K stages in a V, whatever ``chunks`` says (plan refuses any but 2)."""
        return 2 * devices

    def bubble(self, devices: int, microbatches: int, chunks: int = 2) -> float | None:
        return formulas.dualpipev_bubble(devices, microbatches) if microbatches >= 2 * devices else None
