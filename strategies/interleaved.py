"""Interleaved 1F1B (Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters
Using Megatron-LM", SC 2021), as in Megatron-LM's ``forward_backward_pipelining_with_interleaving``.

Each device holds v model chunks: stage s runs on device s mod K. Micro-batches
go in rounds of K: a round's forwards run through chunk 0, then chunk 1, and
so on; backwards run the chunks in reverse. Device d warms up with
2(K-1-d) + (v-1)K forwards (Megatron's count), then alternates one forward and
one backward, then drains; when K divides M this is current Megatron-LM's and
PyTorch's ``ScheduleInterleaved1F1B`` order. Both refuse most M that K does not
divide; pipesched then runs M // K rounds of sizes within one of each other
(each at least K, larger first) and counts the warm-up from the first round's
size. Wherever PyTorch accepts such an M (rounds of equal size) the orders are
the same. For K=2, v=2, M=4, device 0 runs::

    0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3

Bubble under unit cost (a chunk's F and B cost 1/v and 2/v): (K-1)/(v·M + K-1),
the paper's for M a multiple of K; with these rounds it holds for every M >= K
(the property tests hold it to that).
With M < K there is only one short round; such runs are valid and exact, and
never worse than 1F1B, but no closed form is claimed for them.

>>> print(Interleaved().plan(devices=2, microbatches=2, chunks=2))
device 0: 0F0 0F1 2F0 2F1 2B0 2B1 0B0 0B1
device 1: 1F0 1F1 3F0 3B0 3F1 3B1 1B0 1B1
"""

from __future__ import annotations

from pipesched import Action, Schedule, formulas
from pipesched.compose import one_f_one_b

__all__ = ["Interleaved"]


def _rounds(devices: int, microbatches: int) -> list[range]:
    """Micro-batches in rounds of K; when K does not divide M, M // K rounds of sizes within one, each >= K."""
    count = max(1, microbatches // devices)
    base, extra = divmod(microbatches, count)
    rounds, start = [], 0
    for r in range(count):
        size = base + (r < extra)
        rounds.append(range(start, start + size))
        start += size
    return rounds


def _virtual_order(device: int, devices: int, rounds: list[range], chunks: int, op: str) -> list[Action]:
    """Megatron's order of (chunk, micro-batch): round by round, chunk by chunk (reversed for backward)."""
    chunk_order = list(range(chunks)) if op == "F" else list(reversed(range(chunks)))
    return [Action(c * devices + device, op, m) for round_ in rounds for c in chunk_order for m in round_]


class Interleaved:
    """Interleaved 1F1B: v model chunks per device, stage s on device s mod K."""

    name = "interleaved"
    default_chunks = 2

    def plan(self, devices: int, microbatches: int, chunks: int = 2) -> Schedule:
        rounds = _rounds(devices, microbatches)
        per_device = []
        for d in range(devices):
            forwards = _virtual_order(d, devices, rounds, chunks, "F")
            backwards = [[a] for a in _virtual_order(d, devices, rounds, chunks, "B")]
            first_round = len(rounds[0])
            warmup = devices - 1 - d if chunks == 1 else 2 * (devices - 1 - d) + (chunks - 1) * first_round
            per_device.append(one_f_one_b(forwards, backwards, warmup))
        return Schedule(per_device)

    def stages(self, devices: int, chunks: int = 2) -> int:
        """v stages per device, stage s on device s mod K."""
        return devices * chunks

    def bubble(self, devices: int, microbatches: int, chunks: int = 2) -> float | None:
        if microbatches < devices:
            return None
        return formulas.interleaved_bubble(devices, microbatches, chunks)
