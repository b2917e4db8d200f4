"""The search as a strategy plug-in for any K, M and placement: what lets ``pipesched.testing`` check it.

``--strategy auto`` plans for one run's own costs, so its schedule exists
for that run's K and M only (``Fixed``). ``Searched`` asks the same search
(``configured.find``, heuristic only, so it is quick and the same on every
machine) for whatever K, M and chunks a caller gives, under unit cost
(F = I = W = 1 per stage, the sends free) and ``inflight`` micro-batches of
one stage per device (default K, 1F1B's memory; a V's half-stages count as
halves). So a synthesised schedule can be held to every check a built-in
is: ``pipesched.testing.check_strategy(Searched(), chunks=(1, 2), ...)``
validates it, simulates it under every remat mode with uneven micro-batches
and measured times, and compares its gradients with one full-batch pass.

>>> print(Searched().plan(devices=2, microbatches=3))  # ZB-H1's order: 3M + K - 1, optimal
device 0: 0F0 0F1 0I0 0W0 0F2 0I1 0W1 0I2 0W2
device 1: 1F0 1I0 1F1 1I1 1W0 1F2 1I2 1W1 1W2
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schedule import Schedule

__all__ = ["Searched"]


@dataclass(frozen=True)
class Searched:
    """A strategy whose plan is the search's schedule under unit cost and ``inflight`` per device."""

    inflight: int | None = None
    name: str = "searched"

    def __str__(self) -> str:
        return self.name

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        """The search's schedule for K = ``devices``, M = ``microbatches`` and ``chunks`` stages per device
        (1, or 2 in a V); ``ConfigError`` for other chunks or an ``inflight`` below 1."""
        from ..pipeline import RunConfig  # the pipeline imports the search: import it when asked
        from .configured import find

        config = RunConfig(
            devices=devices,
            microbatches=microbatches,
            chunks=chunks,
            batch=microbatches,
            layers=f"4x{devices * chunks + 1}",
            cost="unit",
            compute=False,
            max_inflight=self.inflight,
        )
        return find(config, exact=False).found.schedule
