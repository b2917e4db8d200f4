"""What a simulation leaves behind: every action and transfer with start and end, and memory over time.

The trace is plain data; metrics and reports read only this. It exports to the
Chrome trace-event format, which Perfetto (ui.perfetto.dev) and
chrome://tracing open: one track per device and one per link.

>>> t = Trace(devices=1, time_unit="unit")
>>> t.spans.append(Span(0, "F", 0, 0, 0.0, 1.0))
>>> t.makespan, t.spans[0]
(1.0, Span(device=0, name='0F0', start=0.0, end=1.0))
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any, Generic, Iterable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np

__all__ = ["Span", "Transfer", "MemorySample", "Records", "Trace", "to_chrome"]


class Span(NamedTuple):
    """Device ``device`` ran ``op`` (F, B, I, W, or R for a recompute) of ``stage`` on ``microbatch``."""

    device: int
    op: str
    stage: int
    microbatch: int
    start: float
    end: float

    @property
    def name(self) -> str:
        return f"{self.stage}{self.op}{self.microbatch}"

    def __repr__(self) -> str:
        return f"Span(device={self.device}, name={self.name!r}, start={self.start!r}, end={self.end!r})"


#: Transfer ops that are chunks of a collective (a replicated stage's all-reduce, or reduce-scatter and
#: all-gather; a tied pair's all-reduce), not an action's output.
_CHUNKS = ("allreduce", "reduce_scatter", "all_gather", "tie")


class Transfer(NamedTuple):
    """The link ``src -> dst`` was busy with ``nbytes`` from start to end, and they landed at ``arrival``.

    What moved: the output of action ``(stage, op, microbatch)`` (named like
    ``2F0``), or, with op ``"allreduce"`` or ``"reduce_scatter"``, a gradient
    chunk of ``stage``, with op ``"all_gather"`` one of its updated parameters
    (``microbatch`` then numbers the collective's step), or, with op
    ``"tie"``, a chunk of the tied-weight all-reduce of ``stage`` and its pair
    (``pipesched.collectives``).
    ``arrival - end`` is the link's latency: the next send may use the link
    meanwhile.
    """

    src: int
    dst: int
    stage: int
    op: str
    microbatch: int
    nbytes: int
    start: float
    end: float
    arrival: float

    @property
    def name(self) -> str:
        return f"{self.op} {self.stage}" if self.op in _CHUNKS else f"{self.stage}{self.op}{self.microbatch}"


class MemorySample(NamedTuple):
    """Bytes a device held from ``time`` on, by role (see ``pipesched.memory``).

    >>> MemorySample(0.0, 100, 100, 600, 24, 0, 8).roles()["optimizer"]
    600
    """

    time: float
    params: int
    grads: int
    optimizer: int
    activations: int
    deferred: int
    buffers: int

    @property
    def activation_bytes(self) -> int:
        """Everything kept for a backward: activations, and what deferred weight-gradients need."""
        return self.activations + self.deferred

    @property
    def total_bytes(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.deferred + self.buffers

    def roles(self) -> dict[str, int]:
        """The bytes by role, under the names ``--json`` uses (``memory_by_role``); they sum to ``total_bytes``."""
        return {
            "parameters": self.params,
            "gradients": self.grads,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "deferred": self.deferred,
            "buffers": self.buffers,
        }


#: The kinds ``Records`` stores: exactly those with column types in ``_COLUMN_TYPES``.
R = TypeVar("R", Span, Transfer, MemorySample)


class Records(Generic[R]):
    """A list of one kind of NamedTuple, stored as typed columns.

    A step of 64 devices and 4096 micro-batches leaves a million records; as
    tuples they would take about 100 bytes each, as columns (``array``) about
    40. Reading gives the NamedTuple back, so code reads it like a list.

    Records arrive one or more per simulated action, so ``add(*fields)``
    only appends the fields to a short list, and every ``_CHUNK`` records
    they move into the columns at once (C loops, no Python call per value).
    Every read moves the rest first. A text field's codes number its words in
    the order they reached the columns: they compare within one ``Records``,
    never across two.

    >>> spans = Records(Span)
    >>> spans.append(Span(0, "F", 2, 1, 0.0, 1.5))
    >>> spans.add(0, "B", 2, 1, 1.5, 4.5)
    >>> spans[0], len(spans), spans == [Span(0, "F", 2, 1, 0.0, 1.5), Span(0, "B", 2, 1, 1.5, 4.5)]
    (Span(device=0, name='2F1', start=0.0, end=1.5), 2, True)
    """

    __slots__ = ("kind", "_columns", "_codes", "_words", "_text", "_pending", "add")

    def __init__(self, kind: type[R], items: Iterable[R] = ()):
        self.kind: type[R] = kind
        self._columns = [array(t) for t in _COLUMN_TYPES[kind.__name__]]
        self._text = _TEXT_FIELDS[kind.__name__]  # fields stored as indexes into _words
        self._words: list[str] = []
        self._codes: dict[str, int] = {}
        self._pending: list[Any] = []  # the fields of the records not yet in the columns, one after another
        self.add = self._adder()
        for item in items:
            self.append(item)

    def __getstate__(self) -> tuple[Any, ...]:
        """Copies and pickles hold the records, not ``add``, which writes into this object's own list."""
        self._flush()
        return (self.kind, self._columns, self._words, self._codes)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.kind, self._columns, self._words, self._codes = state
        self._text = _TEXT_FIELDS[self.kind.__name__]
        self._pending = []
        self.add = self._adder()

    def _adder(self) -> Any:
        """``add(*fields)``: a record from its fields, without building the NamedTuple (the engine's form)."""
        pending, flush, limit = self._pending, self._flush, _CHUNK * len(self._columns)
        keep = pending.extend

        def add(*fields: Any) -> None:
            keep(fields)
            if len(pending) >= limit:
                flush()

        return add

    def append(self, item: R) -> None:
        self._check(item)
        self.add(*item)

    def set_last(self, *fields: Any) -> None:
        """Replace the last record by one with ``fields``."""
        self._check(fields)
        if not self._pending:  # the last record, moved back out of the columns to be replaced
            self._pending.extend(column.pop() for column in self._columns)
        self._pending[-len(fields) :] = fields

    def _check(self, fields: Sequence[Any]) -> None:
        """A record's field count, checked where a caller hands one over (``add``, the engine's, trusts it)."""
        if len(fields) != len(self._columns):
            raise TypeError(f"a {self.kind.__name__} has {len(self._columns)} fields, not {len(fields)}")

    def _flush(self) -> None:
        """Move the pending records (their fields one after another) into the columns.

        All or nothing: every column's values are converted before any column
        grows, so a value of the wrong type raises here (at the first read after
        it was added) and leaves the columns as they were, the pending records
        dropped.
        """
        pending, n = self._pending, len(self._columns)
        if not pending:
            return
        try:
            converted: list[array] = []
            for j, column in enumerate(self._columns):
                values = pending[j::n]
                if j in self._text:
                    for word in dict.fromkeys(values):  # new words numbered in order of first appearance
                        if word not in self._codes:
                            self._codes[word] = len(self._words)
                            self._words.append(word)
                    values = list(map(self._codes.__getitem__, values))
                converted.append(array(column.typecode, values))  # sized once, as extend would not
            for column, part in zip(self._columns, converted):
                column.extend(part)
        finally:
            pending.clear()

    def _row(self, i: int) -> R:
        values: list[Any] = [column[i] for column in self._columns]
        for j in self._text:
            values[j] = self._words[values[j]]
        return self.kind(*values)

    def __getitem__(self, i: int) -> R:
        return self._row(range(len(self))[i])

    def __len__(self) -> int:
        self._flush()
        return len(self._columns[0])

    def __iter__(self) -> Iterator[R]:
        for i in range(len(self)):
            yield self._row(i)

    def code(self, word: str) -> int:
        """The number a text field's value is stored as (see ``column``)."""
        self._flush()
        return self._codes[word]

    def has_word(self, word: str) -> bool:
        self._flush()
        return word in self._codes

    def column(self, name: str) -> array:
        """One field's values, for fast arithmetic; text fields as codes (see ``code``)."""
        self._flush()
        return self._columns[self.kind._fields.index(name)]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, (Records, list)) and len(self) == len(other) and all(a == b for a, b in zip(self, other))
        )

    def __repr__(self) -> str:
        return f"Records({self.kind.__name__}, {len(self)} records)"


#: Records kept as tuples before they move into the columns: enough to make the move cheap per record, few
#: enough that their size (about 100 bytes each) never shows beside the columns'.
_CHUNK = 4096

_COLUMN_TYPES = {
    "Span": ("l", "l", "l", "l", "d", "d"),
    "Transfer": ("l", "l", "l", "l", "l", "q", "d", "d", "d"),
    "MemorySample": ("d", "q", "q", "q", "q", "q", "q"),
}
_TEXT_FIELDS = {"Span": (1,), "Transfer": (3,), "MemorySample": ()}


@dataclass
class Trace:
    """Spans, transfers and per-device memory timelines of one simulated step."""

    devices: int
    time_unit: str
    spans: Records[Span] = field(default_factory=lambda: Records(Span))
    transfers: Records[Transfer] = field(default_factory=lambda: Records(Transfer))
    memory: list[Records[MemorySample]] = field(default_factory=list)
    oom: tuple[int, MemorySample] | None = None  # the first device over capacity, and when
    # per device (peak activations, peak total), kept exactly at every change even where the
    # timeline keeps only the last state of an instant
    peaks: list[tuple[int, int]] | None = None
    # per device, the state at its peak total (the first time it got there), kept the same way
    peak_samples: list[MemorySample] | None = None
    # each link that carried a transfer, (src, dst) -> (its name, e.g. "NVLink 4"; whether it leaves the node)
    links: dict[tuple[int, int], tuple[str, bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:  # plain lists are welcome; they are stored as columns
        if not isinstance(self.spans, Records):
            self.spans = Records(Span, self.spans)
        if not isinstance(self.transfers, Records):
            self.transfers = Records(Transfer, self.transfers)
        self.memory = [m if isinstance(m, Records) else Records(MemorySample, m) for m in self.memory]

    def link_pairs(self) -> list[tuple[int, int]]:
        """Every (src, dst) that carried a transfer, in order."""
        width = self.devices + 1
        codes = np.sort(_ints(self.transfers.column("src")) * width + _ints(self.transfers.column("dst")))
        # each code once, without np.unique: NumPy 2's unique imports numpy.ma, 10-30 ms of every run's start-up
        distinct = codes[np.r_[True, codes[1:] != codes[:-1]]] if len(codes) else codes
        return [(code // width, code % width) for code in distinct.tolist()]

    @property
    def makespan(self) -> float:
        ends, arrivals = _floats(self.spans.column("end")), _floats(self.transfers.column("arrival"))
        return float(max(ends.max(initial=0.0), arrivals.max(initial=0.0)))

    def period(self) -> float:
        """The shortest time after which the same step can start again, steps running back to back.

        Shift the whole step by P: every dependency inside it still holds, so
        the shifted copy is valid as long as no device starts it before it has
        finished this one, and no link carries two transfers at once. P is the
        longest window any device or link is in use: a device from its first
        action to its last action or arriving all-reduce chunk, a link from
        its first transfer to the end of its last. Steps then follow each other
        without a barrier between them: no synchronising optimizer step (Qi et
        al. 2024 remove it by post-validation).

        >>> t = Trace(devices=2, time_unit="unit", spans=[Span(0, "F", 0, 0, 0.0, 2.0), Span(1, "F", 1, 0, 2.0, 4.0)])
        >>> t.makespan, t.period()
        (4.0, 2.0)
        """
        spans, moves = self.spans, self.transfers
        windows = []
        devices = _ints(spans.column("device"))
        starts, ends = _floats(spans.column("start")), _floats(spans.column("end"))
        chunks = [word for word in _CHUNKS if len(moves) and moves.has_word(word)]
        if chunks:  # a device sums a chunk in once it lands
            ops = _ints(moves.column("op"))
            chunk = np.isin(ops, [moves.code(word) for word in chunks])
            landed = _floats(moves.column("arrival"))[chunk]
            devices = np.concatenate([devices, _ints(moves.column("dst"))[chunk]])
            starts, ends = np.concatenate([starts, landed]), np.concatenate([ends, landed])
        windows.append(_window(devices, starts, ends))
        if len(moves):
            links = _ints(moves.column("src")) * (self.devices + 1) + _ints(moves.column("dst"))
            windows.append(_window(links, _floats(moves.column("start")), _floats(moves.column("end"))))
        return float(max(windows))

    def busy_time(self) -> list[float]:
        """Per device, the time spent computing (recompute included)."""
        spans = self.spans
        # bincount adds each device's weights in the order given, one after another: the sums a loop over the
        # spans in their order makes, to the last bit (a large step has a million spans)
        lengths = _floats(spans.column("end")) - _floats(spans.column("start"))
        busy = np.bincount(_ints(spans.column("device")), weights=lengths, minlength=self.devices)
        return [float(b) for b in busy]

    def peak_activation_bytes(self) -> list[int]:
        if self.peaks is not None:
            return [p[0] for p in self.peaks]
        return [max((m.activation_bytes for m in samples), default=0) for samples in self._memory()]

    def peak_memory_bytes(self) -> list[int]:
        if self.peaks is not None:
            return [p[1] for p in self.peaks]
        return [max((m.total_bytes for m in samples), default=0) for samples in self._memory()]

    def memory_by_role(self) -> list[dict[str, int]]:
        """Per device, the bytes it held at its peak total, by role (``MemorySample.roles``)."""
        if self.peak_samples is not None:
            return [s.roles() for s in self.peak_samples]
        empty = MemorySample(0.0, 0, 0, 0, 0, 0, 0)
        # max keeps the first of equal samples: the first time the device reached its peak
        return [max(samples, key=lambda m: m.total_bytes, default=empty).roles() for samples in self._memory()]

    def _memory(self) -> Sequence[Iterable[MemorySample]]:
        return self.memory or [[] for _ in range(self.devices)]


def _ints(column: array) -> np.ndarray:
    return np.frombuffer(column, dtype=f"i{column.itemsize}") if len(column) else np.zeros(0, np.int64)


def _floats(column: array) -> np.ndarray:
    return np.frombuffer(column, dtype=np.float64) if len(column) else np.zeros(0)


def _window(keys: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> float:
    """The longest span from first start to last end among the items of each key."""
    if not len(keys):
        return 0.0
    size = int(keys.max()) + 1
    first, last = np.full(size, np.inf), np.full(size, -np.inf)
    np.minimum.at(first, keys, starts)
    np.maximum.at(last, keys, ends)
    used = first <= last
    return float((last[used] - first[used]).max())


_OP_COLOURS = {"F": "thread_state_running", "B": "rail_response", "I": "rail_animation", "W": "rail_idle", "R": "bad"}


def _kind(trace: Trace, src: int, dst: int) -> str:
    """`` (NVLink 4, inside a node)`` for a link's track name where the step crosses nodes, else nothing."""
    if not any(inter for _, inter in trace.links.values()):  # one node: one kind of link, named in the args
        return ""
    name, inter = trace.links.get((src, dst), ("link", False))
    return f" ({name}, {'between nodes' if inter else 'inside a node'})"


def _link_args(trace: Trace, src: int, dst: int) -> dict[str, Any]:
    """The link's name and whether it leaves its node, on every send of a trace whose links are named or span
    nodes (the same rule as ``_kind``): never on some sends and not others."""
    name, inter = trace.links.get((src, dst), ("link", False))
    named = any(n != "link" or i for n, i in trace.links.values())
    return {"link": name, "inter_node": inter} if named else {}


def to_chrome(trace: Trace) -> dict[str, Any]:
    """The trace as a Chrome trace-event object (``json.dump`` it to a file).

    Seconds become microseconds; under the unit cost model one unit is shown
    as one millisecond so that the blocks read as whole numbers.
    """
    unit = 1e6 if trace.time_unit == "s" else 1e3

    def at(seconds: float) -> float:
        # to the picosecond: 2 ms reads 2000, not 2000.0000000000018 (sums of measured times carry round-off)
        return round(seconds * unit, 6)

    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "devices"}},
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "links"}},
    ]
    for d in range(trace.devices):
        events.append({"ph": "M", "name": "thread_name", "pid": 0, "tid": d, "args": {"name": f"device {d}"}})
    links = sorted({(t.src, t.dst) for t in trace.transfers})
    link_tid = {link: i for i, link in enumerate(links)}
    for (src, dst), tid in link_tid.items():
        name = f"link {src}->{dst}" + _kind(trace, src, dst)
        events.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": name}})
    for s in trace.spans:
        events.append(
            {
                "ph": "X",
                "pid": 0,
                "tid": s.device,
                "name": s.name,
                "cat": s.op,
                "ts": at(s.start),
                "dur": at(s.end - s.start),
                "cname": _OP_COLOURS[s.op],
                "args": {"stage": s.stage, "microbatch": s.microbatch},
            }
        )
    for t in trace.transfers:
        events.append(
            {
                "ph": "X",
                "pid": 1,
                "tid": link_tid[(t.src, t.dst)],
                "name": t.name,
                "cat": "transfer",
                "ts": at(t.start),
                "dur": at(t.end - t.start),
                "args": {"bytes": t.nbytes, "arrival": at(t.arrival), **_link_args(trace, t.src, t.dst)},
            }
        )
    for d, samples in enumerate(trace.memory):
        for m in samples:
            events.append(
                {
                    "ph": "C",
                    "pid": 0,
                    "tid": d,
                    "name": f"memory device {d}",
                    "ts": at(m.time),
                    "args": {
                        "params": m.params,
                        "grads": m.grads,
                        "optimizer": m.optimizer,
                        "activations": m.activations,
                        "deferred": m.deferred,
                        "buffers": m.buffers,
                    },
                }
            )
    return {"traceEvents": events, "displayTimeUnit": "ns"}
