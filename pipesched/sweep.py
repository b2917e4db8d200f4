"""Design-space sweeps: the product of a study's axes, run locally on every core or on a Dask cluster.

A sweep file names the axes (``[axes]``), the model (``[model]``: MLP
``layers``, or a decoder's ``model`` and ``seq_len``, which may be an axis) and
optional constraints (``[constraints] where = ["microbatches >= devices"]``).
Every point is one ``pipesched run`` (without NumPy unless ``compute = true``),
and its result is appended at once, as one JSON line, to the results file,
keyed by a stable hash of its configuration. Rerunning the same command skips
the points already there, so an interrupted sweep loses only the points in
flight; a point whose simulation fails is recorded with its error.

>>> sweep = parse_sweep({"axes": {"devices": [2, 4], "microbatches": [2, 4, 8]},
...                      "constraints": {"where": ["microbatches >= 2 * devices"]}}, "s.toml")
>>> [(p["devices"], p["microbatches"]) for p in sweep.points()]
[(2, 4), (2, 8), (4, 8)]
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Iterator

from pydantic import BaseModel

from .collectives import check_collective, check_grad_sync
from .cost import FlopsCost, check_cost_name, check_overlap
from .decoder.assemble import chain as decoder_chain
from .decoder.assemble import default_seq_len
from .decoder.config import load_config, preset_names
from .engine import check_remat
from .errors import ConfigError, PipeschedError
from .files import progress_bar, read_toml
from .hardware import flops_model, load_hardware, run_hardware
from .hardware import preset_names as hardware_presets
from .model import LOSSES, parse_layers
from .optimizer import check_optimizer
from .partition import parse_partition
from .pipeline import RunConfig, run, training_precision
from .precision import check_dtype
from .schema import STRICT, Count, NonEmpty, NonNegativeNumber, Size, WholeNumber, text, validate
from .strategy import load_strategy
from .times import STAGE_TIMES_ONLY, load_times

__all__ = [
    "Sweep",
    "AXES",
    "load_sweep",
    "parse_sweep",
    "point_key",
    "run_point",
    "run_chunk",
    "Results",
    "sweep",
    "pareto",
]


class _Axes(BaseModel):
    """[axes]: each the RunConfig field it sets, as a non-empty list of values; a run checks the values."""

    model_config = STRICT
    devices: NonEmpty[Count] | None = None
    microbatches: NonEmpty[Count] | None = None
    chunks: NonEmpty[Count] | None = None
    strategy: NonEmpty[Annotated[str, text("1f1b")]] | None = None
    partition: NonEmpty[Annotated[str, text("uniform")]] | None = None
    remat: NonEmpty[Annotated[str, text("never")]] | None = None
    batch: NonEmpty[Count] | None = None
    link_bandwidth: NonEmpty[NonNegativeNumber] | None = None
    link_latency: NonEmpty[NonNegativeNumber] | None = None
    device_memory: NonEmpty[Size] | None = None
    cost: NonEmpty[Annotated[str, text("flops")]] | None = None
    overlap: NonEmpty[Annotated[str, text("sum")]] | None = None
    dtype: NonEmpty[Annotated[str, text("bf16")]] | None = None
    optimizer: NonEmpty[Annotated[str, text("adam")]] | None = None
    seq_len: NonEmpty[Count] | None = None
    hardware: NonEmpty[Annotated[str, text("h100-sxm")]] | None = None
    devices_per_node: NonEmpty[Count] | None = None
    efficiency: NonEmpty[NonNegativeNumber] | None = None
    inter_node_bandwidth: NonEmpty[NonNegativeNumber] | None = None
    inter_node_latency: NonEmpty[NonNegativeNumber] | None = None
    # the layout around the pipeline (pipesched run --data-parallel and its kin); devices stays the pipeline's K
    data_parallel: NonEmpty[Count] | None = None
    tensor_parallel: NonEmpty[Count] | None = None
    sequence_parallel: NonEmpty[bool] | None = None
    grad_sync: NonEmpty[Annotated[str, text("sharded")]] | None = None
    collective: NonEmpty[Annotated[str, text("ring")]] | None = None


class _Model(BaseModel):
    """[model]: the settings every point shares (RunConfig fields); a run checks the values."""

    model_config = STRICT
    layers: Annotated[str, text("128,256x10,10")] | None = None
    model: Annotated[str, text("llama2-7b")] | None = None
    seq_len: Count | None = None
    batch: Count | None = None
    loss: Annotated[str, text("cross_entropy")] | None = None
    seed: WholeNumber | None = None
    compute: bool | None = None
    device_flops: NonNegativeNumber | None = None
    dtype: Annotated[str, text("bf16")] | None = None
    optimizer: Annotated[str, text("adam")] | None = None
    hardware: Annotated[str, text("h100-sxm")] | None = None
    devices_per_node: Count | None = None
    node_map: Annotated[str, text("0,0,1,1")] | None = None
    efficiency: NonNegativeNumber | None = None
    inter_node_bandwidth: NonNegativeNumber | None = None
    inter_node_latency: NonNegativeNumber | None = None
    device_speed: Annotated[str, text("2=0.5")] | None = None
    times: Annotated[str, text("times.toml")] | None = None
    data_parallel: Count | None = None
    tensor_parallel: Count | None = None
    sequence_parallel: bool | None = None
    grad_sync: Annotated[str, text("sharded")] | None = None
    collective: Annotated[str, text("ring")] | None = None


class _Constraints(BaseModel):
    model_config = STRICT
    where: NonEmpty[Annotated[str, text("microbatches >= 2 * devices")]] = ()  # each parsed by parse_sweep


class _File(BaseModel):
    """A sweep file: its sections, each checked key by key (pipesched.schema)."""

    model_config = STRICT
    model: _Model = _Model()
    axes: _Axes = _Axes()
    constraints: _Constraints = _Constraints()


#: The axes a sweep can span, each the RunConfig field it sets.
AXES = tuple(_Axes.model_fields)
_COMPARE = re.compile(r"\s*(.+?)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*")


@dataclass(frozen=True)
class Sweep:
    """The axes, the fixed settings and the constraints of a sweep."""

    axes: dict[str, tuple[Any, ...]]
    fixed: dict[str, Any] = field(default_factory=dict)
    where: tuple[str, ...] = ()

    def points(self) -> Iterator[dict[str, Any]]:
        """Every combination of the axes that meets the constraints, in a fixed order."""
        names = list(self.axes)
        for values in itertools.product(*(self.axes[n] for n in names)):
            point = dict(zip(names, values))
            if all(_holds(rule, {**self.fixed, **point}) for rule in self.where):
                yield {**self.fixed, **point}


def _value(term: str, point: dict[str, Any]) -> float:
    """A constraint term: a sum or product of axis names and numbers, e.g. ``2 * devices``."""
    term = term.strip()
    for op in ("+", "*"):
        if op in term:
            parts = [_value(t, point) for t in term.split(op)]
            return sum(parts) if op == "+" else math.prod(parts)
    if re.fullmatch(r"-?\d+(\.\d+)?([eE][+-]?\d+)?", term):
        return float(term)
    value = point.get(term, _DEFAULTS.get(term))
    if value is None and term in ("link_bandwidth", "link_latency"):  # the point's own hardware's link
        flops = flops_model(_config(point), training_precision(_config(point))[0])
        value = getattr(flops, term)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(term)


#: What an axis a point does not set stands for in a constraint: the run's default.
_DEFAULTS = {
    "devices": RunConfig.devices,
    "microbatches": RunConfig.microbatches,
    "chunks": 1,
    "batch": RunConfig.batch,
    "data_parallel": RunConfig.data_parallel,
    "tensor_parallel": RunConfig.tensor_parallel,
}  # link_bandwidth and link_latency: the point's hardware's intra-node link (_value)


def _holds(rule: str, point: dict[str, Any]) -> bool:
    match = _COMPARE.fullmatch(rule)
    assert match is not None  # checked when the file was read
    left, op, right = _value(match.group(1), point), match.group(2), _value(match.group(3), point)
    return {
        ">=": left >= right,
        "<=": left <= right,
        "==": left == right,
        "!=": left != right,
        ">": left > right,
        "<": left < right,
    }[op]


def parse_sweep(data: dict[str, Any], path: str) -> Sweep:
    """Check a parsed sweep file; every problem names the key's path."""
    checked = validate(_File, data, path)
    # the values as written, not as checked (1e9, not 1e9 as a float of 1000000000): they make the points' keys
    model = dict(data.get("model", {}))
    axes = {name: tuple(values) for name, values in data.get("axes", {}).items()}
    if not axes:
        raise ConfigError(f"{path}: [axes] is missing or empty; name at least one axis, e.g. devices = [2, 4]")
    if checked.axes.device_memory is not None:
        axes["device_memory"] = checked.axes.device_memory  # "16GB" as bytes
    model = _resolve_times(_resolve_model(model, path), axes, path)
    _resolve_hardware(axes, model, path)
    _check_values(axes, model, path)
    fixed = {k: v for k, v in model.items()}
    where = checked.constraints.where
    if len(axes.get("cost", ())) > 1:
        raise ConfigError(
            f"{path}: [axes].cost: sweep one cost model at a time; unit and flops times are not comparable"
        )
    probe = {**{n: v[0] for n, v in axes.items()}, **fixed}
    for rule in where:
        match = _COMPARE.fullmatch(rule)
        try:
            if match is None:
                raise ValueError(rule)
            _value(match.group(1), probe), _value(match.group(3), probe)
        except ValueError:
            raise ConfigError(
                f"{path}: [constraints].where: {rule!r} is not a comparison of axes and numbers; "
                'write e.g. "microbatches >= 2 * devices"'
            ) from None
    result = Sweep(axes, fixed, where)
    if next(result.points(), None) is None:
        raise ConfigError(f"{path}: the axes and constraints leave no point to run; loosen [constraints].where")
    for point in itertools.islice(result.points(), 1):  # the fields must make a RunConfig
        _config(point)
    return result


def _resolve_hardware(axes: dict[str, tuple[Any, ...]], model: dict[str, Any], path: str) -> None:
    """Hardware files named in [model].hardware or [axes].hardware are found next to the sweep file (in place)."""
    folder = os.path.dirname(os.path.abspath(path))

    def found(spec: Any) -> Any:
        if not isinstance(spec, str) or spec in hardware_presets() or not (spec.endswith(".toml") or os.sep in spec):
            return spec  # a preset, or a name that is not one (its error lists the presets)
        return os.path.join(folder, spec)

    if "hardware" in model:
        model["hardware"] = found(model["hardware"])
    if "hardware" in axes:
        axes["hardware"] = tuple(found(spec) for spec in axes["hardware"])


def _resolve_model(model: dict[str, Any], path: str) -> dict[str, Any]:
    """A decoder named in [model].model: a config.json found next to the sweep file; layers or model, not both."""
    if "model" not in model:
        return model
    if "layers" in model:
        raise ConfigError(
            f"{path}: [model].layers: a decoder's layers come from [model].model; give either layers or model"
        )
    spec = model["model"]
    if spec not in preset_names() and not os.path.isabs(spec):
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.exists(os.path.join(folder, spec)) or spec.endswith(".json") or os.sep in spec:
            spec = os.path.join(folder, spec)  # relative to the sweep file, as a study's schedule files are
    return {**model, "model": spec}


def _resolve_times(model: dict[str, Any], axes: dict[str, tuple[Any, ...]], path: str) -> dict[str, Any]:
    """[model].times found next to the sweep file; it makes the cost model measured, which needs it."""
    costs = axes.get("cost", ())
    if "times" not in model:
        if "measured" in costs:
            raise ConfigError(
                f'{path}: [axes].cost: "measured" needs the measured times; add times = "times.toml" to [model]'
            )
        return model
    if any(cost != "measured" for cost in costs):
        raise ConfigError(
            f"{path}: [model].times gives measured times, which [axes].cost = {list(costs)} does not read; "
            'use cost = ["measured"] or leave times out'
        )
    times = model["times"]
    full = times if os.path.isabs(times) else os.path.join(os.path.dirname(os.path.abspath(path)), times)
    if "balanced" in axes.get("partition", ()) and not load_times(full).per_layer:
        raise ConfigError(f"{path}: [axes].partition: {STAGE_TIMES_ONLY}")
    return {**model, "times": full} | ({} if costs else {"cost": "measured"})


def _usable(name: str, value: Any, layers: int) -> None:
    """Raise ``PipeschedError`` unless some point could run with ``name = value``: a run's own check of it alone."""
    if name == "strategy":
        load_strategy(value)
    elif name in ("device_flops", "link_bandwidth", "link_latency"):  # the flops model's rule, whatever the cost axis
        FlopsCost(**{name: value})
    elif name == "cost":
        check_cost_name(value)
    elif name == "times":
        load_times(value)
    elif name == "hardware":
        load_hardware(value)
    elif name in ("efficiency", "inter_node_bandwidth", "inter_node_latency"):  # their run's own rules
        run_hardware(RunConfig(model="", **{name: value}))  # a decoder's: the checks alone, no preset read
    elif name == "overlap":
        check_overlap(value)
    elif name == "remat":
        check_remat(value)
    elif name == "grad_sync":
        check_grad_sync(value)
    elif name == "collective":
        check_collective(value)
    elif name == "dtype":
        check_dtype(value)
    elif name == "optimizer":
        check_optimizer(value)
    elif name == "loss" and value not in LOSSES:
        raise ConfigError(f"{value!r} is not a loss; use one of {', '.join(LOSSES)}")
    elif name == "layers":
        parse_layers(value)
    elif name == "model":
        load_config(value)
    elif name == "partition" and value not in ("uniform", "balanced"):  # counts: their form and their sum
        parse_partition(value, layers, stages=value.count(",") + 1)


def _check_values(axes: dict[str, tuple[Any, ...]], model: dict[str, Any], path: str) -> None:
    """Refuse, by key path, every axis or model value that no point can use (checks that need no other axis)."""

    def check(where: str, name: str, value: Any, layers: int) -> None:
        try:
            _usable(name, value, layers)
        except PipeschedError as exc:
            raise ConfigError(f"{path}: {where}: {_without_flag(str(exc), name)}") from None

    for key, value in model.items():
        if key != "seq_len":  # checked against the decoder below
            check(f"[model].{key}", key, value, 0)
    if "model" in model:
        config = load_config(model["model"])
        layers = len(decoder_chain(config))
        for where, seq_len in [("[model].seq_len", model.get("seq_len"))] + [
            ("[axes].seq_len", s) for s in axes.get("seq_len", ())
        ]:
            try:
                config.check_sequence(default_seq_len(config) if seq_len is None else seq_len)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {where}: {exc}") from None
        if "balanced" in axes.get("partition", ()):
            raise ConfigError(
                f"{path}: [axes].partition: 'balanced' is not wired into sweeps of a decoder ([model].model) yet "
                f"(pipesched run --model ... --partition balanced has it); use uniform or counts over its {layers} "
                "layers (embedding, blocks, final norm, output)"
            )
    else:
        if "seq_len" in model or "seq_len" in axes:
            where = "[model].seq_len" if "seq_len" in model else "[axes].seq_len"
            raise ConfigError(
                f"{path}: {where}: only a decoder has a sequence length; give [model].model or leave seq_len out"
            )
        layers = len(parse_layers(model.get("layers", RunConfig.layers))) - 1  # what a partition's counts sum to
    for name, values in axes.items():
        for value in values:
            check(f"[axes].{name}", name, value, layers)


def _without_flag(message: str, name: str) -> str:
    """A run's message about ``--link-bandwidth 0 ...`` as ``0 ...``: the key path names the value instead."""
    flag = "--" + name.replace("_", "-") + " "
    return message[len(flag) :] if message.startswith(flag) else message


def load_sweep(path: str) -> Sweep:
    """Read and check a sweep file."""
    return parse_sweep(read_toml(path, "sweep"), path)


def point_key(point: dict[str, Any]) -> str:
    """A stable hash of a point's configuration: the same on every machine and Python."""
    return hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:16]


def _config(point: dict[str, Any]) -> RunConfig:
    settings = {"compute": False, "reference": False, "allow_oom": True, **point}
    if settings.get("compute"):
        settings["reference"] = True
    return RunConfig(**settings)


def run_point(point: dict[str, Any]) -> dict[str, Any]:
    """Simulate one point; a failure is a result too, with its error."""
    record: dict[str, Any] = {"key": point_key(point), "point": point}
    try:
        result = run(_config(point))
    except PipeschedError as exc:
        return {**record, "ok": False, "error": str(exc)}
    except MemoryError:  # past the checks made up front: this point is too large for this machine, not a bug
        return {**record, "ok": False, "error": "this point does not fit in this machine's memory"}
    except Exception as exc:  # one odd point must not sink the sweep: record it and go on
        return {**record, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    m = result.metrics
    return {
        **record,
        "ok": True,
        "oom": result.trace.oom is not None,
        "makespan": m.makespan,
        "bubble_fraction": m.bubble_fraction,
        "steady_bubble_fraction": m.steady_bubble_fraction,
        "throughput": m.throughput,
        "peak_memory_bytes": max(m.peak_memory_bytes),
        "peak_activation_bytes": max(m.peak_activation_bytes),
        "grad_rel_err": result.grad_rel_err,
        "time_unit": result.trace.time_unit,
    }


def run_chunk(
    points: list[dict[str, Any]], evaluate: Callable[[dict[str, Any]], dict[str, Any]] = run_point
) -> list[dict[str, Any]]:
    """Simulate several points in one task, so thousands of small points are not all scheduling.

    ``evaluate`` makes one point's record (``run_point``, or ``pipesched.plan.evaluate``): a module-level
    function, which a worker process or a Dask worker imports by name.
    """
    return [evaluate(p) for p in points]


class Results:
    """The JSON-lines results file: read what is there, append each finished point at once.

    Only one sweep may write a file at a time (a lock says so). The lines of
    the points a task finished (one point in a single process, a worker's
    chunk in a pool) are written with one system call as soon as it is done,
    so a killed sweep (Ctrl-C, SIGTERM) leaves whole lines in the file; a torn
    last line (a machine crash mid-write) is cut off when the file is next
    opened. Lines are not synced one by one: that would serialise the sweep
    on the disk, and only a crash of the whole machine could lose them.
    """

    def __init__(self, path: str):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if os.path.exists(path):
            self._read()

    def done(self, key: str) -> bool:
        """Whether the point has a result: a run, or a failure of its own; not one lost with a worker."""
        record = self.records.get(key)
        return record is not None and not record.get("lost")

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        good = data.rfind(b"\n") + 1  # whole lines end with a newline
        for number, line in enumerate(data[:good].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not (isinstance(record.get("point"), dict) and isinstance(record.get("ok"), bool)):
                    raise ValueError("not a result")
                self.records[record["key"]] = record
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ConfigError(
                    f"{self.path} line {number} is not a pipesched result; give a new -o file or remove that line"
                ) from None
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def append(self, record: dict[str, Any]) -> None:
        """Write one point's line (see ``extend``)."""
        self.extend([record])

    def extend(self, records: list[dict[str, Any]]) -> None:
        """Write the points' lines at the end of the file, all in one system call."""
        lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, lines)
            while written < len(lines):  # short only on a full disk, where the next write raises
                written += os.write(fd, lines[written:])
        finally:
            os.close(fd)
        for record in records:
            self.records[record["key"]] = record


def _chunks(points: list[dict[str, Any]], workers: int) -> list[list[dict[str, Any]]]:
    """About eight tasks per worker, dealt round-robin so that each mixes cheap and dear points.

    Few tasks amortise the scheduling; dealing (rather than cutting the list in
    runs, where neighbours in the product cost alike) keeps the workers
    equally busy to the end.
    """
    count = min(len(points), workers * 8)
    return [points[i::count] for i in range(count)]


def sweep(
    study: Sweep,
    results: Results,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    evaluate: Callable[[dict[str, Any]], dict[str, Any]] = run_point,
) -> int:
    """Run every point of ``study`` not yet in ``results``; returns how many ran now.

    Locally with ``workers`` processes (default: one per core; 1 runs in this
    process), or on the Dask cluster at ``scheduler`` (``tcp://host:port``).
    ``evaluate`` makes each point's record (see ``run_chunk``).
    """
    todo = [p for p in study.points() if not results.done(point_key(p))]
    if not todo:
        return 0
    bar = progress_bar(len(todo), "pipesched sweep", "point", progress)
    done = 0

    def finished(records: list[dict[str, Any]]) -> None:
        nonlocal done
        results.extend(records)  # a task's lines in one write
        for record in records:
            if on_record:
                on_record(record)
            done += 1
            bar.update(1)

    try:
        if scheduler is not None:
            _on_dask(scheduler, todo, finished, evaluate)
        elif (workers or os.cpu_count() or 1) == 1:
            for point in todo:
                finished([evaluate(point)])
        else:
            _on_pool(workers or os.cpu_count() or 1, todo, finished, evaluate)
    finally:
        bar.close()
    return done


def _on_pool(
    workers: int,
    todo: list[dict[str, Any]],
    finished: Callable[[list[dict[str, Any]]], None],
    evaluate: Callable[[dict[str, Any]], dict[str, Any]] = run_point,
) -> None:
    import gc
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # Workers start from a fresh server process, not a fork of this one: a fork shares
    # every object this process made so far, and the workers' reference counting then
    # copies those pages one by one (measured: half the pool's speed after a long run).
    context: multiprocessing.context.BaseContext
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["pipesched.sweep"])  # the server imports once; workers fork ready
    else:
        context = multiprocessing.get_context("spawn")
    gc.collect()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    pending = {pool.submit(run_chunk, chunk, evaluate) for chunk in _chunks(todo, workers)}
    try:
        while pending:
            ready, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                finished(future.result())
    except BaseException:
        # Ctrl-C or SIGTERM: what finished is written; stop the workers now instead of
        # waiting for the chunks they hold (those points are the ones in flight, lost)
        for future in pending:
            future.cancel()
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _on_dask(
    address: str,
    todo: list[dict[str, Any]],
    finished: Callable[[list[dict[str, Any]]], None],
    evaluate: Callable[[dict[str, Any]], dict[str, Any]] = run_point,
) -> None:
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise ConfigError(
            "--scheduler needs Dask distributed, which is not installed; install it with pip install 'pipesched[dask]'"
        ) from None
    try:
        client = Client(address, timeout="5s")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"--scheduler {address}: no Dask scheduler answers there ({exc}); check the address"
        ) from None
    except Exception as exc:  # Dask's own failures while connecting, e.g. its event loop not starting
        raise ConfigError(
            f"--scheduler {address}: Dask could not connect ({type(exc).__name__}: {exc}); check the address and retry"
        ) from None
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        futures = [client.submit(run_chunk, chunk, evaluate, pure=False) for chunk in _chunks(todo, workers)]
        chunks = dict(zip(futures, _chunks(todo, workers)))
        for future in as_completed(futures):
            try:
                finished(future.result())
            except Exception as exc:  # a task lost for good: mark its points lost; a rerun retries them
                finished(
                    [
                        {
                            "key": point_key(p),
                            "point": p,
                            "ok": False,
                            "lost": True,
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                        for p in chunks[future]
                    ]
                )
    finally:
        client.close()


def pareto(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Pareto front of throughput (higher) against peak memory (lower), fastest first.

    A point is on it unless another is at least as fast, holds at most as
    much memory, and is better in one of the two. Points equal in both beat
    each other in neither, so all of them stay (in the order given).

    >>> pts = [{"throughput": 3, "peak_memory_bytes": 5}, {"throughput": 2, "peak_memory_bytes": 1},
    ...        {"throughput": 1, "peak_memory_bytes": 6}, {"throughput": 2, "peak_memory_bytes": 5}]
    >>> [(p["throughput"], p["peak_memory_bytes"]) for p in pareto(pts)]
    [(3, 5), (2, 1)]
    """
    front: list[dict[str, Any]] = []
    for r in sorted(records, key=lambda r: (-r["throughput"], r["peak_memory_bytes"])):
        # every point at least as fast comes before r, and the last one kept holds the least memory of
        # them: r is beaten unless it holds less, or equals that one in both
        last = front[-1] if front else None
        if (
            last is None
            or r["peak_memory_bytes"] < last["peak_memory_bytes"]
            or (r["peak_memory_bytes"] == last["peak_memory_bytes"] and r["throughput"] == last["throughput"])
        ):
            front.append(r)
    return front
