"""Cost models: how long an action or a transfer takes in simulated time.

- ``flops`` (default): a layer's forward takes its FLOPs over the device's
  FLOP/s; a full backward twice that (I and W once each); a transfer keeps
  its link busy for bytes / bandwidth and lands latency later, so sends on one
  link queue for their bytes, not for each other's latency. Deterministic.
  Time is in seconds.
- ``unit``: the textbook diagrams. The whole model's forward costs K units
  (K devices), split evenly over the schedule's S stages, so a stage's F costs
  K/S and B twice that (I=W=F), whatever the micro-batch size; transfers are
  free. One stage per device: F=1, B=2. v chunks per device: 1/v and 2/v. A
  data-parallel replica of the whole model: K and 2K, so every strategy is
  charged the same total work. K is one pipeline's devices: D replicas of it
  (``--data-parallel``, ``pipesched.layout``) cost the same per stage. Time is
  in abstract units.
- ``measured``: measured times from a times file (``--times``,
  ``pipesched.times``): an op of stage s takes exactly the file's time of
  that op and stage (B = I + W), scaled by rows / the file's ``rows`` when
  it names the micro-batch size it measured; a boundary transfer keeps its
  link busy for the file's ``send`` time and lands at once (latency 0: the
  measured time is the whole transfer) when the file gives it, otherwise its
  bytes (the file's ``activation_bytes``, else the engine's) go over the
  links of the ``flops`` model; collectives always use those links. Time is
  in seconds.

All three are found by name in ``COST_MODELS``, the one registry the
commands, studies and sweeps read (``make_cost_model``).

Re-materialization recomputes a forward, so under every model it costs one
more F inside the backward that needs it.

An overlapped pair (``schedule.Overlap``, DualPipe's F&B) lasts as the cost
model's ``overlap`` rule says:

- ``sum`` (default): F + B. Both run on one device's arithmetic units, so
  overlapping them saves no computing time. What DualPipe's overlap wins is
  communication hidden behind the other half's computation (its MoE
  all-to-all); pipesched's links already run beside computation, so this is
  the honest charge for the computation itself.
- ``max``: max(F, B), the ideal in which the two halves use disjoint
  resources, e.g. one waits on communication while the other computes: an
  upper bound on what overlap can win.

A backward that must first recompute its forward (re-materialization) counts
the recompute on its side of the pair: max(F, R + B) or F + R + B.

>>> unit = UnitCost()
>>> unit.compute_time("B", [], rows=4, stage_units=0.5), unit.transfer_times(10**9)
(1.0, (0.0, 0.0))
>>> flops = FlopsCost(device_flops=1e12, link_bandwidth=1e9, link_latency=1e-6)
>>> flops.transfer_times(1000)  # the link is busy 1 µs, the bytes land 1 µs later
(1e-06, 1e-06)

With a topology (``pipesched.topology``, from ``--hardware`` and the node
flags), ``flops`` is the same model with other numbers: a send inside a node
takes the intra-node link, across nodes the inter-node link.
``SpeedCost`` wraps any model for devices of unequal speed (``--device-speed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from .errors import ConfigError
from .model import Layer
from .partition import Partition
from .times import StageTimes, Times

if TYPE_CHECKING:
    from .topology import Topology

__all__ = [
    "CostModel",
    "FlopsCost",
    "UnitCost",
    "MeasuredCost",
    "CostInputs",
    "WrappedCost",
    "SpeedCost",
    "parse_device_speed",
    "link_of",
    "COST_MODELS",
    "make_cost_model",
    "check_cost_name",
    "NEEDS_TIMES",
    "OP_WEIGHT",
    "OVERLAP_RULES",
    "overlapped_time",
    "check_overlap",
]

#: Work of each op relative to one forward: B = I + W, R is a recompute forward.
OP_WEIGHT = {"F": 1.0, "R": 1.0, "B": 2.0, "I": 1.0, "W": 1.0}


#: How long an overlapped forward-backward pair lasts (see the module's text).
OVERLAP_RULES = ("sum", "max")


def check_overlap(rule: str) -> None:
    """Raise ``ConfigError`` unless ``rule`` is one of ``OVERLAP_RULES``."""
    if rule not in OVERLAP_RULES:
        raise ConfigError(f"--overlap {rule!r} is unknown; use one of {', '.join(OVERLAP_RULES)}")


def overlapped_time(rule: str, forward: float, backward: float) -> float:
    """The length of a pair whose parts would take ``forward`` and ``backward`` alone.

    >>> overlapped_time("sum", 1.0, 2.0), overlapped_time("max", 1.0, 2.0)
    (3.0, 2.0)
    """
    check_overlap(rule)
    return forward + backward if rule == "sum" else max(forward, backward)


class CostModel(Protocol):
    """What the engine asks of a cost model (``overlap``, one of ``OVERLAP_RULES``, is optional: ``sum``)."""

    # read-only, so that frozen dataclasses (FlopsCost, UnitCost) satisfy the protocol
    @property
    def name(self) -> str: ...

    @property
    def time_unit(self) -> str: ...

    def compute_time(
        self, op: str, layers: Sequence[Layer], rows: int, stage_units: float, stage: int = 0, device: int = 0
    ) -> float:
        """Duration of ``op`` (F, B, I, W or R) of ``stage``, made of ``layers``, on ``rows`` samples on ``device``.

        ``stage_units`` is K / S, the stage's forward under the unit model;
        ``stage`` counts the schedule's stages from 0 (chunks included) and
        ``device`` the pipeline's devices, for models whose times differ by
        stage (measured times) or device (a slower device).
        """
        ...

    def transfer_times(
        self, nbytes: int, src: int = 0, dst: int = 1, boundary: int | None = None
    ) -> tuple[float, float]:
        """Moving ``nbytes`` from device ``src`` to ``dst``: (time the link is busy, latency until they land).

        ``boundary`` is s for an activation sent from stage s to s + 1 or a
        gradient sent back from s + 1 to s; None for a collective's chunk.
        """
        ...


@dataclass(frozen=True)
class FlopsCost:
    """FLOP-count cost model. Defaults: a current accelerator and its interconnect.

    100 TFLOP/s sustained per device; links of 100 GB/s with 5 µs latency,
    roughly an NVLink-class point-to-point send. ``device_flops`` is the
    achieved rate (a preset's peak times its efficiency, pipesched.hardware).
    With a ``topology`` its intra-node link is ``link_bandwidth`` and
    ``link_latency``, and a send across nodes takes its inter-node link.
    """

    device_flops: float = 100e12
    link_bandwidth: float = 100e9
    link_latency: float = 5e-6
    overlap: str = "sum"
    name: str = "flops"
    time_unit: str = "s"
    topology: Topology | None = None

    def __post_init__(self) -> None:
        check_overlap(self.overlap)
        for flag, value in (("--device-flops", self.device_flops), ("--link-bandwidth", self.link_bandwidth)):
            if not (math.isfinite(value) and value >= 1):
                raise ConfigError(f"{flag} {value:g} is not a finite rate of at least 1 per second; give e.g. 1e12")
        if not (math.isfinite(self.link_latency) and 0 <= self.link_latency <= 1):
            raise ConfigError(
                f"--link-latency {self.link_latency:g} is not between 0 and 1 second; give seconds, e.g. 5e-6"
            )

    def compute_time(
        self, op: str, layers: Sequence[Layer], rows: int, stage_units: float, stage: int = 0, device: int = 0
    ) -> float:
        return OP_WEIGHT[op] * sum(layer.forward_flops(rows) for layer in layers) / self.device_flops

    def transfer_times(
        self, nbytes: int, src: int = 0, dst: int = 1, boundary: int | None = None
    ) -> tuple[float, float]:
        if self.topology is not None and self.topology.crosses(src, dst):
            inter = self.topology.inter
            return nbytes / inter.bandwidth, inter.latency
        return nbytes / self.link_bandwidth, self.link_latency

    def link_name(self, src: int, dst: int) -> str:
        """The name of the link between devices ``src`` and ``dst`` (``NVLink 4``), for traces and charts."""
        return "link" if self.topology is None else self.topology.link(src, dst).name

    def crosses_nodes(self, src: int, dst: int) -> bool:
        """Whether a send from ``src`` to ``dst`` leaves its node."""
        return self.topology is not None and self.topology.crosses(src, dst)


@dataclass(frozen=True)
class UnitCost:
    """Textbook unit costs: a stage's F costs K/S units, B twice that, I=W=F; communication is free."""

    overlap: str = "sum"
    name: str = "unit"
    time_unit: str = "unit"

    def __post_init__(self) -> None:
        check_overlap(self.overlap)

    def compute_time(
        self, op: str, layers: Sequence[Layer], rows: int, stage_units: float, stage: int = 0, device: int = 0
    ) -> float:
        return OP_WEIGHT[op] * stage_units

    def transfer_times(
        self, nbytes: int, src: int = 0, dst: int = 1, boundary: int | None = None
    ) -> tuple[float, float]:
        return 0.0, 0.0


@dataclass(frozen=True)
class MeasuredCost:
    """Measured times per stage (``pipesched.times``); what the file does not give goes over ``links``.

    >>> from pipesched.times import StageTimes
    >>> cost = MeasuredCost((StageTimes(F=1.0, I=2.0, W=0.5, R=1.0, send=0.25), StageTimes(F=3.0, I=1.0, W=1.0, R=3.0)),
    ...                     links=FlopsCost(link_bandwidth=1e9, link_latency=1e-6))
    >>> cost.compute_time("B", [], rows=4, stage_units=1.0, stage=0), cost.compute_time("F", [], 4, 1.0, stage=1)
    (2.5, 3.0)
    >>> cost.transfer_times(10**6, boundary=0), cost.transfer_times(10**6, boundary=None)  # measured; the links
    ((0.25, 0.0), (0.001, 1e-06))
    """

    stages: tuple[StageTimes, ...]
    links: FlopsCost = FlopsCost()
    rows: int | None = None  # the micro-batch size the times were measured at; None: every size takes them
    overlap: str = "sum"
    name: str = "measured"
    time_unit: str = "s"

    def __post_init__(self) -> None:
        check_overlap(self.overlap)

    @classmethod
    def from_times(
        cls, times: Times, partition: Partition, links: FlopsCost | None = None, overlap: str = "sum"
    ) -> MeasuredCost:
        """The cost model of ``times`` for a schedule of ``len(partition)`` stages (``ConfigError`` naming a gap)."""
        stages = tuple(times.stage_times(len(partition), partition))
        return cls(stages, links if links is not None else FlopsCost(), times.rows, overlap)

    def compute_time(
        self, op: str, layers: Sequence[Layer], rows: int, stage_units: float, stage: int = 0, device: int = 0
    ) -> float:
        # times are per micro-batch as measured; with the measured size known, they scale linearly with rows
        scale = 1.0 if self.rows is None else rows / self.rows
        return self.stages[stage].time(op) * scale

    def transfer_times(
        self, nbytes: int, src: int = 0, dst: int = 1, boundary: int | None = None
    ) -> tuple[float, float]:
        if boundary is None:
            return self.links.transfer_times(nbytes, src, dst, boundary)
        measured = self.stages[boundary]
        if measured.send is not None:
            return measured.send, 0.0
        if measured.activation_bytes is not None:
            nbytes = measured.activation_bytes
        return self.links.transfer_times(nbytes, src, dst, boundary)

    def link_name(self, src: int, dst: int) -> str:
        """Its links' name for ``src -> dst`` (a measured send still crosses that link)."""
        return self.links.link_name(src, dst)

    def crosses_nodes(self, src: int, dst: int) -> bool:
        return self.links.crosses_nodes(src, dst)


@dataclass(frozen=True)
class CostInputs:
    """Everything the cost flags give; each model's builder in ``COST_MODELS`` takes what it needs.

    ``times`` and ``partition`` (per stage, its layers) are the measured
    model's: its times are resolved per stage of the schedule.
    """

    device_flops: float | None = None
    link_bandwidth: float | None = None
    link_latency: float | None = None
    overlap: str = "sum"
    times: Times | None = None
    partition: Partition | None = None
    topology: Topology | None = None

    def flops(self) -> FlopsCost:
        """The flops model these inputs give; ``None`` keeps a default."""
        given: dict[str, Any] = {
            "device_flops": self.device_flops,
            "link_bandwidth": self.link_bandwidth,
            "link_latency": self.link_latency,
            "overlap": self.overlap,
            "topology": self.topology,
        }
        return FlopsCost(**{k: v for k, v in given.items() if v is not None})


#: What ``--cost measured`` without ``--times`` says, wherever it is found first.
NEEDS_TIMES = "--cost measured needs the measured times; give --times FILE (see 'Measured times')"


def _measured(inputs: CostInputs) -> CostModel:
    if inputs.times is None:
        raise ConfigError(NEEDS_TIMES)
    if inputs.partition is None:
        raise ConfigError("--cost measured needs the schedule's stages to read its times per stage")
    return MeasuredCost.from_times(inputs.times, inputs.partition, inputs.flops(), inputs.overlap)


#: The one registry of cost models: name -> builder from the flags' inputs (commands, studies, sweeps read it).
COST_MODELS: dict[str, Callable[[CostInputs], CostModel]] = {
    "flops": CostInputs.flops,
    "unit": lambda inputs: UnitCost(overlap=inputs.overlap),
    "measured": _measured,
}


def check_cost_name(name: str) -> None:
    """Raise ``ConfigError`` unless ``name`` is a registered cost model."""
    if name not in COST_MODELS:
        raise ConfigError(f"--cost {name!r} is unknown; use one of {', '.join(COST_MODELS)}")


def make_cost_model(
    name: str,
    device_flops: float | None = None,
    link_bandwidth: float | None = None,
    link_latency: float | None = None,
    overlap: str = "sum",
    times: Times | None = None,
    partition: Partition | None = None,
    topology: Topology | None = None,
) -> CostModel:
    """Build a cost model by name from the registry; ``None`` keeps a default; ``topology`` places devices on nodes.

    >>> make_cost_model("unit").name, make_cost_model("flops", device_flops=1e12).device_flops
    ('unit', 1000000000000.0)
    """
    check_cost_name(name)
    return COST_MODELS[name](
        CostInputs(device_flops, link_bandwidth, link_latency, overlap, times, partition, topology)
    )


def link_of(cost: CostModel, src: int, dst: int) -> tuple[str, bool]:
    """The link ``src -> dst`` under ``cost``: its name (``NVLink 4``, or ``link`` where the model names
    none) and whether it leaves the node (a cost model without nodes: never)."""
    namer, crosses = getattr(cost, "link_name", None), getattr(cost, "crosses_nodes", None)
    return ("link" if namer is None else str(namer(src, dst))), bool(crosses is not None and crosses(src, dst))


@dataclass(frozen=True)
class WrappedCost:
    """A cost model over ``base``: every answer is ``base``'s unless a subclass changes it.

    ``SpeedCost`` and the decoder's ``TensorParallelCost`` change compute
    times only; names, units, the overlap rule, transfers and link names stay
    the wrapped model's, however many wrappers are stacked.

    >>> wrapped = WrappedCost(UnitCost())
    >>> wrapped.name, wrapped.compute_time("B", [], 4, 1.0), wrapped.transfer_times(10**9)
    ('unit', 2.0, (0.0, 0.0))
    """

    base: CostModel

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def time_unit(self) -> str:
        return self.base.time_unit

    @property
    def overlap(self) -> str:
        return str(getattr(self.base, "overlap", "sum"))

    def compute_time(
        self, op: str, layers: Sequence[Any], rows: int, stage_units: float, stage: int = 0, device: int = 0
    ) -> float:
        return self.base.compute_time(op, layers, rows, stage_units, stage, device)

    def transfer_times(
        self, nbytes: int, src: int = 0, dst: int = 1, boundary: int | None = None
    ) -> tuple[float, float]:
        return self.base.transfer_times(nbytes, src, dst, boundary)

    def link_name(self, src: int, dst: int) -> str:
        return link_of(self.base, src, dst)[0]

    def crosses_nodes(self, src: int, dst: int) -> bool:
        return link_of(self.base, src, dst)[1]


@dataclass(frozen=True)
class SpeedCost(WrappedCost):
    """Devices of unequal speed: ``base``'s compute times divided by each device's speed factor.

    A factor of 0.5 is a device at half speed (a straggler); transfers are
    ``base``'s. Wraps any cost model (unit, flops, measured).

    >>> slow = SpeedCost(UnitCost(), (1.0, 0.5))
    >>> slow.compute_time("F", [], 4, 1.0, device=0), slow.compute_time("F", [], 4, 1.0, device=1)
    (1.0, 2.0)
    """

    speeds: tuple[float, ...] = ()

    def compute_time(
        self, op: str, layers: Sequence[Any], rows: int, stage_units: float, stage: int = 0, device: int = 0
    ) -> float:
        return self.base.compute_time(op, layers, rows, stage_units, stage, device) / self.speeds[device]


def parse_device_speed(text: str, devices: int) -> tuple[float, ...]:
    """``--device-speed``: ``2=0.5`` (device 2 at half speed; several as ``1=0.8,2=0.5``) or K factors.

    Every other device keeps speed 1; a factor is a positive finite number.

    >>> parse_device_speed("2=0.5", 4), parse_device_speed("1,1,0.5", 3)
    ((1.0, 1.0, 0.5, 1.0), (1.0, 1.0, 0.5))
    """
    fix = "give DEVICE=FACTOR pairs such as 2=0.5, or one factor per device such as 1,1,0.5,1"
    parts = [part.strip() for part in text.split(",")]
    speeds = [1.0] * devices
    pairs: list[tuple[int, float]] = []
    try:
        if all("=" in part for part in parts):
            pairs = [(int(device), float(factor)) for device, factor in (part.split("=", 1) for part in parts)]
        elif not any("=" in part for part in parts) and len(parts) == devices:
            speeds = [float(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--device-speed {text!r} is not a list of speed factors; {fix}") from None
    if not pairs and (any("=" in part for part in parts) or len(parts) != devices):
        raise ConfigError(f"--device-speed {text!r} gives {len(parts)} factors for {devices} devices; {fix}")
    for index, factor in pairs:
        if not 0 <= index < devices:
            raise ConfigError(
                f"--device-speed {text!r} names device {index}, but devices run from 0 to {devices - 1}; "
                "give a device of the run"
            )
        speeds[index] = factor
    for speed in speeds:
        if not (math.isfinite(speed) and speed > 0):
            raise ConfigError(f"--device-speed {text!r} has factor {speed:g}, which is not positive and finite; {fix}")
    return tuple(speeds)
