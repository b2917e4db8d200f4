"""Cost models: how long an action or a transfer takes in simulated time.

- ``flops`` (default): a layer's forward takes its FLOPs over the device's
  FLOP/s; a full backward twice that (I and W once each); a transfer takes
  latency + bytes / bandwidth. Deterministic. Time is in seconds.
- ``unit``: the textbook diagrams. A device's whole share of the model costs
  F=1 and B=2 (I=W=1) per micro-batch, whatever its size; transfers are free.
  With v stages on a device each costs 1/v of that. Time is in abstract units.

Re-materialization recomputes a forward, so under every model it costs one
more F inside the backward that needs it.

>>> unit = UnitCost()
>>> unit.compute_time("B", [], rows=4, stages_on_device=2), unit.link_time(10**9)
(1.0, 0.0)
>>> flops = FlopsCost(device_flops=1e12, link_bandwidth=1e9, link_latency=1e-6)
>>> flops.link_time(1000)
2e-06
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from .errors import ConfigError
from .model import Layer

__all__ = ["CostModel", "FlopsCost", "UnitCost", "COST_MODELS", "make_cost_model", "OP_WEIGHT"]

#: Work of each op relative to one forward: B = I + W, R is a recompute forward.
OP_WEIGHT = {"F": 1.0, "R": 1.0, "B": 2.0, "I": 1.0, "W": 1.0}


class CostModel(Protocol):
    """What the engine asks of a cost model."""

    name: str
    time_unit: str

    def compute_time(self, op: str, layers: Sequence[Layer], rows: int, stages_on_device: int) -> float:
        """Duration of ``op`` (F, B, I, W or R) of a stage made of ``layers`` on ``rows`` samples."""
        ...

    def link_time(self, nbytes: int) -> float:
        """Duration of moving ``nbytes`` over one link."""
        ...


@dataclass(frozen=True)
class FlopsCost:
    """FLOP-count cost model. Defaults: a current accelerator and its interconnect.

    100 TFLOP/s sustained per device; links of 100 GB/s with 5 µs latency,
    roughly an NVLink-class point-to-point send.
    """

    device_flops: float = 100e12
    link_bandwidth: float = 100e9
    link_latency: float = 5e-6
    name: str = "flops"
    time_unit: str = "s"

    def __post_init__(self) -> None:
        for flag, value in (("--device-flops", self.device_flops), ("--link-bandwidth", self.link_bandwidth)):
            if not value > 0:
                raise ConfigError(f"{flag} {value} is not positive; give a rate above 0, e.g. 1e12")
        if not self.link_latency >= 0:
            raise ConfigError(f"--link-latency {self.link_latency} is negative; give 0 or more seconds")

    def compute_time(self, op: str, layers: Sequence[Layer], rows: int, stages_on_device: int) -> float:
        return OP_WEIGHT[op] * sum(l.forward_flops(rows) for l in layers) / self.device_flops

    def link_time(self, nbytes: int) -> float:
        return self.link_latency + nbytes / self.link_bandwidth


@dataclass(frozen=True)
class UnitCost:
    """Textbook unit costs: F=1, B=2, I=W=1 per device share; communication is free."""

    name: str = "unit"
    time_unit: str = "unit"

    def compute_time(self, op: str, layers: Sequence[Layer], rows: int, stages_on_device: int) -> float:
        return OP_WEIGHT[op] / stages_on_device

    def link_time(self, nbytes: int) -> float:
        return 0.0


COST_MODELS = ("flops", "unit")


def make_cost_model(
    name: str,
    device_flops: float | None = None,
    link_bandwidth: float | None = None,
    link_latency: float | None = None,
) -> CostModel:
    """Build a cost model by name; ``None`` keeps a default."""
    if name == "unit":
        return UnitCost()
    if name == "flops":
        given = {"device_flops": device_flops, "link_bandwidth": link_bandwidth, "link_latency": link_latency}
        return FlopsCost(**{k: v for k, v in given.items() if v is not None})
    raise ConfigError(f"--cost {name!r} is unknown; use one of {', '.join(COST_MODELS)}")
