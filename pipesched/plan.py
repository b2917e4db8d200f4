"""``pipesched plan``: every way to lay a decoder's training out on N GPUs, simulated and ranked.

A layout is a factorization N = D·T·K (data-parallel replicas, tensor-parallel
devices per stage, pipeline devices per replica) with options: a built-in
pipeline strategy (every one of ``COMPARE_DEFAULT`` but ``dp`` and ``auto``), its chunks
where it takes them (``CHUNK_OPTIONS``), full recompute or none, and a ring
all-reduce or a sharded optimizer (the latter only with D > 1, where it
differs). The global batch B and the micro-batch size b fix the micro-batches
of a replica, M = B / (D·b) (Megatron-LM's global batch = D × M × b), so a D
with D·b not dividing B is left out.

Each candidate is one shape-only ``pipesched.pipeline.run`` (``compute=False,
reference=False, allow_oom=True``) on the run's own engine, through
``pipesched.sweep``'s local pool or Dask cluster and its resumable results
file. Before simulating, a candidate whose static bytes (parameters and their
optimizer state, which a device holds from the first instant to the last,
``pipesched.memory.DeviceMemory``) already exceed the device memory is marked
out of memory without simulation: the engine would find the same at time 0.

Tensor parallelism: T runs over the divisors of the heads and the hidden size
up to a node's devices (``tensor_sizes``): Megatron-LM keeps a tensor-parallel
group inside a node, since its all-reduces run in every layer. Sequence
parallelism (Korthikanti et al. 2022) applies to every T > 1 candidate when
the cluster asks for it (``--sequence-parallel``); it is not searched, as it
moves the same bytes in other collectives and only saves memory.

Evaluation, exactly and cheaply: a layout with replicas is simulated for one
replica alone where every replica provably runs alike (``pipesched.symmetry``,
1/D of the work), and once for both gradient synchronisations, which move the
same chunks in the same steps and differ by a constant optimizer share
(``evaluate``).

Metrics of a step (``evaluate``):

- tokens per second = B · seq_len / makespan;
- MFU = model FLOPs per step / (makespan × N × the preset's dense peak in the
  training dtype), the model FLOPs being ``decoder.accounting.model_flops``'
  exact matrix-product count of forward, input- and weight-gradient passes
  (no recompute counted: recompute is overhead, not model work; Narayanan et
  al. 2021, section 5.1, call the same ratio model FLOPs utilisation);
- communication share = the part of the step in which some link carries a
  transfer while no device computes, over the makespan: the communication the
  step does not hide behind compute;
- bubble = the idle share of the devices' time (``pipesched.metrics``);
- headroom = device memory − the fullest device's peak.

>>> tensor_sizes(heads=32, hidden=4096, per_node=8)
[1, 2, 4, 8]
>>> tensor_sizes(heads=12, hidden=768, per_node=8)  # GPT-2 small: 12 heads
[1, 2, 3, 4, 6]
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import numpy as np

from .collectives import optimizer_share
from .decoder import assemble as decoder
from .decoder.accounting import model_flops
from .errors import ConfigError, PipeschedError
from .hardware import load_hardware
from .pipeline import BUILT_INS, RunConfig, execute, prepare, training_sizes
from .schedule import expand
from .strategy import load_strategy, make_plan, planned_stages
from .sweep import Results, Sweep, pareto, point_key, sweep
from .trace import Trace
from .units import format_bytes

__all__ = [
    "PLAN_STRATEGIES",
    "CHUNK_OPTIONS",
    "REMAT_OPTIONS",
    "GRAD_SYNC_OPTIONS",
    "Cluster",
    "tensor_sizes",
    "candidates",
    "static_bytes",
    "exposed_communication",
    "evaluate",
    "Plan",
    "plan",
]

#: The pipeline strategies a plan tries: the built-in ones, without pure data parallelism (D covers it) and
#: without auto, a search of its own for one pipeline that refuses D > 1 (``pipesched search``).
PLAN_STRATEGIES = tuple(name for name in BUILT_INS if name != "dp")
#: Significant digits a step's makespan is kept to for ranking (``evaluate``).
SIGNIFICANT = 12
#: Chunks per device tried for a strategy that takes chunks, where its stage count is K times them (ZB-V and
#: DualPipeV place exactly 2 per device, so they try 2 alone).
CHUNK_OPTIONS = (2, 4)
REMAT_OPTIONS = ("never", "always")
GRAD_SYNC_OPTIONS = ("allreduce", "sharded")


@dataclass(frozen=True)
class Cluster:
    """What a plan is asked: the GPUs, the model, the hardware and the batch, and any sizes fixed by the user."""

    gpus: int
    model: str
    hardware: str
    global_batch: int
    micro_batch_size: int
    seq_len: int | None = None
    device_memory: int | None = None  # None: the preset's
    data_parallel: int | None = None  # a size the user fixes; None: every divisor
    tensor_parallel: int | None = None
    devices: int | None = None  # K
    sequence_parallel: bool = False  # with every T > 1 (Korthikanti et al. 2022)


def tensor_sizes(heads: int, hidden: int, per_node: int) -> list[int]:
    """The tensor-parallel sizes T to try: divisors of the heads and the hidden size, at most a node's devices.

    Megatron-LM splits attention by heads and the MLP by columns, and keeps a
    tensor-parallel group inside a node (its all-reduces run in every layer).
    """
    return [t for t in range(1, per_node + 1) if heads % t == 0 and hidden % t == 0]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _whole(flag: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{flag} {value!r} is not allowed; give a whole number of 1 or more")
    return value


def _check(cluster: Cluster) -> tuple[Any, int, Any]:
    """The cluster's cheap checks, before any candidate is built: (decoder config, seq_len, hardware)."""
    n = _whole("--gpus", cluster.gpus)
    batch = _whole("--global-batch", cluster.global_batch)
    size = _whole("--micro-batch-size", cluster.micro_batch_size)
    fixed = {
        "--data-parallel": cluster.data_parallel,
        "--tensor-parallel": cluster.tensor_parallel,
        "--devices": cluster.devices,
    }
    for flag, value in fixed.items():
        if value is not None:
            _whole(flag, value)
    given = {flag: v for flag, v in fixed.items() if v is not None}
    product = math.prod(given.values())
    sizes = " x ".join(f"{flag} {v}" for flag, v in given.items())
    if len(given) == 3 and product != n:
        raise ConfigError(
            f"--gpus {n} is not {sizes} = {product}; give --gpus {product}, or sizes whose product is {n}"
        )
    if n % product:
        raise ConfigError(
            f"--gpus {n} is not a multiple of {sizes} = {product}; give --gpus a multiple of {product}, "
            "or sizes whose product divides it"
        )
    if batch % size:
        raise ConfigError(
            f"--global-batch {batch} is not a multiple of --micro-batch-size {size}; give a global batch of "
            f"{batch // size * size or size} or {(batch // size + 1) * size}"
        )
    if cluster.data_parallel is not None and batch % (cluster.data_parallel * size):
        step = cluster.data_parallel * size
        raise ConfigError(
            f"--global-batch {batch} is not divisible by --data-parallel {cluster.data_parallel} x "
            f"--micro-batch-size {size} = {step}; give a global batch that is a multiple of {step}, e.g. "
            f"{max(step, batch // step * step)}"
        )
    config = decoder.resolve(cluster.model, cluster.seq_len)
    seq_len = cluster.seq_len or decoder.default_seq_len(config)
    hardware = load_hardware(cluster.hardware)
    if cluster.device_memory is not None and cluster.device_memory < 1:
        raise ConfigError(f"--device-memory {cluster.device_memory} is not allowed; give e.g. 80GB")
    if cluster.tensor_parallel is not None and cluster.tensor_parallel > hardware.devices_per_node:
        raise ConfigError(
            f"--tensor-parallel {cluster.tensor_parallel} is more than the {hardware.devices_per_node} devices of a "
            f"node of {cluster.hardware}; a tensor-parallel group stays inside a node (its all-reduces run in every "
            f"layer): give at most {hardware.devices_per_node}"
        )
    if cluster.sequence_parallel and cluster.tensor_parallel == 1:
        raise ConfigError(
            "--sequence-parallel splits what a tensor-parallel group keeps whole, but --tensor-parallel 1 has no "
            "group: drop --sequence-parallel, or let T run over its divisors"
        )
    if cluster.tensor_parallel is not None and (
        config.num_heads % cluster.tensor_parallel or config.hidden_size % cluster.tensor_parallel
    ):
        raise ConfigError(
            f"--tensor-parallel {cluster.tensor_parallel} does not divide the {config.num_heads} heads and the "
            f"hidden size {config.hidden_size} of {cluster.model}; use a common divisor of both"
        )
    return config, seq_len, hardware


def _sizes(cluster: Cluster, config: Any, per_node: int, batch: bool = True) -> Iterator[tuple[int, int, int]]:
    """Every (D, T, K) with D·T·K = N that the fixed sizes allow and (``batch``) D·b divides B, in a fixed order."""
    n = cluster.gpus
    tensors = tensor_sizes(config.num_heads, config.hidden_size, per_node)
    for d in _divisors(n):
        if cluster.data_parallel not in (None, d) or batch and cluster.global_batch % (d * cluster.micro_batch_size):
            continue
        for t in tensors:
            if cluster.tensor_parallel not in (None, t) or (n // d) % t:
                continue
            k = n // (d * t)
            if cluster.devices in (None, k):
                yield d, t, k


def candidates(cluster: Cluster) -> list[dict[str, Any]]:
    """Every configuration of the plan, each as the RunConfig fields of its point, in a fixed order.

    Raises ``ConfigError`` in one sentence when the sizes leave none.
    """
    config, seq_len, hardware = _check(cluster)
    layers = len(decoder.chain(config))
    memory = cluster.device_memory if cluster.device_memory is not None else int(hardware.memory)
    points = []
    sizes = list(_sizes(cluster, config, hardware.devices_per_node))
    for d, t, k in sizes:
        m = cluster.global_batch // (d * cluster.micro_batch_size)
        for name in PLAN_STRATEGIES:
            strategy = load_strategy(name)
            chunk_options: tuple[int | None, ...] = CHUNK_OPTIONS if hasattr(strategy, "default_chunks") else (None,)
            for chunks in chunk_options:
                stages = planned_stages(strategy, k, chunks or 1)
                if stages > layers or stages != k * (chunks or 1):
                    # more stages than the model has layers (no partition exists), or a strategy whose stage
                    # count does not grow with its chunks (ZB-V, DualPipeV: always 2 per device) refusing this one
                    continue
                for remat in REMAT_OPTIONS:
                    points.append(
                        {
                            "model": cluster.model,
                            "seq_len": seq_len,
                            "hardware": cluster.hardware,
                            "device_memory": memory,
                            "batch": cluster.global_batch,
                            "data_parallel": d,
                            "tensor_parallel": t,
                            "devices": k,
                            "microbatches": m,
                            "strategy": name,
                            "chunks": chunks,
                            "remat": remat,
                            **({"sequence_parallel": True} if cluster.sequence_parallel and t > 1 else {}),
                        }
                    )
    if not points:
        allowed = sorted({d for d, _, _ in _sizes(cluster, config, hardware.devices_per_node, batch=False)})
        near = _nearest_gpus(cluster, config, hardware.devices_per_node, layers) if not allowed or sizes else []
        raise ConfigError(_no_sizes(cluster, layers, allowed if not sizes else [], near))
    return points


def _nearest_gpus(cluster: Cluster, config: Any, per_node: int, layers: int) -> list[int]:
    """The GPU counts nearest ``cluster.gpus``, below and above (up to twice it), that some layout can use."""

    def usable(n: int) -> bool:
        return any(k <= layers for _, _, k in _sizes(replace(cluster, gpus=n), config, per_node))

    below = next((n for n in range(cluster.gpus - 1, 0, -1) if usable(n)), None)
    above = next((n for n in range(cluster.gpus + 1, 2 * cluster.gpus + 1) if usable(n)), None)
    return [n for n in (below, above) if n is not None]


def _no_sizes(cluster: Cluster, layers: int, allowed: list[int], near: list[int]) -> str:
    """Why no configuration exists: the batch fits none of the ``allowed`` data-parallel sizes, or (none given)
    the pipeline is longer than the model; ``near``: GPU counts that some layout can use."""
    n, b, size = cluster.gpus, cluster.global_batch, cluster.micro_batch_size
    if allowed:  # D = 1 always divides the batch, so the sizes given left only larger D
        return (
            f"--global-batch {b} is not divisible by D x --micro-batch-size {size} for the data-parallel sizes D "
            f"that --gpus {n} and the sizes given leave ({', '.join(map(str, allowed))}); give a global batch that "
            f"is a multiple of {allowed[0] * size}, or other sizes"
        )
    counts = " or ".join(f"--gpus {g}" for g in near)
    return (
        f"--gpus {n} cannot be split into data x tensor x pipeline sizes whose pipeline of K devices fits the "
        f"{layers} layers of {cluster.model} (embedding, blocks, final norm, output) with a data-parallel size that "
        f"divides the {b // size} micro-batches of the global batch; give "
        + (
            f"{counts} (the nearest counts a layout can use), or a larger --global-batch"
            if near
            else "a larger --global-batch"
        )
    )


def static_bytes(prepared: Any, grad_sync: str | None = None) -> list[int]:
    """Per pipeline device of one replica, the bytes held from the first instant: parameters and optimizer state.

    What ``pipesched.engine`` gives each ``DeviceMemory`` at time 0
    (parameters of the stages it hosts, and its share of their optimizer
    state: all of it, or 1/D with a sharded optimizer, ``grad_sync``; default
    the config's); gradients and activations come later and only add. So a
    device over its memory here is out of memory in the simulation too, at
    time 0.
    """
    params, optimizer = _weights(prepared, grad_sync or prepared.config.grad_sync)
    return [p + o for p, o in zip(params, optimizer)]


def _weights(prepared: Any, grad_sync: str) -> tuple[list[int], list[int]]:
    """Per pipeline device of one replica: (parameter bytes, optimizer-state bytes) under ``grad_sync``."""
    from .decoder.tensor import Split
    from .decoder.workload import DecoderShapeWorkload

    config = prepared.config
    size, state = training_sizes(config)
    rows = [s.stop - s.start for s in prepared.slices]
    split = Split(config.tensor_parallel, config.sequence_parallel)  # one device's share, as the engine's
    work = DecoderShapeWorkload(prepared.layers, prepared.partition, rows, config.seq_len or 0, size, state, split)
    hosted = [sorted({a.stage for a in expand(actions)}) for actions in prepared.plan.actions]
    # each stage's copies: D replicas of the pipeline, times the devices of one replica holding it (two in a
    # bidirectional pipeline, DualPipe's and Chimera's), over which a sharded optimizer splits its state
    copies = {s: config.data_parallel * len(ds) for s, ds in prepared.plan.placement().items()}
    params = [sum(work.param_bytes(s) for s in stages) for stages in hosted]
    optimizer = [
        sum(optimizer_share(work.optimizer_bytes(s), copies[s], grad_sync) for s in stages) for stages in hosted
    ]
    return params, optimizer


def _union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of intervals [start, end) as sorted disjoint intervals."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if not len(starts):
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], np.maximum.accumulate(ends[order])
    # a new interval begins where a start lies beyond every end before it
    new = np.concatenate([[True], starts[1:] > ends[:-1]])
    last = np.concatenate([np.flatnonzero(new)[1:] - 1, [len(starts) - 1]])
    return starts[new], ends[last]


def exposed_communication(trace: Trace) -> float:
    """The time some link carries a transfer (start to arrival) while no device computes.

    The measure of (union of transfers) minus (union of compute spans),
    computed on the elementary segments between all their ends.

    >>> from pipesched.trace import Span, Transfer
    >>> t = Trace(devices=2, time_unit="s", spans=[Span(0, "F", 0, 0, 0.0, 1.0)],
    ...           transfers=[Transfer(0, 1, 0, "F", 0, 8, 0.5, 1.5, 2.0)])
    >>> exposed_communication(t)  # the transfer runs 0.5 .. 2.0, compute 0 .. 1
    1.0
    """
    moves, spans = trace.transfers, trace.spans
    if not len(moves):
        return 0.0
    ms, me = _union(np.asarray(moves.column("start"), float), np.asarray(moves.column("arrival"), float))
    cs, ce = _union(np.asarray(spans.column("start"), float), np.asarray(spans.column("end"), float))
    cuts = np.unique(np.concatenate([ms, me, cs, ce]))
    if len(cuts) < 2:
        return 0.0
    mid, width = (cuts[:-1] + cuts[1:]) / 2, np.diff(cuts)

    def covered(s: np.ndarray, e: np.ndarray) -> np.ndarray:
        if not len(s):
            return np.zeros(len(mid), bool)
        i = np.searchsorted(s, mid, side="right") - 1
        return (i >= 0) & (mid < e[np.maximum(i, 0)])

    return float(width[covered(ms, me) & ~covered(cs, ce)].sum())


def grad_syncs(point: dict[str, Any]) -> tuple[str, ...]:
    """The gradient synchronisations one layout stands for: both where a stage has copies to shard its
    optimizer state over (D > 1, or a bidirectional pipeline's two copies of each stage), the plain one else."""
    copies = point["data_parallel"] > 1 or _holds_copies(
        point["strategy"], point["devices"], point["microbatches"], point.get("chunks") or 1
    )
    return GRAD_SYNC_OPTIONS if copies else GRAD_SYNC_OPTIONS[:1]


@functools.lru_cache(maxsize=256)
def _holds_copies(strategy: str, devices: int, microbatches: int, chunks: int) -> bool:
    """Whether one pipeline of ``strategy`` runs some stage on two devices (DualPipe, Chimera); False where it
    cannot plan these sizes (the run then reports why)."""
    try:
        schedule = make_plan(load_strategy(strategy), devices, microbatches, chunks)
    except PipeschedError:
        return False
    return any(len(ds) > 1 for ds in schedule.placement().values())


def evaluate(point: dict[str, Any], prune: bool = True) -> dict[str, Any]:
    """One layout, shape-only: its record for the results file (``pipesched.sweep.Results``).

    The record holds one configuration per gradient synchronisation the
    layout stands for (``grad_syncs``), in ``configurations``: a sharded
    optimizer moves the same chunks over the same rings in the same steps as
    the all-reduce (a ring all-reduce is a reduce-scatter then an
    all-gather, Patarasuk and Yuan 2009, per level where it has two), so its
    step is the all-reduce's step, each device holding a constant
    ``optimizer share`` fewer bytes throughout. One simulation (with the
    all-reduce) gives both, exactly: the peaks shift by that constant, and
    so does each device's fullest instant (``tests/test_plan.py`` holds the
    derived record to a full simulation of the sharded layout).

    A layout that cannot run (a strategy refusing its chunks or micro-batches)
    is a failed record with the reason; a configuration whose static bytes
    exceed the memory is out of memory without simulation (``skipped``), its
    overshoot the static excess, a lower bound of the simulated one
    (``prune=False`` simulates it anyway, for its exact peak).
    """
    record: dict[str, Any] = {"key": point_key(point), "point": point}
    syncs = grad_syncs(point)
    try:
        config = RunConfig(
            compute=False, reference=False, allow_oom=True, mirror_replicas=True, grad_sync=syncs[0], **point
        )
        prepared = prepare(config)
        memory = prepared.config.device_memory or 0
        weights = {sync: _weights(prepared, sync) for sync in syncs}
        static = {sync: max(p + o for p, o in zip(*weights[sync])) for sync in syncs}
        if prune and all(static[sync] > memory for sync in syncs):
            return {**record, "ok": True, "configurations": [_skipped(sync, static[sync] - memory) for sync in syncs]}
        result = execute(prepared)
    except PipeschedError as exc:
        return {**record, "ok": False, "error": str(exc)}
    except MemoryError:  # a candidate too large for this machine, not a bug
        return {**record, "ok": False, "error": "this configuration does not fit in this machine's memory"}
    except Exception as exc:  # one odd candidate must not sink the plan: recorded, as sweep.run_point does
        return {**record, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    common = _step(prepared, result)
    plain = weights[syncs[0]][1]
    configurations = [
        _configuration(sync, common, result, memory, [a - b for a, b in zip(plain, weights[sync][1])]) for sync in syncs
    ]
    return {**record, "ok": True, "configurations": configurations}


def _skipped(grad_sync: str, overshoot: int) -> dict[str, Any]:
    return {"grad_sync": grad_sync, "oom": True, "skipped": True, "overshoot_bytes": overshoot}


def _step(prepared: Any, result: Any) -> dict[str, Any]:
    """What a layout's step gives every configuration of it: its times, throughput, MFU and shares."""
    m, c = result.metrics, prepared.config
    assert c.seq_len is not None and c.dtype is not None  # prepare resolves both for a decoder
    devices = c.data_parallel * c.tensor_parallel * c.devices
    peak_flops = float(getattr(load_hardware(c.hardware or "").peak_flops, c.dtype))
    flops = sum(model_flops(prepared.decoder, c.batch, c.seq_len))
    # to SIGNIFICANT digits, far finer than any cost model, so that two schedules whose steps differ only in
    # the order a float sum was taken (1e-16 of it) rank as the equals they are, in the table and the front
    makespan = float(f"{m.makespan:.{SIGNIFICANT}g}")
    return {
        "makespan": makespan,
        "throughput": c.batch / makespan,
        "tokens_per_second": c.batch * c.seq_len / makespan,
        "mfu": flops / (makespan * devices * peak_flops),
        "model_flops": flops,
        "bubble_fraction": m.bubble_fraction,
        "communication_share": exposed_communication(result.trace) / m.makespan,
        "time_unit": result.trace.time_unit,
    }


def _configuration(
    grad_sync: str, common: dict[str, Any], result: Any, memory: int, fewer: list[int]
) -> dict[str, Any]:
    """One grad-sync configuration of a simulated layout: each pipeline device holding ``fewer`` optimizer
    bytes than in the simulation, all along (a constant shift of its timeline, so of its peak)."""
    trace = result.trace
    replicas = trace.devices // len(fewer)  # 1 where the simulation ran replica 0 alone (pipesched.symmetry)
    peaks = [total - fewer[d // replicas] for d, (_, total) in enumerate(trace.peaks)]
    peak = max(peaks)
    fullest = peaks.index(peak)
    roles = dict(result.metrics.memory_by_role[fullest])
    roles["optimizer"] -= fewer[fullest // replicas]
    return {
        **common,
        "grad_sync": grad_sync,
        "oom": peak > memory,
        "skipped": False,
        "overshoot_bytes": max(0, peak - memory),
        "peak_memory_bytes": peak,
        "memory_by_role": roles,
        "device_memory": memory,
        "headroom_bytes": memory - peak,
    }


def configurations(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A layout's record as one record per configuration, each with its full point (``grad_sync`` in it)."""
    point = record["point"]
    if not record.get("ok"):
        return [{**record, "point": {**point, "grad_sync": sync}} for sync in grad_syncs(point)]
    return [
        {"key": record["key"], "ok": True, **c, "point": {**point, "grad_sync": c["grad_sync"]}}
        for c in record["configurations"]
    ]


@dataclass(frozen=True)
class _Listed(Sweep):
    """A plan's candidates as a sweep of listed points (``pipesched.sweep.sweep`` reads ``points()`` alone)."""

    listed: tuple[dict[str, Any], ...] = field(default=())

    def points(self) -> Iterator[dict[str, Any]]:
        yield from self.listed


#: The roles of ``memory_by_role``, in the order ``pipesched run --json`` prints them.
ROLE_ORDER = ("parameters", "gradients", "optimizer", "activations", "deferred", "buffers")

#: The fields of each configuration ``--json`` lists, best first.
JSON_FIELDS = (
    "data_parallel",
    "tensor_parallel",
    "sequence_parallel",
    "devices",
    "strategy",
    "chunks",
    "microbatches",
    "remat",
    "grad_sync",
)


@dataclass
class Plan:
    """Every candidate's record, the runnable ones ranked, and the Pareto front."""

    cluster: Cluster
    records: list[dict[str, Any]]
    ranked: list[dict[str, Any]]  # fitting, fastest first
    front: list[dict[str, Any]]
    simulated: int  # layouts simulated or decided now (not resumed)
    skipped: int  # configurations out of memory by the static bound, not simulated
    layouts: int = 0  # the layouts behind the configurations (each simulated once for both grad syncs)

    @property
    def out_of_memory(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("ok") and r.get("oom")]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if not r.get("ok")]

    def to_json(self) -> list[dict[str, Any]]:
        """The configurations, best first: the fitting ones by throughput, then the out-of-memory ones."""
        oom = sorted(self.out_of_memory, key=lambda r: r["overshoot_bytes"])
        return [_public(r) for r in self.ranked + oom]


def _public(r: dict[str, Any]) -> dict[str, Any]:
    point = r["point"]
    fields = {name: point.get(name) for name in JSON_FIELDS}
    fields["chunks"] = point.get("chunks") or 1
    fields["sequence_parallel"] = bool(point.get("sequence_parallel"))
    return {
        **fields,
        "gpus": point["data_parallel"] * point["tensor_parallel"] * point["devices"],
        "tokens_per_second": r.get("tokens_per_second"),
        "mfu": r.get("mfu"),
        "bubble_fraction": r.get("bubble_fraction"),
        "communication_share": r.get("communication_share"),
        "peak_memory_bytes": r.get("peak_memory_bytes"),
        # in MemorySample.roles' order, however the record travelled (a Dask worker's comes back key-sorted)
        "memory_by_role": None if r.get("memory_by_role") is None else {k: r["memory_by_role"][k] for k in ROLE_ORDER},
        "device_memory": point["device_memory"],
        "oom": bool(r["oom"]),
        "overshoot_bytes": r.get("overshoot_bytes"),
        "simulated": not r.get("skipped", False),
    }


def _order(r: dict[str, Any]) -> tuple[Any, ...]:
    """Fastest first; among equals the leaner, then the candidates' own order (deterministic)."""
    return (-r["tokens_per_second"], r["peak_memory_bytes"])


def plan(
    cluster: Cluster,
    output: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    evaluate_point: Callable[[dict[str, Any]], dict[str, Any]] = evaluate,
) -> Plan:
    """Simulate every candidate of ``cluster`` not yet in ``output`` and rank them.

    ``output``: a results file to append to and resume from (``pipesched.sweep.Results``);
    None keeps the records in a temporary file. Raises ``ConfigError`` when no
    configuration fits, naming the smallest memory that would fit one.
    """
    points = candidates(cluster)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers} is not allowed; use 1 or more")
    with tempfile.TemporaryDirectory(prefix="pipesched-plan-") as folder:
        results = Results(output or os.path.join(folder, "results.jsonl"))
        keys = [point_key(p) for p in points]
        before = sum(results.done(k) for k in keys)
        sweep(_Listed({}, listed=tuple(points)), results, workers, scheduler, progress, evaluate=evaluate_point)
        layouts = [results.records[k] for k in keys]
    records = [c for r in layouts for c in configurations(r)]
    fitting = [r for r in records if r.get("ok") and not r.get("oom")]
    if not fitting:
        layouts = _least_memory(layouts, records)
        records = [c for r in layouts for c in configurations(r)]
    ranked = [r for _, r in sorted(enumerate(fitting), key=lambda pair: (_order(pair[1]), pair[0]))]
    skipped = sum(bool(r.get("skipped")) for r in records)
    result = Plan(cluster, records, ranked, pareto(ranked), len(points) - before, skipped, len(points))
    if not ranked:
        raise ConfigError(_nothing_fits(result))
    return result


def _least_memory(layouts: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nothing fits: simulate, best bound first, the skipped layouts that could need less than the least simulated
    peak, so that the smallest memory the error names is exact.

    A skipped configuration's static bytes are a lower bound of its peak, so
    once the next bound is no less than the least peak found, none after it
    can need less (a best-first search: usually one or two simulations, where
    simulating every skipped layout took as long as the plan).
    """
    need = min((r["peak_memory_bytes"] for r in records if r.get("ok") and not r.get("skipped")), default=math.inf)
    bounds = sorted((r["point"]["device_memory"] + r["overshoot_bytes"], r["key"]) for r in records if r.get("skipped"))
    index = {r["key"]: i for i, r in enumerate(layouts)}
    for bound, key in bounds:
        if bound >= need:
            break
        i = index[key]
        if not layouts[i].get("ok") or any(not c.get("skipped") for c in layouts[i]["configurations"]):
            continue  # simulated already, for a twin configuration's lower bound
        layouts[i] = evaluate(layouts[i]["point"], prune=False)
        if layouts[i].get("ok"):
            need = min([need] + [c["peak_memory_bytes"] for c in layouts[i]["configurations"]])
    return layouts


def _nothing_fits(p: Plan) -> str:
    """No configuration fits: the smallest memory that would fit one, or why none could run at all."""
    oom = p.out_of_memory
    if not oom:
        reasons = sorted({r["error"] for r in p.failed})
        return f"no configuration of --gpus {p.cluster.gpus} can run: {reasons[0]}" + (
            f" (and {len(reasons) - 1} other reasons; see the results file)" if len(reasons) > 1 else ""
        )
    # a skipped candidate's overshoot is a lower bound; plan simulated every one whose bound is below the
    # smallest simulated peak, so the least of the simulated peaks is the least any candidate needs
    best = min((r for r in oom if not r.get("skipped")), key=lambda r: r["peak_memory_bytes"])
    need = best["peak_memory_bytes"]
    point = best["point"]
    return (
        f"no configuration fits in {format_bytes(point['device_memory'])} per device; the leanest "
        f"(D={point['data_parallel']} T={point['tensor_parallel']} K={point['devices']} {point['strategy']}, "
        f"remat {point['remat']}, {point['grad_sync']}) needs {format_bytes(need)} ({need} bytes): give "
        f"--device-memory {need} or more, or more GPUs"
        + (", or a smaller micro-batch" if p.cluster.micro_batch_size > 1 else "")
    )
