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

from .schedule import Action

__all__ = ["one_f_one_b", "split_backward", "defer_weights", "inflight_counts", "require_one_chunk"]


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


def inflight_counts(actions: Iterable[Any]) -> list[int]:
    """After each action, how many (stage, micro-batch) pairs have run F but not finished B or W.

    Anything with an ``op`` counts: actions of a schedule, or spans of a trace
    (whose recompute ``R`` changes nothing).

    >>> inflight_counts(Action.parse(a) for a in "0F0 0F1 0I0 0W0 0B1".split())
    [1, 2, 2, 1, 0]
    """
    counts, held = [], 0
    for a in actions:
        held += 1 if a.op == "F" else -1 if a.op in "BW" else 0
        counts.append(held)
    return counts


def require_one_chunk(chunks: int, why: str, fix: str = "use --chunks 1") -> None:
    """Refuse ``chunks`` other than 1 for a strategy that places one stage per device, in one sentence.

    >>> require_one_chunk(2, "gpipe places one stage per device")
    Traceback (most recent call last):
    ValueError: gpipe places one stage per device, so --chunks 2 cannot apply; use --chunks 1
    """
    if chunks != 1:
        raise ValueError(f"{why}, so --chunks {chunks} cannot apply; {fix}")
