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

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Span", "Transfer", "MemorySample", "Trace", "to_chrome"]


@dataclass(frozen=True, slots=True)
class Span:
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


@dataclass(frozen=True, slots=True)
class Transfer:
    """The link ``src -> dst`` was busy with ``nbytes`` for ``name`` from start to end; they landed at ``arrival``.

    ``arrival - end`` is the link's latency: the next send may use the link meanwhile.
    """

    src: int
    dst: int
    name: str
    nbytes: int
    start: float
    end: float
    arrival: float


@dataclass(frozen=True, slots=True)
class MemorySample:
    """Bytes a device held from ``time`` on, by role (see ``pipesched.memory``)."""

    time: float
    params: int
    grads: int
    activations: int
    deferred: int
    buffers: int

    @property
    def activation_bytes(self) -> int:
        """Everything kept for a backward: activations, and what deferred weight-gradients need."""
        return self.activations + self.deferred

    @property
    def total_bytes(self) -> int:
        return self.params + self.grads + self.activations + self.deferred + self.buffers


@dataclass
class Trace:
    """Spans, transfers and per-device memory timelines of one simulated step."""

    devices: int
    time_unit: str
    spans: list[Span] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    memory: list[list[MemorySample]] = field(default_factory=list)
    oom: tuple[int, MemorySample] | None = None  # the first device over capacity, and when

    @property
    def makespan(self) -> float:
        ends = [s.end for s in self.spans] + [t.arrival for t in self.transfers]
        return max(ends, default=0.0)

    def busy_time(self) -> list[float]:
        """Per device, the time spent computing (recompute included)."""
        busy = [0.0] * self.devices
        for s in self.spans:
            busy[s.device] += s.end - s.start
        return busy

    def peak_activation_bytes(self) -> list[int]:
        return [max((m.activation_bytes for m in samples), default=0) for samples in self._memory()]

    def peak_memory_bytes(self) -> list[int]:
        return [max((m.total_bytes for m in samples), default=0) for samples in self._memory()]

    def _memory(self) -> list[list[MemorySample]]:
        return self.memory or [[] for _ in range(self.devices)]


_OP_COLOURS = {"F": "thread_state_running", "B": "rail_response", "I": "rail_animation", "W": "rail_idle", "R": "bad"}


def to_chrome(trace: Trace) -> dict[str, Any]:
    """The trace as a Chrome trace-event object (``json.dump`` it to a file).

    Seconds become microseconds; under the unit cost model one unit is shown
    as one millisecond so that the blocks read as whole numbers.
    """
    scale = 1e6 if trace.time_unit == "s" else 1e3
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "devices"}},
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "links"}},
    ]
    for d in range(trace.devices):
        events.append({"ph": "M", "name": "thread_name", "pid": 0, "tid": d, "args": {"name": f"device {d}"}})
    links = sorted({(t.src, t.dst) for t in trace.transfers})
    link_tid = {link: i for i, link in enumerate(links)}
    for (src, dst), tid in link_tid.items():
        events.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": f"link {src}->{dst}"}})
    for s in trace.spans:
        events.append(
            {
                "ph": "X", "pid": 0, "tid": s.device, "name": s.name, "cat": s.op,
                "ts": s.start * scale, "dur": (s.end - s.start) * scale, "cname": _OP_COLOURS[s.op],
                "args": {"stage": s.stage, "microbatch": s.microbatch},
            }
        )
    for t in trace.transfers:
        events.append(
            {
                "ph": "X", "pid": 1, "tid": link_tid[(t.src, t.dst)], "name": t.name, "cat": "transfer",
                "ts": t.start * scale, "dur": (t.end - t.start) * scale,
                "args": {"bytes": t.nbytes, "arrival": t.arrival * scale},
            }
        )
    for d, samples in enumerate(trace.memory):
        for m in samples:
            events.append(
                {
                    "ph": "C", "pid": 0, "tid": d, "name": f"memory device {d}", "ts": m.time * scale,
                    "args": {"params": m.params, "grads": m.grads, "activations": m.activations,
                             "deferred": m.deferred, "buffers": m.buffers},
                }
            )
    return {"traceEvents": events, "displayTimeUnit": "ns"}

