"""Assemble one run end to end: config -> model -> partition -> strategy -> schedule -> engine -> metrics.

Every check runs before any work, so a bad value fails at once with one sentence.

>>> result = run(RunConfig(layers="16,32x3,4", batch=8, devices=2, microbatches=4, cost="unit"))
>>> result.metrics.makespan, round(result.bubble_formula, 4)
(15.0, 0.2)
>>> result.grad_rel_err < 1e-12
True
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import numpy as np

from . import layout, microbatch
from .collectives import check_collective, check_grad_sync
from .compute import NumpyWorkload, ShapeWorkload, Workload
from .cost import NEEDS_TIMES, CostModel, check_cost_name, parse_device_speed
from .decoder import assemble as decoder
from .decoder.assemble import check_tensor_parallel
from .division import memory_division
from .engine import check_p2p, check_remat, collector_paused, simulate
from .errors import ConfigError, PipeschedError
from .hardware import check_hardware, cost_model, default_memory, flops_model
from .limits import check_actions, check_memory, check_stages
from .metrics import Metrics, grad_rel_err, measure
from .model import LOSSES, Model, Params, full_batch_gradients, layers_from_widths, make_data, parse_layers
from .optimizer import MLP_OPTIMIZER, check_optimizer, distinct_arrays, make_optimizer, state_bytes_per_parameter
from .partition import Partition, explicit, parse_partition
from .precision import MLP_DTYPE, check_dtype, itemsize
from .schedule import Schedule, expand
from .strategy import Strategy, closed_form_bubble, default_chunks, load_strategy, planned_stages, remembered_plan
from .times import STAGE_TIMES_ONLY, Times, load_times
from .trace import Trace
from .units import count, format_bytes

if TYPE_CHECKING:
    import networkx as nx

    from .balance import Balance

__all__ = [
    "AUTO",
    "auto_limit",
    "RunConfig",
    "RunResult",
    "Prepared",
    "run",
    "prepare",
    "execute",
    "compare",
    "train",
    "model_graph",
    "balance_model",
    "check_limits",
    "training_precision",
    "training_sizes",
    "DEFAULT_LAYERS",
    "BALANCE_BY",
    "BUILT_INS",
    "COMPARE_DEFAULT",
    "SEARCH_ACTIONS",
]

#: The seed model: input 128, ten hidden layers of 256 with ReLU, a linear output of 10.
DEFAULT_LAYERS = "128,256x10,10"

#: The strategy name that asks for a search instead of a recipe (``pipesched.search``).
AUTO = "auto"

#: The built-in strategies, in the README strategy table's order (pipesched.strategies; pyproject's entry points).
BUILT_INS = (
    "gpipe",
    "1f1b",
    "interleaved",
    "looped-bfs",
    "interleaved-zb",
    "zb-h1",
    "zb-h2",
    "zb-v",
    "v-half",
    "v-min",
    "dualpipev",
    "dualpipe",
    "chimera",
    "dp",
)
#: The strategies a comparison runs unless told otherwise (``pipesched compare``, the built-in study): every
#: built-in, and the schedule the search finds for the same costs and memory limit beside them.
COMPARE_DEFAULT = (*BUILT_INS, AUTO)


@dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on; the same config always gives the same numbers."""

    layers: str = DEFAULT_LAYERS
    batch: int = 32
    microbatches: int = 8
    devices: int = 4  # K: the devices of one pipeline replica
    # D: pipeline replicas side by side, K·D devices in all (pipesched.layout); batch is the global batch
    data_parallel: int = 1
    # how replicas sum their gradients (pipesched.collectives): a ring all-reduce, or a sharded optimizer
    # (reduce-scatter, then all-gather of the updated weights; ZeRO-1); ring, two-level or auto over nodes
    grad_sync: str = "allreduce"
    collective: str = "auto"
    # T: tensor-parallel devices per stage (Megatron-LM's intra-layer split), with or without sequence parallelism
    tensor_parallel: int = 1
    sequence_parallel: bool = False
    chunks: int | None = None  # None: the strategy's ``default_chunks``, else 1
    strategy: str | Strategy = "gpipe"  # a registered name, path/file.py:Class, or an instance
    partition: str = "uniform"  # uniform, balanced, or layer counts such as 2,3,3,3
    balance_by: str = "flops"  # flops or measured: the layer costs --partition balanced uses
    device_memory: int | None = None  # bytes per device: over it is an OOM; the balancer keeps under it
    allow_oom: bool = False  # report an OOM in the result instead of raising
    remat: str = "never"
    cost: str = "flops"
    device_flops: float | None = None
    link_bandwidth: float | None = None
    link_latency: float | None = None
    overlap: str = "sum"  # how long an overlapped F&B pair lasts: sum or max of its parts (see pipesched.cost)
    times: str | None = None  # the measured times file --cost measured reads (pipesched.times)
    p2p: str = "async"  # point-to-point semantics: PyTorch's isend/irecv, or blocking (see pipesched.engine)
    loss: str = "cross_entropy"
    compute: bool = True
    reference: bool = True
    seed: int = 0
    # the training precision memory and links count, and the optimizer whose state each device holds
    # (pipesched.precision, pipesched.optimizer); None: the model's own, fp64 and sgd for the MLP
    dtype: str | None = None
    optimizer: str | None = None
    model: str | None = None  # a decoder preset or config.json instead of the MLP's layers (pipesched.decoder)
    seq_len: int | None = None  # tokens per sequence of a decoder; None: its context length
    # the devices and their nodes (pipesched.hardware, pipesched.topology): a preset name or a file; None:
    # the MLP runs on the cpu preset's speed and links, a decoder on FlopsCost's defaults
    hardware: str | None = None
    devices_per_node: int | None = None  # None: the preset's (one node without --hardware)
    node_map: str | None = None  # each device's node, e.g. 0,0,1,1
    efficiency: float | None = None  # fraction of peak FLOP/s reached; None: the preset file's default
    inter_node_bandwidth: float | None = None
    inter_node_latency: float | None = None
    device_speed: str | None = None  # per-device speed factors, e.g. 2=0.5 (pipesched.cost.SpeedCost)
    # --strategy auto's memory limit: micro-batches in flight per device (pipesched.search); None: K
    max_inflight: int | None = None
    # shape-only runs: simulate replica 0 alone where every replica provably runs alike (pipesched.symmetry);
    # the trace then holds one replica's K devices and the metrics are the full step's (pipesched plan's)
    mirror_replicas: bool = False


@dataclass
class RunResult:
    """A run's schedule, trace, metrics and numerical results."""

    config: RunConfig
    schedule: Schedule
    partition: Partition
    trace: Trace
    metrics: Metrics
    bubble_formula: float | None
    balance: Balance | None = None
    loss: float | None = None
    grad_rel_err: float | None = None
    grads: Params | list[dict[str, np.ndarray]] | None = field(default=None, repr=False)  # MLP's or a decoder's
    parameters: int = 0  # the model's total parameter count
    # per device, each role's bytes held against whole: what T, sequence parallelism and sharding divide
    memory_division: list[dict[str, dict[str, int]]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The strategy's short name: a schedule file's name without its folder."""
        strategy = self.config.strategy
        return os.path.basename(strategy) if isinstance(strategy, str) else strategy.name

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``pipesched run --json`` prints."""
        c, m = self.config, self.metrics
        return {
            "strategy": c.strategy if isinstance(c.strategy, str) else c.strategy.name,
            "devices": c.devices,
            "data_parallel": c.data_parallel,
            "tensor_parallel": c.tensor_parallel,
            "sequence_parallel": c.sequence_parallel,
            "grad_sync": c.grad_sync,
            "collective": c.collective,
            "microbatches": c.microbatches,
            "chunks": c.chunks,
            "batch": c.batch,
            "layers": c.layers if c.model is None else None,
            "model": c.model,
            "seq_len": c.seq_len,
            "parameters": self.parameters,
            "partition": [len(s) for s in self.partition],
            "remat": c.remat,
            "dtype": c.dtype,
            "optimizer": c.optimizer,
            "cost": c.cost,
            "times": c.times,
            "hardware": c.hardware,
            # each device's speed factor where --device-speed gives them (null: all alike)
            "device_speed": (
                None if c.device_speed is None else list(parse_device_speed(c.device_speed, layout.total_devices(c)))
            ),
            "time_unit": self.trace.time_unit,
            "makespan": m.makespan,
            "bubble_fraction": m.bubble_fraction,
            "bubble_formula": self.bubble_formula,
            "period": m.period,
            "steady_bubble_fraction": m.steady_bubble_fraction,
            "overlap": c.overlap,
            "p2p": c.p2p,
            "throughput": m.throughput,
            "loss": self.loss,
            "grad_rel_err": self.grad_rel_err,
            "busy": m.busy,
            "peak_activation_bytes": m.peak_activation_bytes,
            "peak_memory_bytes": m.peak_memory_bytes,
            "memory_by_role": m.memory_by_role,
            "memory_division": self.memory_division,
            "peak_inflight_microbatches": m.peak_inflight_microbatches,
            "balance": None if self.balance is None else self.balance.to_dict(),
            "device_memory": c.device_memory,
            "oom": self.trace.oom is not None,
            "oom_device": None if self.trace.oom is None else self.trace.oom[0],
            "oom_time": None if self.trace.oom is None else self.trace.oom[1].time,
        }


@dataclass
class Prepared:
    """Everything checked and built before the first simulated step."""

    config: RunConfig
    layers: tuple[Any, ...]  # the MLP's Layers, or a decoder's chain (pipesched.decoder)
    schedule: Schedule
    partition: Partition
    slices: list[slice]
    cost: CostModel
    bubble_formula: float | None
    balance: Balance | None = None
    model: Model | None = None  # weights and data exist only when computing
    x: np.ndarray | None = None
    target: np.ndarray | None = None
    decoder: Any = None  # a decoder run's DecoderConfig (pipesched.decoder), its model when computing
    decoder_model: Any = None
    plan: Schedule | None = None  # one pipeline replica's schedule, as the strategy planned it (pipesched.layout)


def _check_counts(config: RunConfig) -> None:
    counts = (
        ("--devices", config.devices),
        ("--microbatches", config.microbatches),
        ("--batch", config.batch),
        ("--chunks", config.chunks),
        ("--seed", config.seed),
    )
    for flag, value in counts:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{flag} {value!r} is not a whole number; give e.g. 4")
    for flag, value in counts[:4]:
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; use 1 or more")
    if config.seed < 0:
        raise ConfigError(f"--seed {config.seed} is negative; give a seed of 0 or more")
    layout.check_data_parallel(config.data_parallel)
    layout.check_batch(config.batch, config.microbatches, config.data_parallel)
    check_grad_sync(config.grad_sync)
    check_collective(config.collective)
    check_remat(config.remat)
    check_p2p(config.p2p)
    if config.dtype is not None:
        check_dtype(config.dtype)
    if config.optimizer is not None:
        check_optimizer(config.optimizer)
    if config.loss not in LOSSES:
        raise ConfigError(f"--loss {config.loss!r} is unknown; use one of {', '.join(LOSSES)}")


def check_limits(config: RunConfig, strategy: Strategy, copies: int = 1) -> None:
    """The limits every command checks before planning (``pipesched.limits``), for ``config`` under ``strategy``.

    ``config.chunks`` must be resolved; ``copies`` counts runs whose arrays are alive at once.
    """
    chunks = config.chunks or 1
    # each of the D replicas runs the pipeline's actions on its own M micro-batches: K·D devices' worth
    names = ("--devices x --data-parallel", "--microbatches", "--chunks") if config.data_parallel > 1 else ()
    check_actions(layout.total_devices(config), config.microbatches, chunks, names)
    stages = planned_stages(strategy, config.devices, chunks)
    if config.model is not None:
        count = len(decoder.chain(decoder.resolve(config.model, config.seq_len)))
        check_stages(strategy.name, stages, config.devices, chunks, count, f"--model {config.model}")
        return  # a decoder's memory is checked by decoder.check_run
    check_stages(strategy.name, stages, config.devices, chunks, len(parse_layers(config.layers)) - 1, config.layers)
    check_memory(config, copies)


def check_times(config: RunConfig) -> Times | None:
    """The config's times file read and checked when ``--cost measured`` needs it; a cheap check, before any work."""
    check_cost_name(config.cost)
    if config.cost != "measured":
        if config.times is not None:
            raise ConfigError(
                f"--times {config.times} gives measured times, which only --cost measured reads; "
                f"add --cost measured or drop --times"
            )
        return None
    if config.times is None:
        raise ConfigError(NEEDS_TIMES)
    times = load_times(config.times)
    times.check_model(config.layers if config.model is None else None, config.model, config.seq_len)
    if config.partition == "balanced" and not times.per_layer:
        raise ConfigError(f"--partition {STAGE_TIMES_ONLY}")
    return times


def prepare(config: RunConfig) -> Prepared:
    """Every check and every piece of setup of a run, before any simulation."""
    _check_counts(config)
    if config.strategy == AUTO:
        return prepare(replace(config, strategy=_auto(config)))
    if config.max_inflight is not None and isinstance(config.strategy, str):
        raise ConfigError(
            f"--max-inflight {config.max_inflight} limits the schedule the search plans; it applies to "
            f"--strategy auto (or pipesched search), not to {config.strategy}: drop it, or use --strategy auto"
        )
    if config.model is None and config.seq_len is not None:
        raise ConfigError(f"--seq-len {config.seq_len} is a decoder's sequence length; give --model too, or drop it")
    model_config = None if config.model is None else decoder.resolve(config.model, config.seq_len)
    if model_config is not None:
        config = replace(config, seq_len=config.seq_len or decoder.default_seq_len(model_config))
        layers: Sequence[Any] = decoder.chain(model_config)
        decoder.check_run(model_config, config.seq_len or 0, config.batch, config.compute, config.loss)
    else:
        widths = parse_layers(config.layers)
        layers = layers_from_widths(widths)
    check_tensor_parallel(config.tensor_parallel, config.sequence_parallel, model_config, config.seq_len or 0)
    if config.tensor_parallel > 1 and config.cost == "measured":
        raise ConfigError(
            f"--tensor-parallel {config.tensor_parallel} divides computed times, but --cost measured reads "
            "measured ones; measure the tensor-parallel stage and run it with --tensor-parallel 1, or use --cost flops"
        )
    times = check_times(config)
    dtype, optimizer = training_precision(config)  # named in the result, so --json says which ran
    # a named preset's memory is the default --device-memory, so out-of-memory is checked without asking
    config = replace(config, device_memory=default_memory(config))
    strategy = load_strategy(config.strategy) if isinstance(config.strategy, str) else config.strategy
    chunks = config.chunks if config.chunks is not None else default_chunks(strategy)
    config = replace(config, chunks=chunks, dtype=dtype, optimizer=optimizer)
    check_limits(config, strategy)  # before the micro-batches, the plan and the arrays are built
    # after the limits, before any planning: nodes and per-device speeds count the devices
    check_hardware(config, dtype)
    # the global batch in D·M micro-batches: replica r runs r·M .. r·M + M-1 (pipesched.layout)
    slices = microbatch.split(config.batch, config.data_parallel * config.microbatches)
    # one replica's plan; a registered strategy's kept for the next point with the same sizes (a sweep's)
    schedule = remembered_plan(config.strategy, strategy, config.devices, config.microbatches, chunks)
    # the plan itself, for a plug-in whose stages() (or the default of v per device) undercounts
    check_stages(strategy.name, schedule.num_stages, config.devices, chunks, len(layers),
                 config.layers if model_config is None else f"--model {config.model}")  # fmt: skip
    balanced = None
    if config.partition == "balanced":
        balanced = balance_model(config, schedule)
        # the model graph's nodes are its layer indices (model_graph), so each stage is a run of ints
        partition = tuple(range(cast(int, stage[0]), cast(int, stage[-1]) + 1) for stage in balanced.stages)
    else:
        partition = parse_partition(config.partition, len(layers), schedule.num_stages)
    if times is not None:
        times.check_partition([len(stage) for stage in partition])
    cost = cost_model(config, dtype, times, partition)
    bubble = closed_form_bubble(strategy, config.devices, config.microbatches, chunks)
    prepared = Prepared(
        config,
        tuple(layers),
        layout.replicate(schedule, config.data_parallel, config.microbatches),
        partition,
        slices,
        cost,
        bubble,
        balanced,
    )
    prepared.plan = schedule
    prepared.decoder = model_config
    if config.compute and model_config is not None:
        from .decoder import DecoderModel, make_tokens

        prepared.decoder_model = DecoderModel.from_config(model_config, seed=config.seed)
        prepared.x, prepared.target = make_tokens(model_config, config.batch, config.seq_len or 0, seed=config.seed)
    elif config.compute:
        prepared.model = Model.from_sizes(widths, seed=config.seed)
        prepared.x, prepared.target = make_data(widths, config.batch, config.loss, seed=config.seed)
    return prepared


def training_precision(config: RunConfig) -> tuple[str, str]:
    """The config's training precision and optimizer, each the model's own where it names none.

    The MLP's own are ``fp64`` (its NumPy arrays are float64) and ``sgd``
    (what ``train`` has always run), so its numbers stay what they were.
    """
    if config.model is not None:  # a decoder's own: bf16 with mixed-precision Adam (pipesched.decoder.assemble)
        return config.dtype or decoder.MODEL_DTYPE, config.optimizer or decoder.MODEL_OPTIMIZER
    return config.dtype or MLP_DTYPE, config.optimizer or MLP_OPTIMIZER


def training_sizes(config: RunConfig) -> tuple[int, int]:
    """Bytes per element of the config's training precision, and its optimizer's state bytes per parameter."""
    dtype, optimizer = training_precision(config)
    return itemsize(dtype), state_bytes_per_parameter(optimizer, dtype)


def execute(p: Prepared) -> RunResult:
    """Simulate one step of a prepared run."""
    config = p.config
    rows = [s.stop - s.start for s in p.slices]
    size, state = training_sizes(config)
    if p.decoder is not None:
        return _execute_decoder(p, rows, size, state)
    if p.model is None:
        work: Workload = ShapeWorkload(p.layers, p.partition, rows, size, state)
    else:
        assert p.x is not None and p.target is not None  # prepare builds the data together with the model
        work = NumpyWorkload(p.model, p.partition, p.x, p.target, config.loss, p.slices, size, state)
    result = _simulate_step(p, work)
    result.parameters = sum(layer.param_count for layer in p.layers)
    if isinstance(work, NumpyWorkload):
        result.loss = work.loss
        result.grads = work.model_gradients()
        if config.reference:
            _, reference = full_batch_gradients(work.model, work.x, work.target, config.loss)
            result.grad_rel_err = grad_rel_err(result.grads, reference)
    return result


def _auto(config: RunConfig) -> Strategy:
    """``--strategy auto``: the schedule ``pipesched search`` finds for this run (``pipesched.search.configured``:
    its placement, ``--max-inflight`` or memory, and costs)."""
    from .search import Fixed  # the search imports this module: import it when asked
    from .search.configured import find

    return Fixed(find(config).found.schedule)


def _simulate_step(p: Prepared, work: Workload) -> RunResult:
    """Simulate ``work`` under the prepared schedule and cost model: the result's trace and metrics."""
    config = p.config
    trace = simulate(
        p.schedule, work, p.cost, config.remat, config.device_memory, config.allow_oom, config.p2p,
        config.grad_sync, config.collective, config.mirror_replicas and not config.compute,
    )  # fmt: skip
    metrics = measure(trace, config.batch)
    result = RunResult(config, p.schedule, p.partition, trace, metrics, p.bubble_formula, p.balance)
    if trace.devices == p.schedule.devices:  # a mirrored trace holds one replica (pipesched.symmetry)
        result.memory_division = memory_division(work, p.schedule, config.grad_sync)
    return result


def _execute_decoder(p: Prepared, rows: list[int], size: int, state: int) -> RunResult:
    """One step of a decoder run: real NumPy with the full-batch check, or shape-only stand-ins."""
    from .decoder.accounting import total_parameters
    from .decoder.tensor import Split
    from .decoder.workload import DecoderShapeWorkload, DecoderWorkload, full_batch_gradients
    from .decoder.workload import grad_rel_err as decoder_grad_rel_err

    config = p.config
    seq_len = config.seq_len or 0
    split = Split(config.tensor_parallel, config.sequence_parallel)  # one device's share of a tensor-parallel group
    if p.decoder_model is None:
        work: Workload = DecoderShapeWorkload(p.layers, p.partition, rows, seq_len, size, state, split)
    else:
        assert p.x is not None and p.target is not None  # prepare builds the tokens together with the model
        work = DecoderWorkload(p.decoder_model, p.partition, p.x, p.target, p.slices, size, state, split)
    result = _simulate_step(p, work)
    result.parameters = total_parameters(p.decoder)
    if isinstance(work, DecoderWorkload):
        result.loss = work.loss
        grads = work.model_gradients()
        result.grads = grads  # per layer, tied pairs summed in both places
        if config.reference:
            _, reference = full_batch_gradients(work.model, work.inputs, work.labels)
            result.grad_rel_err = decoder_grad_rel_err(grads, reference)
    return result


BALANCE_BY = ("flops", "measured")


def model_graph(config: RunConfig) -> tuple[nx.DiGraph, float]:
    """The config's layer graph and the link bandwidth its crossings are charged at.

    Layer costs come from the flops cost model (deterministic), from a times
    file's per-layer F + I + W under ``--cost measured`` (``[layer.N]``
    tables), or from timing the real NumPy passes (``balance_by="measured"``,
    the MLP's only); a link
    carries the activations and gradients crossing it at the flops model's
    bandwidth when ``config.cost`` is ``flops`` (under ``unit`` the links are
    free: the bandwidth is infinite). Memory per stage: parameters, gradients,
    optimizer state and the activations GPipe keeps for the whole batch. Bytes
    are in the config's training precision (``training_sizes``), as the
    engine counts them. A decoder's layers (``--model``) are its chain at its
    sequence length, rows being sequences (``decoder.costed_chain``): the
    output layer's 2 t h V FLOPs and the embedding's V h parameters are what
    make its end stages heavy.
    """
    if config.balance_by not in BALANCE_BY:
        raise ConfigError(f"--balance-by {config.balance_by!r} is unknown; use one of {', '.join(BALANCE_BY)}")
    if config.model is not None and config.balance_by == "measured":
        raise ConfigError(
            f"--balance-by measured does not take --model yet (it times the MLP's layers); "
            f"use --balance-by flops with --model {config.model}"
        )
    from .balance import layer_graph, profile_layers  # networkx: only a balanced run pays its import

    # the largest micro-batch, and one replica's share of the global batch (pipesched.layout)
    rows = -(-config.batch // (config.data_parallel * config.microbatches))
    flops = flops_model(config, training_precision(config)[0])  # the run's devices and intra-node link
    times = None
    if config.cost == "measured":  # the file's own per-layer times (check_times refuses per-stage ones)
        times = load_times(config.times or "").layer_costs(len(_graph_layers(config)), rows)
    elif config.balance_by == "measured":
        times = profile_layers(Model.from_sizes(parse_layers(config.layers), seed=config.seed), rows)
    size, state = training_sizes(config)
    graph = layer_graph(
        _graph_layers(config),
        rows=rows,
        rows_held=-(-config.batch // config.data_parallel),
        cost=flops,
        itemsize=size,
        state_bytes=state,
        layer_times=times,
    )
    return graph, math.inf if config.cost == "unit" else flops.link_bandwidth


def _graph_layers(config: RunConfig) -> Sequence[Any]:
    """The layers the balancer's graph and its shape-only candidates read: the MLP's, or a decoder's at its seq_len."""
    if config.model is None:
        return layers_from_widths(parse_layers(config.layers))
    model_config = decoder.resolve(config.model, config.seq_len)
    return decoder.costed_chain(model_config, config.seq_len or decoder.default_seq_len(model_config))


#: Simulated actions ``balance_model`` may spend on candidates beyond the objective's optimum and uniform,
#: which it always simulates: a second or two of shape-only simulation at most.
SEARCH_ACTIONS = 50_000


def balance_model(config: RunConfig, schedule: Schedule) -> Balance:
    """The partition ``--partition balanced`` runs: the objective's optimum, then the fastest in simulation.

    The objective (``pipesched.balance.bottleneck``) is the busiest device or
    link per micro-batch under the schedule's placement (see ``model_graph``
    for the costs). With ``balance_by="flops"``, or under ``--cost measured``
    with per-layer times (a candidate's stages sum its layers' times), its
    costs are the simulator's, so candidates are simulated shape-only, under
    this config's cost model, remat and memory, and the fastest returned
    (``pipesched.balance.search``): never slower than uniform. Costs timed
    here (``balance_by="measured"``) are not the simulator's, so there the
    objective's optimum stands alone.

    ``device_memory`` caps each stage only where it can stand for a device's
    memory: one stage per device, and no ``allow_oom`` (which asks to run and
    mark an OOM, not to refuse). The stage memory is GPipe's (every
    micro-batch's activations); for other schedules the simulation's own
    memory check is the authority, and the search puts partitions that run
    out of memory in it last.
    """
    from .balance import Placement, balance, fastest

    graph, bandwidth = model_graph(config)
    placement = Placement.of(schedule)
    stages = placement.stages
    cap = config.device_memory if stages == config.devices and not config.allow_oom else None
    optimum = balance(graph, placement, link_bandwidth=bandwidth, memory_cap=cap)
    if config.balance_by != "flops" and config.cost != "measured":
        return optimum  # costs timed here are not the simulator's: the objective's optimum stands alone
    layers = _graph_layers(config)
    # the first replica's micro-batches (the largest): the candidates are simulated as one pipeline replica
    split = microbatch.split(config.batch, config.data_parallel * config.microbatches)
    rows = [s.stop - s.start for s in split[: config.microbatches]]
    dtype = training_precision(config)[0]
    times = load_times(config.times) if config.cost == "measured" and config.times else None
    actions = sum(len(list(expand(device))) for device in schedule.actions)
    size, state = training_sizes(config)

    def step(sizes: list[int]) -> tuple[bool, float]:
        partition = explicit(sizes, len(layers), stages)
        work: Workload
        if config.model is None:
            work = ShapeWorkload(layers, partition, rows, size, state)
        else:  # the decoder's own shape-only workload, as --no-compute runs it
            from .decoder.tensor import Split
            from .decoder.workload import DecoderShapeWorkload

            chain = [costed.layer for costed in layers]
            split = Split(config.tensor_parallel, config.sequence_parallel)
            work = DecoderShapeWorkload(chain, partition, rows, config.seq_len or 0, size, state, split)
        cost = cost_model(config, dtype, times, partition)  # measured times: the candidate's layer sums
        trace = simulate(
            schedule, work, cost, config.remat, config.device_memory, allow_oom=True,
            grad_sync=config.grad_sync, collective=config.collective,
        )  # fmt: skip
        return trace.oom is not None, trace.makespan

    runs = max(2, SEARCH_ACTIONS // actions)
    return fastest(graph, placement, optimum, step, runs, link_bandwidth=bandwidth, memory_cap=cap)


def run(config: RunConfig) -> RunResult:
    """Simulate one training step (forward and backward of the whole batch) under ``config``."""
    with collector_paused():  # planning, too, makes objects per action that no cycle holds (see there)
        return execute(prepare(config))


def compare(
    config: RunConfig, strategies: Sequence[str], on_skip: Callable[[str, str], None] | None = None
) -> list[RunResult]:
    """Run ``config`` under each strategy; ``config.chunks`` goes to strategies that take chunks.

    A strategy takes chunks when it declares ``default_chunks``; the others run
    with one stage per device. All strategies are checked before any is run: one
    that cannot run this config fails the comparison, or, given ``on_skip``, is
    left out and passed to it with the reason.
    """
    if not strategies:
        raise ConfigError("--strategies is empty; name at least one, e.g. gpipe,1f1b")
    repeated = sorted({name for name in strategies if list(strategies).count(name) > 1})
    if repeated:
        raise ConfigError(f"--strategies names {', '.join(repeated)} more than once; name each strategy once")
    _check_counts(config)  # what no strategy can run is one sentence, not a note per strategy
    if config.max_inflight is not None and AUTO not in strategies:
        raise ConfigError(
            f"--max-inflight {config.max_inflight} limits auto's schedule, and --strategies does not name auto; "
            "add auto, or drop --max-inflight"
        )
    check_memory(config, copies=len(strategies))  # every prepared run keeps its model until the last has run
    prepared = []
    for name in strategies:
        others = ",".join(n for n in strategies if n != name and not n.lower().endswith(".csv")) or "another strategy"
        try:
            # auto plans one stage per device or a V (--chunks 2), within --max-inflight, which is its alone
            takes_chunks = name == AUTO or hasattr(load_strategy(name), "default_chunks")
            chunks, inflight = (
                (config.chunks if takes_chunks else None),
                (config.max_inflight if name == AUTO else None),
            )
            prepared.append(prepare(replace(config, strategy=name, chunks=chunks, max_inflight=inflight)))
        except PipeschedError as exc:
            if on_skip is not None:
                on_skip(name, str(exc))
                continue
            way_out = (
                "drop --schedule" if name.lower().endswith(".csv") else f"leave {name} out with --strategies {others}"
            )
            raise type(exc)(f"{exc}; or {way_out}") from exc
    if not prepared:
        raise ConfigError("no strategy can run this configuration; see the notes above")
    results = []
    for ready in prepared:
        name = ready.config.strategy if isinstance(ready.config.strategy, str) else ready.config.strategy.name
        try:
            results.append(execute(ready))
        except PipeschedError as exc:  # a deadlock or OOM: say whose
            raise type(exc)(f"strategy {name!r}: {exc}") from exc
    return results


def auto_limit(config: RunConfig, keys: Sequence[str] = ("--device-memory", "--max-inflight")) -> str:
    """The memory limit ``--strategy auto`` plans within under ``config``, as a phrase for a table's note.

    As ``pipesched.search.configured.find`` plans: ``--max-inflight`` where
    given, within the bytes of ``--device-memory`` or of a named preset where
    there are any; else those bytes; else K micro-batches in flight per
    device, 1F1B's and ZB-H1's most. ``keys`` name what sets a
    limit, the memory first (a study's is ``[hardware].device_memory``).

    >>> auto_limit(RunConfig(max_inflight=2))
    'at most 2 micro-batches in flight per device (--max-inflight)'
    >>> auto_limit(RunConfig(device_memory=2**30))
    'within 1.00 GiB per device (--device-memory), the limit every strategy here runs under'
    """
    memory = default_memory(config)
    if config.max_inflight is not None:
        inflight = f"at most {count(config.max_inflight, 'micro-batch')} in flight per device (--max-inflight)"
        return inflight if memory is None else f"{inflight}, within {format_bytes(memory)} per device"
    if memory is None:
        return (
            f"at most {count(config.devices, 'micro-batch')} in flight per device (K: 1F1B's and ZB-H1's memory), "
            f"as no memory limit is given; {' or '.join(keys)} sets one"
        )
    where = (
        keys[0]
        if config.device_memory is not None
        else f"the {os.path.basename(config.hardware or '')} preset's memory"
    )
    return f"within {format_bytes(memory)} per device ({where}), the limit every strategy here runs under"


def train(config: RunConfig, steps: int, lr: float = 0.01) -> list[RunResult]:
    """Run ``steps`` simulated steps, each followed by an update of the model's parameters.

    The update is the config's optimizer (``pipesched.optimizer``): plain SGD
    for the MLP and Adam for a decoder unless it names the other, in float64
    whatever the precision memory counts; ``lr`` is its learning rate (Adam's
    step size). A decoder's tied matrix is one array, stepped once with its
    two layers' summed gradient (``optimizer.distinct_arrays``). Each
    result's ``loss`` is the loss before that step's update.
    """
    if steps < 1:
        raise ConfigError(f"--steps {steps} is not allowed; use 1 or more")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr {lr} is not positive; give a learning rate above 0, e.g. 0.01")
    if not config.compute:
        raise ConfigError("train needs real compute to update the model; drop --no-compute")
    prepared = prepare(config)
    assert prepared.config.optimizer is not None  # prepare resolves it
    optimizer = make_optimizer(prepared.config.optimizer, lr)
    # per layer, the MLP's weight and bias or a decoder's named arrays (compute is on, so one of them exists)
    model = prepared.model if prepared.decoder_model is None else prepared.decoder_model
    assert model is not None
    results = []
    for step in range(steps):
        with np.errstate(all="ignore"):  # a diverging run is reported below, in one sentence
            result = execute(prepared)
        if not (result.loss is not None and math.isfinite(result.loss) and result.grad_rel_err != math.inf):
            raise ConfigError(
                f"training diverged at step {step} (loss {result.loss}) with --lr {lr:g}; use a smaller learning rate"
            )
        optimizer.step(*distinct_arrays(model.params, result.grads or []))  # a tied matrix once
        results.append(result)
    return results
