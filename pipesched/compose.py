"""Building blocks that strategies compose per-device action lists from.

Schedules that look different share a few moves: run some forwards to warm
up, then alternate one forward with one backward, then drain; or run the
weight-gradient W a fixed number of micro-batches after its input-gradient I.
Each move is a function of action lists, so strategies stay a few lines and
share no base class.

>>> F = [Action(0, "F", m) for m in range(3)]
>>> B = [[Action(0, "B", m)] for m in range(3)]
>>> " ".join(map(str, one_f_one_b(F, B, warmup=1)))
'0F0 0F1 0B0 0F2 0B1 0B2'
>>> " ".join(map(str, defer_weights(split_backward(one_f_one_b(F, B, warmup=1)), lag=1)))
'0F0 0F1 0I0 0F2 0I1 0W0 0I2 0W1 0W2'
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np

from .schedule import Action, Item, Overlap, expand

__all__ = [
    "one_f_one_b",
    "split_backward",
    "defer_weights",
    "zero_bubble_order",
    "inflight_counts",
    "require_one_chunk",
    "require_chunks",
    "Steps",
    "deepseek_phases",
    "v_block_offsets",
    "v_shape_order",
]


def one_f_one_b(forwards: Sequence[Action], backwards: Sequence[Sequence[Action]], warmup: int) -> list[Action]:
    """``warmup`` forwards, then one forward and one backward group in turn, then the remaining backwards.

    Args:
        forwards: the device's forwards in the order they run.
        backwards: the device's backward groups (e.g. ``[B]`` or ``[I]``) in order.
        warmup: forwards before the first backward; clipped to ``len(forwards)``.
    """
    warmup = min(warmup, len(forwards))
    order = list(forwards[:warmup])
    pending = deque(backwards)
    for forward in forwards[warmup:]:
        order.append(forward)
        order.extend(pending.popleft())
    for group in pending:
        order.extend(group)
    return order


def split_backward(actions: Iterable[Action]) -> list[Action]:
    """Every full backward ``B`` becomes its input-gradient ``I`` (add the ``W`` with ``defer_weights``)."""
    return [Action(a.stage, "I", a.microbatch) if a.op == "B" else a for a in actions]


def defer_weights(actions: Iterable[Action], lag: int) -> list[Action]:
    """Insert each I's W after it, keeping ``lag`` weight-gradients pending; the rest run at the end.

    With ``lag=0`` every W follows its I at once. Ws run in the order of their Is.
    """
    order: list[Action] = []
    pending: deque[Action] = deque()
    for a in actions:
        order.append(a)
        if a.op == "I":
            pending.append(Action(a.stage, "W", a.microbatch))
            if len(pending) > lag:
                order.append(pending.popleft())
    order.extend(pending)
    return order


def zero_bubble_order(stage: int, microbatches: int, warmup: int, lag: int) -> list[Action]:
    """One stage's handcrafted zero-bubble order (Qi et al. 2024): 1F1B of F and I, each W ``lag`` behind.

    ZB-H1 is ``warmup=K-1-d, lag=d`` on device d; ZB-H2 doubles both.

    >>> " ".join(map(str, zero_bubble_order(0, 3, warmup=1, lag=1)))
    '0F0 0F1 0I0 0F2 0I1 0W0 0I2 0W1 0W2'
    """
    return defer_weights(
        one_f_one_b(
            [Action(stage, "F", m) for m in range(microbatches)],
            [[Action(stage, "I", m)] for m in range(microbatches)],
            warmup,
        ),
        lag,
    )


def inflight_counts(actions: Iterable[Any]) -> list[int]:
    """After each action, how many (stage, micro-batch) pairs have run F but not finished B or W.

    Anything with an ``op`` counts: actions of a schedule, or spans of a trace
    (whose recompute ``R`` changes nothing).

    >>> inflight_counts(Action.parse(a) for a in "0F0 0F1 0I0 0W0 0B1".split())
    [1, 2, 2, 1, 0]
    """
    counts, held = [], 0
    for a in expand(actions):
        held += 1 if a.op == "F" else -1 if a.op in "BW" else 0
        counts.append(held)
    return counts


def require_one_chunk(chunks: int, why: str, fix: str = "use --chunks 1") -> None:
    """Refuse ``chunks`` other than 1 for a strategy that places one stage per device, in one sentence.

    >>> require_one_chunk(2, "gpipe places one stage per device")
    Traceback (most recent call last):
    ValueError: gpipe places one stage per device, so --chunks 2 cannot apply; use --chunks 1
    """
    require_chunks(chunks, 1, why, fix)


def require_chunks(chunks: int, needed: int, why: str, fix: str | None = None) -> None:
    """Refuse ``chunks`` other than ``needed`` for a strategy with a fixed placement, in one sentence.

    >>> require_chunks(3, 2, "zb-v places stages d and 2K-1-d on device d")
    Traceback (most recent call last):
    ValueError: zb-v places stages d and 2K-1-d on device d, so --chunks 3 cannot apply; use --chunks 2
    """
    if chunks != needed:
        raise ValueError(f"{why}, so --chunks {chunks} cannot apply; {fix or f'use --chunks {needed}'}")


class Steps:
    """One device's order, written step by step as the papers write it: "forward of chunk 0", "weight pass".

    Each stage runs its micro-batches in order 0, 1, 2, ...: the caller names
    the op and the stage, ``Steps`` counts the micro-batch. An input-gradient
    ``I`` queues its ``W``; ``weight`` runs the oldest queued one (of one stage,
    or of any). Micro-batches from ``limit`` on are counted but left out, so a
    schedule written for more micro-batches keeps only those asked for.

    >>> s = Steps(limit=2)
    >>> s.forward(0); s.forward(0); s.backward(0, split=True); s.pair(0, 0); s.weight(); s.weight()
    >>> " ".join(map(str, s.order))
    '0F0 0F1 0I0 0B1 0W0'
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.order: list[Item] = []
        self._next: dict[tuple[int, str], int] = {}
        self._weights: deque[Action] = deque()

    def _take(self, stage: int, kind: str) -> int:
        mb = self._next.get((stage, kind), 0)
        self._next[(stage, kind)] = mb + 1
        return mb

    def _add(self, item: Item) -> None:
        if all(self._kept(a) for a in expand([item])):
            self.order.append(item)
        elif type(item) is Overlap:  # one half beyond the limit: keep the other alone
            self.order.extend(a for a in item if self._kept(a))

    def _kept(self, action: Action) -> bool:
        assert action.microbatch is not None  # Steps writes F, B, I and W only, each counted by _take
        return action.microbatch < self.limit

    def forward(self, stage: int) -> None:
        self._add(Action(stage, "F", self._take(stage, "F")))

    def backward(self, stage: int, split: bool = False) -> None:
        """A full backward ``B``, or with ``split`` an ``I`` whose ``W`` is queued."""
        mb = self._take(stage, "B")
        self._add(Action(stage, "I" if split else "B", mb))
        if split:
            self._weights.append(Action(stage, "W", mb))

    def pair(self, forward_stage: int, backward_stage: int) -> None:
        """The next forward of one stage overlapped with the next full backward of another."""
        f = Action(forward_stage, "F", self._take(forward_stage, "F"))
        b = Action(backward_stage, "B", self._take(backward_stage, "B"))
        self._add(Overlap(f, b))

    def weight(self, stage: int | None = None) -> None:
        """The oldest queued ``W`` (of ``stage``, if given); nothing if none is queued."""
        for w in self._weights:
            if stage is None or w.stage == stage:
                self._weights.remove(w)
                self._take(w.stage, "W")
                self._add(w)
                return

    def count(self, stage: int, kind: str) -> int:
        """How many of ``stage``'s forwards (``"F"``), backwards (``"B"``) or Ws (``"W"``) have been written."""
        return self._next.get((stage, kind), 0)


def deepseek_phases(chunk0: int, chunk1: int, rank: int, ranks: int, microbatches: int) -> list[Item]:
    """One rank's order in DeepSeek's eight phases (DeepSeek-V3 report, section 3.2.1; the DualPipe repository).

    ``chunk0`` and ``chunk1`` are the stages DeepSeek calls the rank's chunk 0
    and chunk 1, ``rank`` its place among ``ranks`` (the last runs its first
    steady pair unoverlapped, as DeepSeek's code does), ``microbatches`` how
    many each chunk runs. DualPipeV's device d is rank d of K; each half of
    DualPipe's devices runs it for K/2 ranks and M/2 micro-batches. Needs
    ``microbatches >= 2 * ranks``.

    >>> " ".join(map(str, deepseek_phases(0, 1, 0, 1, 2)))
    '0F0 1F0 0F1 1B0 (1F1;0B0)OVERLAP_F_B 1B1 0I1 0W1'
    """
    last = rank == ranks - 1
    s = Steps(limit=microbatches)
    for _ in range(2 * (ranks - 1 - rank)):  # 1
        s.forward(chunk0)
    for _ in range(rank + 1):  # 2
        s.forward(chunk0)
        s.forward(chunk1)
    for _ in range(ranks - 1 - rank):  # 3
        s.backward(chunk1, split=True)
        s.weight()
        s.forward(chunk1)
    for i in range(microbatches - 2 * ranks + rank + 1):  # 4
        if i == 0 and last:  # DeepSeek runs the last rank's first pair unoverlapped
            s.forward(chunk0)
            s.backward(chunk1)
        else:
            s.pair(chunk0, chunk1)
        s.pair(chunk1, chunk0)
    for _ in range(ranks - 1 - rank):  # 5
        s.backward(chunk1)
        s.pair(chunk1, chunk0)
    split = False
    for i in range(rank + 1):  # 6: the second half splits off its Ws
        if i == (rank + 1) // 2 and rank % 2 == 1:
            split = True
        s.backward(chunk1, split)
        if i == (rank + 1) // 2 and rank % 2 == 0:
            split = True
        s.backward(chunk0, split)
    for _ in range(ranks - 1 - rank):  # 7
        s.weight()
        s.backward(chunk0, split=True)
    for _ in range(rank + 1):  # 8
        s.weight()
    return s.order


# --- V-shape building blocks (Qi et al., "Pipeline Parallelism with Controllable Memory", NeurIPS 2024) ---
#
# One device's passes of one micro-batch, in the order of the paper's V-shape block: the forward of
# its chunk 0 (stage d), the forward of its chunk 1 (stage 2K-1-d), the input-gradient of chunk 1, the
# input-gradient of chunk 0. W is not part of the block: it fills the block's gaps.
_F0, _F1, _I1, _I0, _W = range(5)


def v_block_offsets(devices: int, memory: str) -> list[tuple[int, int, int, int]]:
    """Each device's V-shape building block: the slot of its F (chunk 0), F (chunk 1), I (chunk 1), I (chunk 0).

    A slot is one pass of one chunk (F = I = W); the block repeats every 6
    slots, one micro-batch per repeat. The offsets are the authors' stable
    patterns (``stable_pattern_v_min`` / ``stable_pattern_v_half`` in
    sail-sg/zero-bubble-pipeline-parallelism, ``zbv_greedy.py``): V-Min's F
    of chunk 0 one slot apart from device to device and its block lasting
    4K - 1 - 2d slots plus a gap of 2 when 3 divides K (so that the repeats
    do not collide), about a third of 1F1B's 6K; V-Half's two slots apart,
    lasting about 6K - 3d, a gap of 3 when K is even.

    >>> v_block_offsets(2, "min")
    [(0, 3, 4, 7), (1, 2, 5, 6)]
    """
    k = devices
    if memory == "min":
        gap = 2 if k % 3 == 0 else 0
        return [(d, 2 * k - 1 - d, 2 * k + gap + d, 4 * k + gap - 1 - d) for d in range(k)]
    if memory == "half":
        gap = 3 if k % 2 == 0 else 0
        return [(2 * d, 3 * k - 2 - d, 3 * k + gap + 2 * d - 1, 6 * k + gap - d - 2) for d in range(k)]
    raise ValueError(f"unknown V-shape memory setting {memory!r}; use 'min' or 'half'")


_Slots = list[list[list[int]]]  # [device][kind][micro-batch] -> slot


def _place_weights(slots: list[list[int]], by_chunk: bool) -> list[list[int]]:
    """The device's F and I slots with its Ws put in its free slots, each as soon as an I has left one pending.

    ``by_chunk`` keeps the two chunks' Ws apart (chunk 1's first when both
    wait); otherwise one list of Ws whose chunk is not yet decided.
    Leftover Ws run after the last I.
    """
    taken = {t: kind for kind in range(4) for t in slots[kind]}
    last = max(taken)
    weights: list[list[int]] = [[], []] if by_chunk else [[]]
    pending = [0, 0]
    for t in range(last + 1):
        kind = taken.get(t)
        if kind in (_I1, _I0):
            pending[kind - _I1 if by_chunk else 0] += 1
        elif kind is None:
            for chunk, n in enumerate(pending):
                if n:
                    weights[chunk].append(t)
                    pending[chunk] -= 1
                    break
    for chunk, n in enumerate(pending):
        for _ in range(n):
            last += 1
            weights[chunk].append(last)
    return [list(s) for s in slots[:4]] + weights


def _peak_held(slots: list[list[int]]) -> int:
    """The most chunk-micro-batches the device holds: +1 per F, -1 per W.

    Where no Ws are placed yet, each free slot runs one pending W: after slot
    s the Ws run number r_s = min(r_{s-1} + free_s, i_s), i_s the Is so far,
    which unrolls to r_s = free'_s + min(0, min over j <= s of (i_j - free'_j)),
    free' the free slots so far. Vectorised, as the squeeze calls this for
    every slot it tries.
    """
    kinds = np.full(max(ts[-1] for ts in slots if ts) + 1, -1)  # each kind's slots rise with the micro-batch
    for kind, ts in enumerate(slots):
        kinds[np.asarray(ts, dtype=int)] = kind
    forwards = np.cumsum((kinds == _F0) | (kinds == _F1))
    if len(slots) > 4:
        weights = np.cumsum(kinds >= _W)
    else:
        inputs = np.cumsum((kinds == _I1) | (kinds == _I0))
        free = np.cumsum(kinds < 0)
        weights = free + np.minimum(0, np.minimum.accumulate(inputs - free))
    return max(0, int((forwards - weights).max()))


def _dependencies(slots: _Slots, d: int, kind: int, m: int) -> list[int]:
    """Slots that must come before pass ``kind`` of micro-batch ``m`` on device ``d``."""
    deps = []
    if kind in (_F0, _I1) and d > 0:  # chunk 0's forward and chunk 1's backward flow from device 0 to K-1
        deps.append(slots[d - 1][kind][m])
    if kind in (_F1, _I0) and d + 1 < len(slots):  # the others flow back
        deps.append(slots[d + 1][kind][m])
    if kind in (_F1, _I1, _I0):  # the turns of the V: F0 -> F1 -> I1 -> I0 on the same device
        deps.append(slots[d][kind - 1][m])
    if kind == _W:  # the m-th W after the m-th I, whichever chunk's
        deps.append(sorted(slots[d][_I1] + slots[d][_I0])[m])
    if m > 0:
        deps.append(slots[d][kind][m - 1])
    return deps


def _in_slot_order(slots: _Slots) -> list[tuple[int, int, int, int]]:
    """Every pass as (slot, device, kind, micro-batch), in slot order (ties by device, kind, micro-batch)."""
    return sorted(
        (t, d, kind, m) for d, dev in enumerate(slots) for kind, ts in enumerate(dev) for m, t in enumerate(ts)
    )


def _eager(slots: _Slots) -> _Slots:
    """Each pass run as early as its inputs and its device allow, in the given order, every pass one slot."""
    start: _Slots = [[[0] * len(ts) for ts in dev] for dev in slots]
    free = [0] * len(slots)
    for _, d, kind, m in _in_slot_order(slots):
        # every pass a dependency names comes earlier in slot order, so its start is already set (a W's I
        # is on its own device, which ``free`` already keeps it after)
        start[d][kind][m] = max([free[d]] + [t + 1 for t in _dependencies(start, d, kind, m)])
        free[d] = start[d][kind][m] + 1
    return start


def _squeeze(slots: _Slots, with_weights: bool) -> _Slots:
    """The paper's squeeze: passes of the warm-up and cool-down move to the earliest free slot their inputs
    allow, unless that raises the peak memory of the repeated blocks; the steady state stays as it is.

    The steady state runs from device 0's first I of chunk 0 to its last F of
    chunk 0. The warm-up moves only in the pass that places the Ws
    (``with_weights``); the cool-down moves in both. Returns the squeezed
    F and I slots, run eagerly (Ws placed as ``_place_weights`` does).
    """
    slots = [_place_weights(dev, by_chunk=False) if with_weights else [list(ts) for ts in dev] for dev in slots]
    budget = max(_peak_held(dev) for dev in slots)
    taken: list[set[int]] = [set() for _ in slots]
    phase = "warm-up"
    last_forward = len(slots[0][_F0]) - 1
    for t, d, kind, m in _in_slot_order(slots):
        if phase == "warm-up" and d == 0 and kind == _I0:
            phase = "steady"
        if phase == "steady" or (phase == "warm-up" and not with_weights):
            if phase == "steady" and kind == _F0 and m == last_forward:  # the first such F is device 0's
                phase = "cool-down"
            taken[d].add(t)
            continue
        earliest = max(_dependencies(slots, d, kind, m), default=-1) + 1
        for candidate in range(earliest, t):
            if candidate in taken[d]:
                continue
            slots[d][kind][m] = candidate
            if _peak_held(slots[d]) <= budget:
                break
        else:
            slots[d][kind][m] = t
        taken[d].add(slots[d][kind][m])
    if not with_weights:
        slots = [_place_weights(dev, by_chunk=False) for dev in slots]
    return [dev[:4] for dev in _eager(slots)]


def v_shape_order(devices: int, microbatches: int, memory: str) -> list[list[Action]]:
    """Each device's order of V-Min (``memory="min"``) or V-Half (``"half"``), built from the building block.

    The paper's construction (section 4, and the authors' ``zbv_greedy.py``):
    repeat each device's block (``v_block_offsets``) once per micro-batch,
    6 slots apart; put the Ws in the free slots; squeeze the warm-up and the
    cool-down without raising the peak memory, then the cool-down again with
    the Ws taken out; put the Ws back, each chunk's in its own queue. Device d
    holds stage d (chunk 0) and stage 2K-1-d (chunk 1), as in ZB-V.

    >>> [" ".join(map(str, row)) for row in v_shape_order(2, 2, "min")]
    ['0F0 0F1 3F0 3I0 3W0 0I0 0W0 3F1 3I1 3W1 0I1 0W1', '1F0 2F0 2I0 1I0 1F1 2F1 2W0 1W0 2I1 1I1 2W1 1W1']
    """
    return [list(row) for row in _v_shape_order(devices, microbatches, memory)]


@lru_cache(maxsize=32)  # the squeeze takes seconds at K = 64: plans, sweeps and reports ask for one size repeatedly
def _v_shape_order(devices: int, microbatches: int, memory: str) -> tuple[tuple[Action, ...], ...]:
    blocks = v_block_offsets(devices, memory)
    slots = [[[t + 6 * m for m in range(microbatches)] for t in block] for block in blocks]
    slots = _squeeze(_squeeze(slots, with_weights=True), with_weights=False)
    orders = []
    for d, dev in enumerate(_place_weights(s, by_chunk=True) for s in slots):
        up = 2 * devices - 1 - d
        stage, op = (d, up, up, d, up, d), "FFIIWW"  # by kind: F0, F1, I1, I0, and the Ws of chunk 1, chunk 0
        passes = sorted((t, kind, m) for kind, ts in enumerate(dev) for m, t in enumerate(ts))
        orders.append(tuple(Action(stage[kind], op[kind], m) for _, kind, m in passes))
    return tuple(orders)
