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
from typing import Any, Iterable, Sequence

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
