"""DualPipe, DeepSeek's bidirectional pipeline (DeepSeek-AI, "DeepSeek-V3 Technical Report", 2024, section
3.2.1; the DualPipe repository's ``DualPipe``, ``dualpipe/dualpipe.py``).

The model is cut into K stages on K devices (K even) and fed from both ends:
the first half of the micro-batches, 0..M/2-1, go down (stage s on device s),
the second half, M/2..M-1, go up (stage s on device K-1-s). Device d thus
holds stage d of the downward pipeline and stage K-1-d of the upward one,
twice a one-stage device's parameters; the engine all-reduces each stage's
gradients between its two devices after their last backward. As in
DualPipeV, the steady state runs overlapped pairs, the forward of one
direction with the full backward of the other (``schedule.Overlap``), so
that each one's communication can hide behind the other's computation.

With h = K/2 and r = min(d, K-1-d) (DeepSeek's ``half_rank``), device d
runs DeepSeek's eight phases, where "chunk 0" is the downward stage on the
first half of the devices and the upward one on the second (DeepSeek's
``phase ^= is_in_second_half``), "chunk 1" the other:

1. 2(h-1-r) forwards of chunk 0;
2. r+1 pairs of forwards, chunk 0 then chunk 1;
3. h-1-r rounds of chunk 1's I, its W, and chunk 1's next forward;
4. M/2-K+r+1 rounds of two overlapped pairs, (F chunk 0 ; B chunk 1) and
   (F chunk 1 ; B chunk 0); the two middle devices (r = h-1) run their
   first such pair as plain F then B, as DeepSeek's code does, to shorten
   the bubble;
5. h-1-r rounds of B chunk 1, then (F chunk 1 ; B chunk 0);
6. r+1 rounds of the backward of chunk 1 then chunk 0, full Bs for the
   first half and Is (W deferred) for the second;
7. h-1-r rounds of a deferred W and an I of chunk 0;
8. the r+1 Ws still deferred.

Each half of the devices runs DualPipeV's order on h devices and M/2
micro-batches, DualPipe being two DualPipeVs "cut in half" and mirrored.
For K=2, M=4 (both devices middle ones)::

    device 0: 0F0 1F2 0F1 1B2 (1F3;0B0)OVERLAP_F_B 1B3 0I1 0W1
    device 1: 0F2 1F0 0F3 1B0 (1F1;0B2)OVERLAP_F_B 1B1 0I3 0W3

DeepSeek's table (DualPipe README; PP the ranks, here K): bubble
(PP/2-1)(F&B + B - 3W) per device against 1F1B's (PP-1)(F+B) and ZB1P's
(PP-1)(F+B-2W); 2x the parameters of a one-stage device; PP+1 stage-
micro-batches of activations per device. How long a pair (F&B) takes is the
cost model's ``overlap`` rule: ``sum`` (default, F&B = F + B) or ``max``.
Under unit cost (a stage's F = I = W = 1, B = 2, free links) the table's
bubble is K-2 with the sum rule and K/2-1 with the max rule. The
simulation gives, for every even K <= 8 and even M from 2K to 2K+14 that
the tests draw (found by simulation, not derived:
``formulas.dualpipe_unit_makespan``): under the sum rule every device idles
exactly the table's K-2, a step of 3M + K - 2 and a bubble of
(K-2)/(3M+K-2); under the max rule the middle devices idle the table's
K/2-1 and device d idles min(r+1, K/2-1), a step of 2M + 3K/2. Each device
holds K+1 stage-micro-batches at its peak, the table's PP+1, and the
parameters of two stages, the table's 2x.

Needs an even K and an even M >= 2K, as DeepSeek's code asserts.

>>> print(DualPipe().plan(devices=2, microbatches=4))
device 0: 0F0 1F2 0F1 1B2 (1F3;0B0)OVERLAP_F_B 1B3 0I1 0W1
device 1: 0F2 1F0 0F3 1B0 (1F1;0B2)OVERLAP_F_B 1B1 0I3 0W3
"""

from __future__ import annotations

from pipesched import Action, Overlap, Schedule, formulas
from pipesched.compose import deepseek_phases, require_one_chunk
from pipesched.schedule import Item

__all__ = ["DualPipe"]


def _device_order(d: int, devices: int, microbatches: int) -> list[Item]:
    half, half_m = devices // 2, microbatches // 2
    r = min(d, devices - 1 - d)
    down, up = d, devices - 1 - d  # stage d of the downward pipeline, stage K-1-d of the upward one
    c0, c1 = (down, up) if d < half else (up, down)  # DeepSeek's chunk 0 and chunk 1 of device d
    order = deepseek_phases(c0, c1, r, half, half_m)  # each stage's micro-batches from 0; the upward ones shifted

    def shifted(a: Action) -> Action:
        assert a.microbatch is not None  # Steps writes F, B, I and W only
        return Action(a.stage, a.op, a.microbatch + half_m) if a.stage == up else a

    return [
        Overlap(shifted(item.forward), shifted(item.backward)) if type(item) is Overlap else shifted(item)  # type: ignore[arg-type]
        for item in order
    ]


def _check_sizes(devices: int, microbatches: int) -> None:
    """Refuse, in one sentence naming the nearest valid value, an odd K or an M that is odd or below 2K."""
    if devices % 2:
        fix = "--devices 2" if devices < 2 else f"--devices {devices - 1} or {devices + 1}"
        raise ValueError(
            f"dualpipe feeds the pipeline from both ends and needs an even number of devices (as DeepSeek's "
            f"does), not {devices}; use {fix}"
        )
    if microbatches < 2 * devices:
        raise ValueError(
            f"dualpipe needs at least 2K = {2 * devices} micro-batches on {devices} devices (as DeepSeek's does), "
            f"not {microbatches}; use --microbatches {2 * devices} or more"
        )
    if microbatches % 2:
        raise ValueError(
            f"dualpipe sends half the micro-batches each way and needs an even number (as DeepSeek's does), not "
            f"{microbatches}; use --microbatches {microbatches - 1} or {microbatches + 1}"
        )


class DualPipe:
    """DualPipe: two pipelines fed from both ends, device d holding stages d and K-1-d, overlapped pairs."""

    name = "dualpipe"

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        require_one_chunk(chunks, "dualpipe holds one stage of each direction on each device, d and K-1-d")
        _check_sizes(devices, microbatches)
        return Schedule([_device_order(d, devices, microbatches) for d in range(devices)])

    def stages(self, devices: int, chunks: int = 1) -> int:
        """K stages, each on two devices (one per direction)."""
        return devices

    def bubble(self, devices: int, microbatches: int, chunks: int = 1) -> float | None:
        return (
            formulas.dualpipe_bubble(devices, microbatches) if formulas.dualpipe_runs(devices, microbatches) else None
        )
