"""Links and point-to-point messages: first-in first-out links, and what SEND and RECV mean.

A link ``src -> dst`` is a first-in first-out server of capacity one: a
message occupies it for bytes / bandwidth from when it and the link are free,
and lands latency later, so messages queue on a link and overlap compute.
Queueing times are known when a message starts, so each one is one or two
SimPy timeouts instead of a resource request; free messages (unit cost) land
at once.

Point-to-point semantics (``p2p``) follow PyTorch's pipelining runtime
(``_PipelineScheduleRuntime._step_microbatches``, torch 2.13):

- ``async`` (the default, PyTorch's ``isend``/``irecv``): a SEND issues the
  send and the device goes on; a RECV posts the receive and the device goes
  on; only the compute action that consumes the data waits for it. A message
  moves once its send is issued and its receive posted (a rendezvous of the
  data, not of the devices); a receive without a RECV action counts as posted
  from the start of the step, the best case, since such a schedule states no
  receive order. PyTorch's own lowering (``_add_send_recv``) may post a
  receive later; simulate its lowered form to see that order's cost. NCCL
  may also serialise the messages between one pair of ranks, which is not
  modelled; ``blocking`` gives the worst case.
- ``blocking`` (rendezvous, MPI's synchronous send): a send, explicit or right
  after the action that computed it, holds its device until the receive is
  posted and the bytes have left; a RECV, or without one the consuming action,
  posts the receive and holds its device until the data is there. Crossed
  sends then deadlock as they do in a real job with blocking sends, and the
  error names the devices and the crossed pair.

>>> from pipesched import RunConfig, run
>>> crossed = run(RunConfig(strategy="1f1b", devices=2, microbatches=2, cost="unit", compute=False))
>>> crossed.metrics.makespan  # asynchronous sends: 1F1B as usual, (K-1+M)(F+B)
9.0
>>> check_p2p("rendezvous")
Traceback (most recent call last):
    ...
pipesched.errors.ConfigError: --p2p 'rendezvous' is unknown; use one of async, blocking
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import simpy

from .cost import CostModel
from .errors import ConfigError
from .memory import BUFFERS, DeviceMemory
from .precision import nbytes
from .trace import Trace

__all__ = ["P2P_MODES", "check_p2p", "Key", "Message", "Links"]

#: Point-to-point semantics: PyTorch's asynchronous isend/irecv, or blocking (rendezvous) sends and receives.
P2P_MODES = ("async", "blocking")

# ("x", stage, mb): input of a stage; ("g", stage, mb): gradient of its output;
# ("allreduce", stage, step, device): an all-reduce chunk arriving at a replica (or "reduce_scatter",
# "all_gather": the distributed optimizer's);
# ("tie", stage, step, device): a chunk of a tied pair's all-reduce (``stage`` the pair's first)
Key = tuple[Any, ...]


def check_p2p(p2p: str) -> None:
    """Raise ``ConfigError`` unless ``p2p`` is one of ``P2P_MODES``."""
    if p2p not in P2P_MODES:
        raise ConfigError(f"--p2p {p2p!r} is unknown; use one of {', '.join(P2P_MODES)}")


class Message(NamedTuple):
    """A message: ``payload`` from device ``src`` to ``dst``, arriving as ``key``; ``what`` sent it."""

    src: int
    dst: int
    key: Key
    payload: Any
    what: tuple[int, str, int]  # (stage, op, micro-batch) of the action whose output it is


class Links:
    """The engine's links and point-to-point semantics (a part of ``engine._Engine``, split out by concept)."""

    env: simpy.Environment
    cost: CostModel
    trace: Trace
    memory: list[DeviceMemory]
    itemsize: int  # bytes per element in the training precision: a message's bytes are counted in it
    blocking: bool
    arrived: dict[Any, Any]
    blocked: dict[Any, int]
    link_free: dict[tuple[int, int], float]
    # (bytes, src, link, boundary) -> (busy, latency); the link's end is dst, or the device a mirrored chunk goes via
    transfer_cache: dict[tuple[int, int, int, int | None], tuple[float, float]]
    explicit_recvs: set[Any]
    posted: set[Any]
    parked: dict[Any, tuple[Message, Callable[[], None] | None]]
    send_queue: list[list[Message]]
    in_send: list[Message | None]

    def _sample(self, device: int) -> None:
        raise NotImplementedError

    def _after(self, delay: float, then: Callable[[Any], None]) -> None:
        raise NotImplementedError

    def _advance(self, device: int) -> None:
        raise NotImplementedError

    def _deliver(self, device: int, key: Any, payload: Any) -> None:
        self.arrived[key] = payload
        memory = self.memory[device]
        memory.hold_one(payload, BUFFERS)  # an arrived buffer waits on its device
        memory.sample(self.env.now)
        waiter = self.blocked.pop(key, None)
        if waiter is not None:
            self._advance(waiter)

    def _posted(self, key: Any) -> bool:
        """Whether the receive of ``key`` is posted (async: from the start, unless a RECV action posts it)."""
        return key in self.posted or not (self.blocking or key in self.explicit_recvs)

    def _post(self, key: Any) -> None:
        """Post the receive of ``key``; a send parked for it moves now."""
        self.posted.add(key)
        parked = self.parked.pop(key, None)
        if parked is not None:
            send, on_left = parked
            self.memory[send.src].release([send.payload], "buffers")
            self._sample(send.src)  # a free message leaves at once: the release must show
            self._send(send, on_left)

    def _issue(self, send: Message, on_left: Callable[[], None] | None = None) -> None:
        """Issue a send: its message moves once the receive is posted (at once on the same device)."""
        if send.src == send.dst or self._posted(send.key):
            self._send(send, on_left)
            return
        self.parked[send.key] = (send, on_left)
        self.memory[send.src].hold([send.payload], "buffers")  # issued, still the sender's
        self._sample(send.src)

    def _send(self, send: Message, on_left: Callable[[], None] | None = None, via: int | None = None) -> None:
        """Move ``send`` over its link; ``on_left`` runs once its bytes have left the sender.

        ``via``: the device whose link ``src -> via`` carries it, when that is not ``dst`` (a mirrored
        collective's chunk, landing back on its sender: ``pipesched.symmetry``).
        """
        self._move(*send, on_left, via)

    def _move(
        self,
        src: int,
        dst: int,
        key: Key,
        payload: Any,
        what: tuple[int, str, int],
        on_left: Callable[[], None] | None = None,
        via: int | None = None,
    ) -> None:
        """``_send`` of a message given by its fields: the engine's form for an output sent as it is made."""
        stage, op, step = what
        link = dst if via is None else via
        if src == link:
            self._deliver(dst, key, payload)
            if on_left is not None:
                on_left()
            return
        size = nbytes(payload, self.itemsize)
        # the stage boundary it crosses: s for s's activation to s + 1 or s + 1's gradient back to s; None for a
        # collective's chunk. The cost model's answer is the same for every repeat of a size, link and boundary
        boundary = stage if op == "F" else stage - 1 if op == "B" or op == "I" else None
        asked = (size, src, link, boundary)
        times = self.transfer_cache.get(asked)
        if times is None:
            times = self.transfer_cache[asked] = self.cost.transfer_times(size, src, link, boundary)
        busy, latency = times
        now = self.env.now
        start = max(now, self.link_free.get((src, link), now))  # first in, first out on this link
        end = start + busy
        self.link_free[(src, link)] = end
        self.trace.transfers.add(src, link, stage, op, step, size, start, end, end + latency)
        if end + latency == now:  # a free transfer lands at once
            self._deliver(dst, key, payload)
            if on_left is not None:
                on_left()
            return
        self.memory[src].hold_one(payload, BUFFERS)  # queued or on the wire, still the sender's
        self._sample(src)

        def left(_: Any) -> None:
            self.memory[src].release_one(payload, BUFFERS)  # the bytes have left the sender
            self._sample(src)
            if latency == 0:
                self._deliver(dst, key, payload)
            else:
                self._after(latency, lambda _: self._deliver(dst, key, payload))
            if on_left is not None:
                on_left()

        self._after(end - now, left)

    def _blocking_send(self, device: int) -> None:
        """Issue the device's next blocking send and hold the device until its bytes have left."""
        send = self.send_queue[device].pop(0)
        self.in_send[device] = send
        self.memory[device].release([send.payload], "buffers")  # held while queued; _issue holds it again
        self._sample(device)

        def left() -> None:
            self.in_send[device] = None
            self._advance(device)

        self._issue(send, left)
