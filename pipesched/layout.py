"""The layout step: D data-parallel replicas of one pipeline's schedule, on K·D devices.

A strategy plans one pipeline replica: K devices, M micro-batches
(``pipesched.strategy``). ``replicate`` lays D copies of that plan side by
side. Replica r's copy of pipeline device d is global device ``d·D + r``
(``device_of``) and runs exactly the actions of device d, on its own
micro-batches: the strategy's micro-batch m becomes global micro-batch
``r·M + m``, so the global batch is cut into D·M micro-batches
(``pipesched.microbatch.split``) and replica r computes rows of its own
share. Nothing else is new: a stage whose actions appear on D devices is a
replica (``Schedule.placement``), so the engine all-reduces its gradients over
the ring of its D devices after each one's last action
(``pipesched.collectives``), while the other devices are still draining.

The numbering is Megatron-LM's rank order (``initialize_model_parallel``):
tensor-parallel ranks innermost, then data-parallel, then pipeline. So with
``--devices-per-node`` the D replicas of one pipeline device fill a node
first, and a stage's gradient ring stays inside a node whenever D divides the
node's devices, while the pipeline's sends cross nodes; a ring crosses nodes
only when D is larger than a node.

Batch semantics follow Megatron-LM's: global batch = D × M × micro-batch size.
``--batch`` is the global batch and ``--microbatches`` is M per replica; a
batch that does not divide evenly gives micro-batches one row apart, the
larger ones first (replica 0's), as without replicas.

>>> from pipesched.schedule import Schedule
>>> one = Schedule.parse(["0F0 0F1 0B0 0B1", "1F0 1B0 1F1 1B1"])
>>> print(replicate(one, data_parallel=2, microbatches=2))
device 0: 0F0 0F1 0B0 0B1
device 1: 0F2 0F3 0B2 0B3
device 2: 1F0 1B0 1F1 1B1
device 3: 1F2 1B2 1F3 1B3
>>> [device_of(replica, 1, data_parallel=2) for replica in range(2)]  # pipeline device 1's replicas
[2, 3]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError
from .schedule import Action, Item, Overlap, Schedule

if TYPE_CHECKING:  # pragma: no cover - imported for the annotations only
    from .pipeline import RunConfig

__all__ = ["replicate", "device_of", "total_devices", "check_data_parallel", "check_batch"]


def device_of(replica: int, device: int, data_parallel: int) -> int:
    """The global device of ``replica``'s pipeline device ``device``: ``device·D + replica`` (Megatron-LM's order)."""
    return device * data_parallel + replica


def total_devices(config: "RunConfig") -> int:
    """K·D: every device of the run, the pipeline's K (``--devices``) times its D replicas (``--data-parallel``)."""
    return config.devices * config.data_parallel


def check_data_parallel(data_parallel: object) -> None:
    """Raise ``ConfigError`` unless ``data_parallel`` is a whole number of 1 or more."""
    if not isinstance(data_parallel, int) or isinstance(data_parallel, bool):
        raise ConfigError(f"--data-parallel {data_parallel!r} is not a whole number; give e.g. 2")
    if data_parallel < 1:
        raise ConfigError(f"--data-parallel {data_parallel} is not allowed; use 1 (one pipeline) or more replicas")


def check_batch(batch: int, microbatches: int, data_parallel: int) -> None:
    """Refuse a global batch too small to give each of the D·M micro-batches at least one row.

    >>> check_batch(8, 4, 2)
    >>> check_batch(6, 4, 2)
    Traceback (most recent call last):
    ...
    pipesched.errors.ConfigError: --batch 6 cannot be split over --data-parallel 2 x --microbatches 4 = 8 \
micro-batches of at least one sample; use --batch 8 or more, or fewer replicas or micro-batches
    """
    if data_parallel > 1 and batch < data_parallel * microbatches:
        raise ConfigError(
            f"--batch {batch} cannot be split over --data-parallel {data_parallel} x --microbatches {microbatches} "
            f"= {data_parallel * microbatches} micro-batches of at least one sample; use --batch "
            f"{data_parallel * microbatches} or more, or fewer replicas or micro-batches"
        )


def replicate(schedule: Schedule, data_parallel: int, microbatches: int) -> Schedule:
    """D replicas of a one-pipeline ``schedule`` of ``microbatches`` micro-batches, on K·D devices.

    Device ``device_of(r, d, D)`` runs device d's actions in the same order,
    micro-batch m renamed ``r·M + m``; REDUCE_GRAD, SEND and RECV actions and
    overlapped pairs are carried over the same way. ``data_parallel=1``
    returns ``schedule`` itself. The result records D as ``replicas``: the
    unit cost model charges a stage of one pipeline of K devices, not of K·D
    (``pipesched.cost``).
    """
    check_data_parallel(data_parallel)
    if data_parallel == 1:
        return schedule

    def renamed(item: Item, replica: int) -> Item:
        if type(item) is Overlap:
            return Overlap(renamed(item.forward, replica), renamed(item.backward, replica))  # type: ignore[arg-type]
        action: Action = item  # type: ignore[assignment]  # not an Overlap, so an Action
        if action.microbatch is None:  # REDUCE_GRAD names no micro-batch
            return action
        return action._replace(microbatch=replica * microbatches + action.microbatch)

    per_device: list[list[Item]] = [[] for _ in range(schedule.devices * data_parallel)]
    for d, actions in enumerate(schedule.actions):
        for r in range(data_parallel):
            per_device[device_of(r, d, data_parallel)] = [renamed(item, r) for item in actions]
    return Schedule(per_device, replicas=data_parallel)
