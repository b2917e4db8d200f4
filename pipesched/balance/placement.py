"""Where a strategy runs each stage, read off its schedule: what the balancer's objective charges to whom.

A device's load counts every stage the strategy places on it (interleaved:
stage s on device s mod K; a V: device d holds d and 2K-1-d), each weighted
by the share of micro-batches whose forward runs there (a replica of a
data-parallel stage runs 1/K of them). A boundary between stages s and s+1
sends each micro-batch's activation from the device of its forward of s to
the device of its forward of s+1, and the gradient back (a backward runs on
the device of its forward, which validation guarantees); when both are on one
device nothing crosses a link.

>>> from pipesched.schedule import Schedule
>>> v = Placement.of(Schedule.parse(["0F0 3F0 3B0 0B0", "1F0 2F0 2B0 1B0"]))  # a V on two devices
>>> v.stages_on(0), v.stages_on(1), v.traffic
([0, 3], [1, 2], (((0, 1, 1.0),), (), ((1, 0, 1.0),)))
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..schedule import Schedule, expand

__all__ = ["Placement"]


@dataclass(frozen=True)
class Placement:
    """Per stage, the share of its micro-batches on each device; per boundary, the links its activations cross.

    Attributes:
        devices: K.
        shares: ``shares[s][d]``, the share of stage s's micro-batches whose
            forward (and so backward) runs on device d; each row sums to 1.
        traffic: ``traffic[b]``, for the boundary between stages b and b+1,
            ``(src, dst, share)``: that share of micro-batches sends its
            activation from device src to dst (and its gradient from dst to src).
    """

    devices: int
    shares: tuple[tuple[float, ...], ...]
    traffic: tuple[tuple[tuple[int, int, float], ...], ...]

    @property
    def stages(self) -> int:
        return len(self.shares)

    @classmethod
    def one_per_device(cls, stages: int) -> "Placement":
        """Stage s alone on device s, as GPipe, 1F1B and ZB-H1/H2 place them.

        >>> Placement.one_per_device(2)
        Placement(devices=2, shares=((1.0, 0.0), (0.0, 1.0)), traffic=(((0, 1, 1.0),),))
        """
        shares = tuple(tuple(1.0 if d == s else 0.0 for d in range(stages)) for s in range(stages))
        return cls(stages, shares, tuple(((b, b + 1, 1.0),) for b in range(stages - 1)))

    @classmethod
    def of(cls, schedule: Schedule) -> "Placement":
        """The placement a (validated) schedule implies: where each stage's forwards run."""
        forward_on = {}
        for d, actions in enumerate(schedule.actions):
            for a in expand(actions):
                if a.op == "F":
                    forward_on[(a.stage, a.microbatch)] = d
        stages, microbatches = schedule.num_stages, schedule.microbatches
        shares = []
        for s in range(stages):
            on = Counter(forward_on[(s, m)] for m in range(microbatches))
            shares.append(tuple(on[d] / microbatches for d in range(schedule.devices)))
        traffic = []
        for b in range(stages - 1):
            pairs = Counter((forward_on[(b, m)], forward_on[(b + 1, m)]) for m in range(microbatches))
            traffic.append(tuple((src, dst, n / microbatches) for (src, dst), n in sorted(pairs.items()) if src != dst))
        return cls(schedule.devices, tuple(shares), tuple(traffic))

    def stages_on(self, device: int) -> list[int]:
        """The stages with micro-batches on ``device``, in order."""
        return [s for s, row in enumerate(self.shares) if row[device] > 0]

    @property
    def exclusive(self) -> bool:
        """Whether no device runs two stages: then each device's load and each link's is one stage's or boundary's."""
        return all(sum(1 for row in self.shares if row[d] > 0) <= 1 for d in range(self.devices))
