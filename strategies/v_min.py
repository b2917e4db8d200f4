"""V-Min (Qi et al., "Pipeline Parallelism with Controllable Memory", NeurIPS 2024, section 4): the V-shape
schedule with the least activation memory, about a third of 1F1B's.

Placement as ZB-V's: 2K stages in a V, device d holds stage d (chunk 0) and
stage 2K-1-d (chunk 1); the backward split into I and W. The order is the
paper's construction (``pipesched.compose.v_shape_order``): each device
repeats its building block (F of chunk 0, F of chunk 1, I of chunk 1, I of
chunk 0; ``v_block_offsets``) every 6 slots, one micro-batch per repeat,
neighbouring devices one slot apart, each block lasting 4K - 1 - 2d slots
(2 more when 3 divides K, so that the repeats do not collide); the Ws fill
the free slots; the warm-up and cool-down are squeezed without raising the
peak memory. It is the authors' generator's order (``zbv_greedy.py``, mem
setup ``min``) pass for pass
(every K <= 8, M <= 20 when written; the fixture keeps twelve sizes,
``tests/test_v_shape.py``). It runs any K and M. For K=2, M=4 (stages 0 and
3 on device 0, 1 and 2 on device 1)::

    device 0: 0F0 0F1 3F0 3I0 3W0 0I0 0W0 3F1 3I1 3W1 0F2 0I1 0W1 3F2 3I2 3W2 0F3 0I2 0W2 3F3 3I3 3W3 0I3 0W3
    device 1: 1F0 2F0 2I0 1I0 1F1 2F1 2W0 1W0 2I1 1I1 1F2 2F2 2W1 1W1 2I2 1I2 1F3 2F3 2W2 1W2 2I3 1I3 2W3 1W3

The paper's statements under unit cost (a chunk's F = I = W = 1/2, free
links), against the simulation (``formulas.v_min_peak_inflight``,
``formulas.v_min_unit_makespan``; found by simulation over K <= 20):

- memory, "1/3 of 1F1B", (K+4)//3 micro-batches in the authors' table
  against 1F1B's K: held exactly, 2·((K+4)//3) chunk-micro-batches (each
  half a 1F1B stage's) on the busiest device once M >= (K+4)//3;
- bubble, "about 2/3 of 1F1B's" (the authors' README: 2B/3 plus an overhead,
  B = (K-1)/(M+K-1)), an idle time of 2(K-1): the simulated idle time is
  2K - 5/2, or 2K - 7/2 when 3 divides K, once M >= (K+4)//3 (2K/3 + 2 when
  3 divides K): 1/2 (3/2) below the statement, no overhead left with free
  links.

>>> print(VMin().plan(devices=2, microbatches=1))
device 0: 0F0 3F0 3I0 3W0 0I0 0W0
device 1: 1F0 2F0 2I0 1I0 2W0 1W0
"""

from __future__ import annotations

from pipesched import Schedule, formulas
from pipesched.compose import require_chunks, v_shape_order

__all__ = ["VMin"]


class VMin:
    """V-Min: ZB-V's placement, the V-shape building block with a third of 1F1B's activation memory."""

    name = "v-min"
    default_chunks = 2

    def plan(self, devices: int, microbatches: int, chunks: int = 2) -> Schedule:
        require_chunks(chunks, 2, "v-min places two stages on each device, d and 2K-1-d")
        return Schedule(v_shape_order(devices, microbatches, "min"))

    def stages(self, devices: int, chunks: int = 2) -> int:
        """2K stages in a V, whatever ``chunks`` says (plan refuses any but 2)."""
        return 2 * devices

    def bubble(self, devices: int, microbatches: int, chunks: int = 2) -> float | None:
        return formulas.v_min_bubble(devices, microbatches)
