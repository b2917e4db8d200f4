"""Lower bounds on the makespan (and period) of any valid schedule of one pipeline: what no order beats.

The setting is what ``ActionTimes`` holds (``pipesched.search.evaluate``):
a placement (stage s on device p(s): one stage per device, a V with two, or
any other), M micro-batches, and the engine's times: per stage s and
micro-batch m the forward F, backward B or its two halves I and W, the
recompute R where m is re-materialized (r(m) = 1, else 0), and per stage
boundary the transfer of the activation forward and of the gradient back,
c_F(s, m) and c_B(s, m): its link's busy time plus latency, 0 where both
stages share a device. A valid schedule runs, on the device of stage s,
F(s, m) and either B(s, m) or I(s, m) then W(s, m), F first
(``pipesched.schedule.validate``).

Every bound rests on three facts of the engine (``pipesched.engine``,
``pipesched.links``):

1. A device runs one action at a time, so the actions it runs take at least
   their summed durations between its first start and its last end.
2. An action waits for its input: F(s, m) for s > 0 starts no sooner than
   F(s-1, m)'s end plus c_F(s-1, m), since the message leaves no sooner
   than it is ready, holds its link ``busy`` and lands ``latency`` later
   (first-in first-out queueing only delays it); B or I of s < S-1 likewise
   waits for B or I of s + 1 plus c_B(s, m). A backward's own R runs first.
3. Every action on a device needs that device's F of the same stage and
   micro-batch before it, so a device's first action is a forward.

Each backward of (s, m) costs R·r(m) plus B or I + W, so at least
R·r(m) + min(B, I + W): the bounds hold whichever backward each pair takes.
An overlapped pair under the cost model's ``sum`` rule lasts F + R + B,
starts once both its inputs are there and lets both outputs go at its end,
so the facts hold for it too; under ``max`` it does two actions in less
time than their sum, and fact 1's sums overstate it (bounds (a) and (b) do
not hold for schedules with pairs there). Times are added in floating
point, so a bound can exceed a makespan that equals it in exact arithmetic
by a rounding (a few units in the last place); with times in halves, as the
tests draw them, both are exact.

Work of device d: ``work(d) = Σ_{s on d} Σ_m F(s,m) + R(s,m)·r(m) + min(B, I + W)(s,m)``.

(a) Busiest device: makespan ≥ max_d work(d). By fact 1.

(b) Device window: makespan ≥ max(head(d) + work(d), up(d) + back(d)) + tail(d) for every device d.

    head(d) = min_m P(σ, m), σ the lowest stage on d and
    P(s, m) = Σ_{j<s} F(j, m) + c_F(j, m): by fact 2 and induction on s,
    F(s, m) starts no sooner than P(s, m), and P grows with s; by fact 3
    d's first action is an F of one of its stages, so nothing on d starts
    before head(d).

    up(d) = min over d's stages s and m of U(s, m), the earliest the
    backward of (s, m) can start:
    U(s, m) = P(S-1, m) + F(S-1, m) + Σ_{j>s} (R·r + min(B, I))(j, m) + Σ_{s≤j<S-1} c_B(j, m),
    by fact 2 along m's forwards to the last stage and its gradient back to
    s. Every backward on d (R, then B or I) starts no sooner than up(d),
    and every W after its I, so d's backward work, at least
    back(d) = Σ_{s on d} Σ_m R·r + min(B, I + W), runs after up(d).

    tail(d) bounds what must follow d's work. Let e be the end of d's last
    B or I, of (s*, m*). Then s* = σ: a B or I of a higher stage on d is
    followed, through the gradient chain, by the B or I of σ for the same
    micro-batch, on d. After e, d runs only Ws (an F would need its own
    backward after it), of total Ω. Before e, d has run all its work but
    Ω, from head(d) on, and all its backward work but Ω, from up(d) on (by
    fact 1): e ≥ max(head(d) + work(d), up(d) + back(d)) - Ω. After e, d
    still runs Ω, and σ's gradient of m* must still reach stage 0 and be
    used there: by fact 2 that takes at least
    G(σ, m) = Σ_{j<σ} c_B(j, m) + Σ_{0<j<σ} (R·r + min(B, I))(j, m) + (R·r + min(B, I + W))(0, m)
    (the last term: stage 0 runs B, or I and then its W). So the makespan is
    at least e + max(Ω, G) ≥ max(head(d) + work(d), up(d) + back(d)) + max(0, G - Ω).
    Ω is at most the Ws of all of d's stages, ΣW(d), whence
    tail(d) = max(0, min_m G(σ, m) - ΣW(d)) for σ > 0, else 0: a deferred W
    can hide the gradient's way down, which is what zero-bubble schedules
    do. A schedule of full backwards only (``split=False``: GPipe, 1F1B,
    interleaved) has Ω = 0 and no I: there tail(d) = min_m G(σ, m) with
    every min(B, I) and min(B, I + W) read as B (in U too).

(c) Critical path: makespan ≥ max_m P(S-1, m) + (F + R·r)(S-1, m) + back(S-1, m) + G(S-1, m),
    back being min(B, I) (min(B, I + W) on stage 0; B with ``split=False``):
    micro-batch m's forward through every stage and its gradient back, by
    fact 2 along its chain of dependencies.

(p) Period back to back (``Trace.period``: steps run back to back, no
    barrier between them, start a period apart, which is the longest window
    any device or link is in use from its first start to its last end):
    period ≥ max_d work(d), since d's window holds all its actions (fact 1).

Under unit cost with one stage per device (F = 1, B = 2, I = W = 1, free
links) (b) is the closed forms: without split backwards, for the last device,
(K-1) + 3M + 2(K-1) = 3(M + K - 1), GPipe's and 1F1B's makespan; with them,
(K-1) + 3M + max(0, K - M) = 3M + K - 1 for M ≥ K, ZB-H1's.

>>> from pipesched import RunConfig, run
>>> from pipesched.pipeline import prepare
>>> from pipesched.search import from_prepared
>>> times = from_prepared(prepare(RunConfig(strategy="1f1b", devices=4, microbatches=8, cost="unit", compute=False)))
>>> lower_bound(times, split=False).value, 3 * (8 + 4 - 1)
(33.0, 33)
>>> for part in lower_bound(times).reason.split(", "):
...     print(part)
device 3: its first forward starts at 3 units at the earliest
then its work takes 24 units
then 0 units must follow (bound b)
"""

from __future__ import annotations

from typing import NamedTuple

from ..units import format_time
from .evaluate import ActionTimes

__all__ = [
    "Bound",
    "device_work",
    "busiest_device",
    "device_windows",
    "device_window",
    "critical_path",
    "bounds",
    "lower_bound",
    "period_bound",
]


class Bound(NamedTuple):
    """A makespan no valid schedule beats, and why, in one sentence."""

    value: float
    reason: str


def _t(times: ActionTimes, value: float) -> str:
    """A time in a reason, in the cost model's unit: seconds with an SI prefix, or units."""
    return format_time(value, times.time_unit)


def _recompute(times: ActionTimes, s: int, m: int) -> float:
    return times.time("R", s, m) if times.recompute[m] else 0.0


def _backward(times: ActionTimes, s: int, m: int, split: bool, last: bool) -> float:
    """The least time (s, m)'s backward holds its device: R·r, then B, or I (I + W where nothing follows)."""
    b = times.time("B", s, m)
    if split:
        i = times.time("I", s, m)
        b = min(b, i + times.time("W", s, m) if last else i)
    return _recompute(times, s, m) + b


def _ahead(times: ActionTimes, s: int, m: int) -> float:
    """P(s, m): micro-batch m's forwards and sends through the stages before s."""
    return sum(times.time("F", j, m) + times.send("F", j, m) for j in range(s))


def _down(times: ActionTimes, s: int, m: int, split: bool) -> float:
    """G(s, m): from the end of (s, m)'s backward until stage 0 has used its gradient."""
    if s == 0:
        return 0.0
    return sum(times.send("B", j, m) + _backward(times, j, m, split, last=j == 0) for j in range(s))


def device_work(times: ActionTimes, split: bool = True) -> list[float]:
    """Per device, the least time its actions take: Σ F + R·r + min(B, I + W) over its stages and micro-batches."""
    work = [0.0] * times.devices
    for s, d in enumerate(times.placement):
        for m in range(times.microbatches):
            work[d] += times.time("F", s, m) + _backward(times, s, m, split, last=True)
    return work


def busiest_device(times: ActionTimes, split: bool = True) -> Bound:
    """Bound (a): the busiest device's work."""
    work = device_work(times, split)
    d = max(range(times.devices), key=work.__getitem__)
    return Bound(work[d], f"device {d}'s work takes {_t(times, work[d])} (bound a)")


def _up(times: ActionTimes, s: int, m: int, split: bool) -> float:
    """U(s, m): the earliest (s, m)'s backward can start, its forwards through every stage and gradient back."""
    last = times.stages - 1
    t = _ahead(times, last, m) + times.time("F", last, m)
    for j in range(last, s, -1):  # the backwards of the stages after s, each sending its gradient on
        t += _backward(times, j, m, split, last=False) + times.send("B", j - 1, m)
    return t


def device_windows(times: ActionTimes, split: bool = True) -> list[Bound]:
    """Bound (b) of each device: from the earliest its first forward (or backward) can start, its work (or its
    backward work), then what must follow; 0 for a device without stages."""
    work = device_work(times, split)
    found = []
    for d in range(times.devices):
        mine = [s for s, p in enumerate(times.placement) if p == d]
        if not mine:
            found.append(Bound(0.0, f"device {d} holds no stage (bound b)"))
            continue
        low, ms = mine[0], range(times.microbatches)
        head = min(_ahead(times, low, m) for m in ms)
        up = min(_up(times, s, m, split) for s in mine for m in ms)
        back = sum(_backward(times, s, m, split, last=True) for s in mine for m in ms)
        tail = min(_down(times, low, m, split) for m in ms)
        if split:  # deferred Ws can fill the time the gradient takes to reach stage 0
            tail = max(0.0, tail - sum(times.time("W", s, m) for s in mine for m in ms))
        if head + work[d] >= up + back:
            start, what, length = head, "forward", ("work", work[d])
        else:
            start, what, length = up, "backward", ("backward work", back)
        found.append(
            Bound(
                start + length[1] + tail,
                f"device {d}: its first {what} starts at {_t(times, start)} at the earliest, then its {length[0]} "
                f"takes {_t(times, length[1])}, then {_t(times, tail)} must follow (bound b)",
            )
        )
    return found


def device_window(times: ActionTimes, split: bool = True) -> Bound:
    """Bound (b): the largest of ``device_windows``, the first device's where several are equal."""
    found = device_windows(times, split)
    return max(found, key=lambda b: (b.value, -found.index(b)))


def critical_path(times: ActionTimes, split: bool = True) -> Bound:
    """Bound (c): the longest chain of one micro-batch's forwards and backwards through every stage."""
    last = times.stages - 1
    best = Bound(0.0, "")
    for m in range(times.microbatches):
        value = (
            _ahead(times, last, m)
            + times.time("F", last, m)
            + _backward(times, last, m, split, last=last == 0)
            + _down(times, last, m, split)
        )
        if value > best.value or not best.reason:
            best = Bound(
                value, f"micro-batch {m}'s forwards and backwards through every stage take {_t(times, value)} (bound c)"
            )
    return best


def bounds(times: ActionTimes, split: bool = True) -> list[Bound]:
    """Bounds (a), (b) and (c); ``split=False`` for schedules of full backwards only (no I or W)."""
    return [busiest_device(times, split), device_window(times, split), critical_path(times, split)]


def period_bound(times: ActionTimes, split: bool = True) -> Bound:
    """Bound (p): a period no schedule's steps run back to back beat, the busiest device's work, since each
    device's window (``Trace.period``) holds all its actions.

    >>> from pipesched import RunConfig
    >>> from pipesched.pipeline import prepare
    >>> from pipesched.search import from_prepared
    >>> config = RunConfig(strategy="zb-h2", devices=4, microbatches=8, cost="unit", compute=False)
    >>> period_bound(from_prepared(prepare(config))).value  # 3M: ZB-H2 reaches it back to back
    24.0
    """
    busiest = busiest_device(times, split)
    return Bound(busiest.value, f"back to back, each device's window holds its work: {busiest.reason}")


def lower_bound(times: ActionTimes, split: bool = True) -> Bound:
    """The largest of ``bounds``, the first of them where several are equal."""
    found = bounds(times, split)
    return max(found, key=lambda b: (b.value, -found.index(b)))
