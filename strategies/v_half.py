"""V-Half (Qi et al., "Pipeline Parallelism with Controllable Memory", NeurIPS 2024, section 4): the V-shape
schedule with half of 1F1B's activation memory and half of its bubble.

Placement as ZB-V's: 2K stages in a V, device d holds stage d (chunk 0) and
stage 2K-1-d (chunk 1); the backward split into I and W. The order is the
paper's construction (``pipesched.compose.v_shape_order``): each device
repeats its building block (F of chunk 0, F of chunk 1, I of chunk 1, I of
chunk 0; ``v_block_offsets``) every 6 slots, one micro-batch per repeat,
neighbouring devices two slots apart on the way down, each block lasting
6K - 2 - 3d slots (3 more when K is even, so that the repeats do not
collide); the Ws fill the free slots; the warm-up and cool-down are squeezed
without raising the peak memory. It is the authors' generator's order
(``zbv_greedy.py``, mem setup ``half``) pass for pass
(every K <= 8, M <= 20 when written; the fixture keeps twelve sizes,
``tests/test_v_shape.py``). It runs any K and M. For K=2,
M=3 (stages 0 and 3 on device 0, 1 and 2 on device 1)::

    device 0: 0F0 0F1 0F2 3F0 3I0 3W0 3F1 0I0 3I1 3W1 3F2 3I2 0I1 3W2 0I2 0W0 0W1 0W2
    device 1: 1F0 2F0 1F1 2F1 2I0 2W0 1I0 1W0 1F2 2F2 2I1 1I1 2I2 1I2 2W1 2W2 1W1 1W2

The paper's statements under unit cost (a chunk's F = I = W = 1/2, free
links), against the simulation (``formulas.v_half_peak_inflight``,
``formulas.v_half_unit_makespan``; found by simulation over K <= 20):

- memory, "1/2 of 1F1B", (K+2)//2 micro-batches in the authors' table
  against 1F1B's K: held exactly, 2·((K+2)//2) chunk-micro-batches (each
  half a 1F1B stage's) on the busiest device once M >= (K+2)//2;
- bubble, "about half of 1F1B's" (the authors' README: B/2, B =
  (K-1)/(M+K-1)), an idle time of 3(K-1)/2: the simulated idle time is
  3·floor((K-1)/2) - 1/2 for K >= 3 (1/2 for K = 2) once M >= K + 2: 1/2
  below the statement for odd K, 2 below for even K >= 4 (1 for K = 2).

>>> print(VHalf().plan(devices=2, microbatches=1))
device 0: 0F0 3F0 3I0 3W0 0I0 0W0
device 1: 1F0 2F0 2I0 2W0 1I0 1W0
"""

from __future__ import annotations

from pipesched import Schedule, formulas
from pipesched.compose import require_chunks, v_shape_order

__all__ = ["VHalf"]


class VHalf:
    """V-Half: ZB-V's placement, the V-shape building block with half of 1F1B's activation memory."""

    name = "v-half"
    default_chunks = 2

    def plan(self, devices: int, microbatches: int, chunks: int = 2) -> Schedule:
        require_chunks(chunks, 2, "v-half places two stages on each device, d and 2K-1-d")
        return Schedule(v_shape_order(devices, microbatches, "half"))

    def stages(self, devices: int, chunks: int = 2) -> int:
        """2K stages in a V, whatever ``chunks`` says (plan refuses any but 2)."""
        return 2 * devices

    def bubble(self, devices: int, microbatches: int, chunks: int = 2) -> float | None:
        return formulas.v_half_bubble(devices, microbatches)
