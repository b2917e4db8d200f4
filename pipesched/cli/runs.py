"""The commands that simulate: ``run`` (one step), ``compare`` (one row per strategy), ``train`` (SGD or Adam steps).

>>> from pipesched import RunConfig, run
>>> _transfers(run(RunConfig(cost="unit", compute=False)))
'48 over the links, free under --cost unit'
"""

from __future__ import annotations

import argparse
import operator
import sys
from typing import Any

from ..division import causes, describe_division
from ..hardware import describe
from ..optimizer import MLP_OPTIMIZER
from ..pipeline import AUTO, RunConfig, RunResult, auto_limit, compare, run, train, training_precision
from ..precision import MLP_DTYPE
from ..strategy import load_strategy
from ..trace import to_chrome
from ..units import count, format_bytes, format_rate, format_time
from .common import COMPARE_DEFAULT, _check_output_path, _config, _table, _write_atomic

__all__ = ["_cmd_run", "_cmd_compare", "_cmd_train"]


def _model(config: RunConfig) -> str:
    """The model a run ran: the MLP's widths, or a decoder and its sequence length."""
    if config.model is None:
        return f"layers {config.layers}"
    return f"model {config.model}, sequences of {config.seq_len} tokens"


def _devices(config: RunConfig) -> str:
    """The run's devices: K, or D replicas of K and their total (``pipesched.layout``), and T per stage."""
    if config.data_parallel == 1:
        text = count(config.devices, "device")
    else:
        text = (
            f"{config.data_parallel} data-parallel replicas of {count(config.devices, 'device')} "
            f"({config.devices * config.data_parallel} in all, device d·{config.data_parallel} + replica)"
        )
    if config.tensor_parallel == 1:
        return text
    sequence = " with sequence parallelism" if config.sequence_parallel else ""
    return (
        f"{text}, each a tensor-parallel group of {config.tensor_parallel}{sequence} "
        f"({config.devices * config.data_parallel * config.tensor_parallel} GPUs in all, one simulated per group)"
    )


def _cost(config: RunConfig) -> str:
    """The cost model a run used, with its times file under ``measured``."""
    return config.cost if config.times is None else f"{config.cost} ({config.times})"


def _print_run(result: RunResult) -> None:
    config, metrics, unit = result.config, result.metrics, result.trace.time_unit
    counts = ",".join(str(len(s)) for s in result.partition)
    chunks = f", {config.chunks} chunks per device" if config.chunks != 1 else ""
    print(
        f"{config.strategy}: {_devices(config)}{chunks}, {count(config.microbatches, 'micro-batch')}, "
        f"batch {config.batch}, {_model(config)} (partition {counts}), remat {config.remat}, cost {_cost(config)}"
        f"{_precision(config)}"
    )
    print()
    caveats = [
        "assumes equal unit-cost stages and free links" if config.cost != "unit" else "",
        "is stated for --remat never" if config.remat != "never" else "",
        "is stated for --overlap sum" if config.overlap != "sum" and result.schedule.overlaps else "",
    ]
    caveat = " and ".join(x for x in caveats if x)
    caveat = f" (the closed form {caveat})" if caveat else ""
    formula = (
        "no closed form stated" if result.bubble_formula is None else f"{result.bubble_formula:.4f} closed form{caveat}"
    )
    summary = [
        *([] if config.cost == "unit" else [("hardware", describe(config, training_precision(config)[0]))]),
        ("makespan", format_time(metrics.makespan, unit)),
        ("bubble fraction", f"{metrics.bubble_fraction:.4f} measured, {formula}"),
        (
            "back to back",
            f"{metrics.steady_bubble_fraction:.4f} bubble, steps {format_time(metrics.period, unit)} apart "
            "with no synchronising optimizer step between them",
        ),
        ("throughput", f"{format_rate(metrics.throughput)} samples/{'s' if unit == 's' else 'unit'}"),
        ("transfers", _transfers(result)),
        *([("memory", _oom(result))] if config.device_memory is not None else []),
        *([("memory division", _division(result))] if _division(result) else []),
        ("loss", "not computed (--no-compute)" if result.loss is None else f"{result.loss:.6f}"),
        (
            "grad rel. error",
            "not checked"
            if result.grad_rel_err is None
            else f"{result.grad_rel_err:.2e} against one unpartitioned full-batch pass",
        ),
    ]
    print(_table(summary))
    print()
    placement = result.schedule.placement()
    rows = [("device", "stages", "layers", "busy", "in flight", "peak activations", "peak memory")]
    for d in range(result.schedule.devices):  # every replica's devices (pipesched.layout)
        stages = [s for s, ds in placement.items() if d in ds]
        layers = ",".join(_span_of(result.partition[s]) for s in stages)
        rows.append(
            (
                str(d),
                ",".join(map(str, stages)),
                layers,
                format_time(metrics.busy[d], unit),
                str(metrics.peak_inflight_microbatches[d]),
                format_bytes(metrics.peak_activation_bytes[d]),
                format_bytes(metrics.peak_memory_bytes[d]),
            )
        )
    print(_table(rows))
    if result.balance is not None:
        bottleneck = format_time(result.balance.bottleneck, "s")
        sims = result.balance.simulated
        chosen = (
            ""
            if sims is None
            else (
                f", the fastest of {count(sims.candidates, 'partition')} simulated"
                + ("" if sims.uniform_makespan is None else f" (uniform {format_time(sims.uniform_makespan, unit)})")
            )
        )
        print(f"\nbalanced by {config.balance_by}: busiest device or link {bottleneck} per micro-batch{chosen}")
        from ..balance import Placement  # with the balance command's table: only a balanced run imports them
        from .tools import _balance_table

        print(_balance_table(result.balance, in_seconds=True, placement=Placement.of(result.schedule)))


def _division(result: RunResult) -> str:
    """The fullest device's shares under tensor and sequence parallelism and a sharded optimizer, or ''."""
    if not result.memory_division:
        return ""
    c = result.config
    fullest = result.metrics.peak_memory_bytes.index(max(result.metrics.peak_memory_bytes))
    why = causes(c.tensor_parallel, c.sequence_parallel, c.data_parallel, c.grad_sync)
    shares = describe_division(result.memory_division[fullest], why)
    return f"device {fullest} (the fullest) holds {shares}" if shares else ""


def _precision(config: RunConfig) -> str:
    """The training precision and optimizer for a heading, where they are not the MLP's own (fp64, sgd)."""
    dtype, optimizer = training_precision(config)
    return "" if (dtype, optimizer) == (MLP_DTYPE, MLP_OPTIMIZER) else f", {dtype} with {optimizer}"


def _span_of(layers: range) -> str:
    """A stage's layers as ``first-last``, or one number for a single layer."""
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


def _oom(result: RunResult) -> str:
    cap = result.config.device_memory or 0
    if result.trace.oom is None:
        return f"every device fits --device-memory {format_bytes(cap)}"
    device, sample = result.trace.oom
    return (
        f"OUT OF MEMORY: device {device} exceeds --device-memory {format_bytes(cap)} at "
        f"{format_time(sample.time, result.trace.time_unit)} "
        f"(peak {format_bytes(result.metrics.peak_memory_bytes[device])})"
    )


def _transfers(result: RunResult) -> str:
    moves = result.trace.transfers
    if not moves:
        return "none (every stage's neighbour is on the same device)"
    # by columns, not records: a large step moves a million messages; each in the same order as record by record
    total = sum(map(operator.sub, moves.column("arrival"), moves.column("start")))
    if total == 0:
        return f"{len(moves)} over the links, free under --cost {result.config.cost}"
    crossing = {pair for pair, (_, inter) in result.trace.links.items() if inter}
    pairs = zip(moves.column("src"), moves.column("dst"))
    between = sum(1 for pair in pairs if pair in crossing) if crossing else 0
    split = f" ({len(moves) - between} inside nodes, {between} between)" if between else ""
    return (
        f"{len(moves)} over the links{split}, {format_bytes(sum(moves.column('nbytes')))} in all, "
        f"{format_time(total / len(moves), result.trace.time_unit)} each on average"
    )


def _profiled(path: str, work: Any) -> Any:
    """Run ``work()`` under cProfile; write the stats to ``path`` and the 15 costliest calls to stderr."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(work)
    finally:
        profiler.dump_stats(path)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(15)


def _dumps(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON text: the json module loads for ``--json`` and ``--trace`` only (issue 20: start-up)."""
    import json

    return json.dumps(value, indent=indent)


def _cmd_run(args: argparse.Namespace) -> None:
    if args.trace is not None:
        _check_output_path("--trace", args.trace)
    if args.profile is not None:
        _check_output_path("--profile", args.profile, "run.prof")
    config = _config(args)
    strategy = config.strategy
    if isinstance(strategy, str) and strategy.endswith(".csv"):  # a schedule file: what reading it left out
        for note in getattr(load_strategy(strategy), "notes", []):
            print(f"pipesched: note: {note}", file=sys.stderr)
    result = _profiled(args.profile, lambda: run(config)) if args.profile else run(config)
    if args.trace:
        _write_atomic(args.trace, _dumps(to_chrome(result.trace)))
    if args.json:
        print(_dumps(result.to_dict(), indent=2))
    else:
        _print_run(result)
        if args.trace:
            print(f"\ntrace written to {args.trace} (open it in https://ui.perfetto.dev)")


def _cmd_compare(args: argparse.Namespace) -> None:
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    if args.schedule:
        names.append(args.schedule)

    def left_out(name: str, why: str) -> None:  # only the default list: a strategy asked for by name must run
        print(f"pipesched: note: {name} left out of the default comparison: {why}", file=sys.stderr)

    default = args.strategies == ",".join(COMPARE_DEFAULT)
    asked = _config(args)
    results = compare(asked, names, on_skip=left_out if default else None)
    if args.json:
        print(_dumps([result.to_dict() for result in results], indent=2))
        return
    config, unit = results[0].config, results[0].trace.time_unit
    # under a memory limit (--device-memory, or a preset's), whether each fits it: only --allow-oom lets one not fit
    capped: tuple[str, ...] = ("fits memory",) if config.device_memory is not None else ()
    # under --max-inflight (auto's limit), whether each holds as few micro-batches of a stage per device, the
    # stages of a device with several counting as their share (a V's two as halves)
    inflight = asked.max_inflight
    limited: tuple[str, ...] = (f"≤ {inflight} in flight",) if inflight is not None else ()
    print(
        f"{_devices(config)}, {count(config.microbatches, 'micro-batch')}, batch {config.batch}, "
        f"{_model(config)}, remat {config.remat}, cost {_cost(config)}{_precision(config)}"
    )
    print()
    rows: list[tuple[str, ...]] = [
        (
            "strategy",
            "chunks",
            "makespan",
            "bubble",
            "formula",
            "steady",
            "throughput",
            "peak act.",
            "peak mem.",
            "grad err",
        )
        + capped
        + limited
    ]
    for result in results:
        metrics = result.metrics
        rows.append(
            (
                str(result.config.strategy),  # compare runs each strategy by its name
                str(result.config.chunks),
                format_time(metrics.makespan, unit),
                f"{metrics.bubble_fraction:.4f}",
                "-" if result.bubble_formula is None else f"{result.bubble_formula:.4f}",
                f"{metrics.steady_bubble_fraction:.4f}",
                format_rate(metrics.throughput),
                format_bytes(max(metrics.peak_activation_bytes)),
                format_bytes(max(metrics.peak_memory_bytes)),
                "-" if result.grad_rel_err is None else f"{result.grad_rel_err:.1e}",
            )
            + (("no" if result.trace.oom else "yes",) if capped else ())
            + (("yes" if _within(result, inflight) else "no",) if inflight is not None else ())
        )
    print(_table(rows))
    print("\nper device (device 0 first): in-flight micro-batches | peak activations | peak memory")
    rows = [("strategy", "in flight", "peak activations", "peak memory")]
    for result in results:
        metrics = result.metrics
        rows.append(
            (
                str(result.config.strategy),
                "/".join(map(str, metrics.peak_inflight_microbatches)),
                " / ".join(format_bytes(b) for b in metrics.peak_activation_bytes),
                " / ".join(format_bytes(b) for b in metrics.peak_memory_bytes),
            )
        )
    print(_table(rows))
    print(
        "\nsteady: the bubble when steps run back to back, each device starting the next step as soon as it "
        "has finished this one\n(no synchronising optimizer step between them, as zero-bubble schedules assume)"
    )
    if config.cost != "unit":
        print("formula: the closed-form bubble under unit cost and free links, for reference")
    if any(str(result.config.strategy) == AUTO for result in results):
        print(f"auto: the fastest schedule pipesched search found for these costs, {auto_limit(asked)}")


def _within(result: RunResult, inflight: int) -> bool:
    """Whether ``result`` holds at most ``inflight`` micro-batches of a stage on every device (a device's
    stage-micro-batches over the stages it holds: a V's half-stages count as halves)."""
    return max(result.metrics.peak_inflight_microbatches) <= inflight * result.schedule.stages_per_device


def _cmd_train(args: argparse.Namespace) -> None:
    results = train(_config(args), steps=args.steps, lr=args.lr)
    if args.json:
        print(_dumps([result.to_dict() for result in results], indent=2))
        return
    rows = [("step", "loss", "grad rel. error")]
    for step, result in enumerate(results):
        err = "not checked" if result.grad_rel_err is None else f"{result.grad_rel_err:.2e}"
        rows.append((str(step), f"{result.loss:.6f}", err))
    print(_table(rows))
    print(f"\nloss {results[0].loss:.6f} -> {results[-1].loss:.6f} over {len(results)} steps")
