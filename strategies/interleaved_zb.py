"""Interleaved zero bubble (PyTorch's ``ScheduleInterleavedZeroBubble``, after Qi et al., "Zero Bubble Pipeline
Parallelism", ICLR 2024): interleaved 1F1B's looped placement with the backward split into I and W.

Each device holds v stages, stage s on device s mod K. Micro-batches go in
rounds of g = M / max(1, M // K) (PyTorch refuses an M that the rounds do
not divide; so does pipesched, naming the nearest M that works). Device d
runs, in PyTorch's steps:

- a warm-up of w_d = min((v-1)·g + K-1-d, v·M) forwards, step t's through
  its stage (t // g) mod v (each stage's micro-batches in order);
- then, while forwards remain, one forward and one I per step, the I's
  through its stages in reverse, stage v-1-((t - w_d) // g) mod v; from its
  (d+1)-th such step on, each followed by the W of the oldest I whose W has
  not run (device d defers d: the first device none);
- then the remaining I's, each followed by a W the same way;
- then the Ws left.

With v = 1 this is ZB-H1's order (``zb-h1``). Under unit cost (a stage's
F = I = W = 1/v, free links) the step lasts 3M + (K-1)/v for M >= K, a
bubble of (K-1)/(3vM + K-1): ZB-H1's with its idle time divided by v (found
by simulation over K <= 5, M <= 12, v <= 3; regression check:
``tests/test_interleaved_zb.py::test_unit_cost_closed_forms``). Peak in
flight, every device: min((v-1)·g + K, v·M) stage-micro-batches, derived:
the count moves with the device's own order alone, +1 per F and -1 per W;
after the warm-up it holds w_d = (v-1)·g + K-1-d, each of the next d steps
adds a forward and no W, the step after adds one more and its W, and from
there each step's F and W balance, so the peak is w_d + d + 1, or v·M if
the forwards run out first. For K=2, v=2, M=2 (one round of g = 2; stages 0
and 2 on device 0, 1 and 3 on device 1)::

    device 0: 0F0 0F1 2F0 2F1 2I0 2W0 2I1 2W1 0I0 0W0 0I1 0W1
    device 1: 1F0 1F1 3F0 3I0 3F1 3I1 3W0 1I0 3W1 1I1 1W0 1W1

>>> print(InterleavedZB().plan(devices=2, microbatches=2, chunks=2))
device 0: 0F0 0F1 2F0 2F1 2I0 2W0 2I1 2W1 0I0 0W0 0I1 0W1
device 1: 1F0 1F1 3F0 3I0 3F1 3I1 3W0 1I0 3W1 1I1 1W0 1W1
"""

from __future__ import annotations

from collections import defaultdict
from itertools import count

from pipesched import Action, Schedule, formulas
from pipesched.errors import ConfigError

__all__ = ["InterleavedZB"]


def rounds_of(devices: int, microbatches: int) -> int:
    """g, micro-batches per round: M / max(1, M // K); ``ConfigError`` where the rounds do not divide M."""
    rounds = max(1, microbatches // devices)
    if microbatches % rounds:
        # the nearest M on each side whose own rounds divide it (a larger M may have more rounds)
        below = max(m for m in range(1, microbatches) if m % max(1, m // devices) == 0)
        above = next(m for m in count(microbatches + 1) if m % max(1, m // devices) == 0)
        raise ConfigError(
            f"interleaved-zb runs micro-batches in {rounds} rounds of equal size, as PyTorch's "
            f"ScheduleInterleavedZeroBubble does, and {rounds} does not divide --microbatches {microbatches}; "
            f"use {below} or {above}"
        )
    return microbatches // rounds


def _device_order(d: int, devices: int, microbatches: int, chunks: int) -> list[Action]:
    g = rounds_of(devices, microbatches)
    total = chunks * microbatches
    warmup = min((chunks - 1) * g + devices - 1 - d, total)

    def forward_stage(step: int) -> int:
        return (step // g) % chunks * devices + d

    def backward_stage(step: int) -> int:
        return (chunks - 1 - ((step - warmup) // g) % chunks) * devices + d

    nxt: dict[tuple[str, int], int] = defaultdict(int)  # per (op, stage): its next micro-batch
    weights = [0]  # Ws run so far

    def nxt_w() -> int:
        weights[0] += 1
        return weights[0] - 1

    def action(op: str, stage: int) -> Action:
        m = nxt[(op, stage)]
        nxt[(op, stage)] += 1
        return Action(stage, op, m)

    order: list[Action] = []
    backwards: list[int] = []  # the step of each I so far: the Ws follow in the same order
    for step in range(total + warmup):
        if step < total:  # warm-up and steady state: a forward
            order.append(action("F", forward_stage(step)))
        if step >= warmup:  # steady state and drain: an I, then the oldest W left, but device d defers d of them
            order.append(action("I", backward_stage(step)))
            backwards.append(step)
            if step - warmup >= d:
                order.append(action("W", backward_stage(backwards[nxt_w()])))
    while len(backwards) > sum(v for (op, _), v in nxt.items() if op == "W"):
        order.append(action("W", backward_stage(backwards[nxt_w()])))
    return order


class InterleavedZB:
    """Interleaved zero bubble: v stages per device (stage s on device s mod K), backward split into I and W."""

    name = "interleaved-zb"
    default_chunks = 2

    def plan(self, devices: int, microbatches: int, chunks: int = 2) -> Schedule:
        return Schedule([_device_order(d, devices, microbatches, chunks) for d in range(devices)])

    def bubble(self, devices: int, microbatches: int, chunks: int = 2) -> float | None:
        return formulas.interleaved_zb_bubble(devices, microbatches, chunks) if microbatches >= devices else None
