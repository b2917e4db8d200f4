"""The ``pipesched`` command: run, compare, train, strategies.

Bad input ends in one sentence on stderr and exit status 2, never a traceback.

    pipesched run --strategy gpipe --devices 4 --microbatches 8
    pipesched run --json --cost unit
    pipesched compare --strategies gpipe,1f1b,interleaved,zb-h1,dp
    pipesched train --steps 10
    pipesched strategies
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import signal
import tempfile
from dataclasses import replace
from typing import Any, Sequence

from . import __version__, formulas
from .cost import FlopsCost
from .model import layers_from_widths, parse_layers
from .errors import ConfigError, PipeschedError
from .balance import Balance, balance, chain_graph, evaluate
from .partition import uniform
from .pipeline import DEFAULT_LAYERS, RunConfig, RunResult, compare, model_graph, run, train
from .report.render import comparison_rows
from .units import count, format_bytes, format_rate, format_time, parse_bytes
from .strategy import available_strategies, load_strategy, make_plan
from .trace import to_chrome

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"pipesched: error: {message}\n")


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give e.g. 4") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give e.g. 1e12") from None


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--devices", type=_whole, help=f"K, pipeline devices (default {d.devices}, or a CSV schedule's ranks)")
    p.add_argument("--microbatches", type=_whole,
                   help=f"M, micro-batches per step (default {d.microbatches}, or a CSV schedule's)")
    p.add_argument("--chunks", type=_whole, help="v, model chunks per device (default: the strategy's, 2 for interleaved, else 1)")
    p.add_argument("--layers", default=DEFAULT_LAYERS, help="layer widths, WxN repeats (default %(default)s)")
    p.add_argument("--batch", type=_whole, default=d.batch, help="samples per step (default %(default)s)")
    p.add_argument(
        "--partition", default=d.partition,
        help="'uniform', 'balanced' (the bottleneck-optimal split) or layer counts per stage, e.g. 2,3,3,3",
    )
    p.add_argument("--balance-by", default=d.balance_by, help="layer costs for 'balanced': flops or measured")
    p.add_argument("--remat", default=d.remat, help="never, always or except_last (default %(default)s)")
    p.add_argument("--cost", default=d.cost, help="flops or unit (default %(default)s)")
    p.add_argument("--device-flops", type=_number, help="device FLOP/s for --cost flops (default 1e14)")
    p.add_argument("--link-bandwidth", type=_number, help="link bytes/s for --cost flops (default 1e11)")
    p.add_argument("--link-latency", type=_number, help="link latency in seconds for --cost flops (default 5e-6)")
    p.add_argument("--loss", default=d.loss, help="cross_entropy or mse (default %(default)s)")
    p.add_argument(
        "--device-memory", help="memory per device, e.g. 16GB (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB): more is an OOM"
    )
    p.add_argument("--allow-oom", action="store_true", help="report an OOM (oom: true) instead of stopping")
    p.add_argument("--no-compute", action="store_true", help="timing and memory from the cost model alone, no NumPy")
    p.add_argument("--no-reference", action="store_true", help="skip the full-batch reference pass")
    p.add_argument("--seed", type=_whole, default=d.seed, help="seed for weights and data (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipesched", description="Simulate pipeline-parallel training schedules.")
    parser.add_argument("--version", action="version", version=f"pipesched {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    strategy_help = "registered name or path/to/file.py:ClassName (default %(default)s)"
    p_run = sub.add_parser("run", help="simulate one training step and print its metrics")
    p_run.add_argument("--strategy", default=RunConfig.strategy, help=strategy_help)
    _add_run_flags(p_run)
    p_run.add_argument("--trace", metavar="FILE", help="write a Chrome trace (opens in Perfetto) to FILE")
    p_run.add_argument("--profile", metavar="FILE", help="profile the run with cProfile: stats to FILE, top 15 to stderr")
    p_run.add_argument("--schedule", metavar="FILE.csv", help="simulate a schedule in PyTorch's action CSV (as --strategy)")
    p_compare = sub.add_parser("compare", help="run several strategies on one configuration, one row each")
    p_compare.add_argument(
        "--strategies", default=",".join(COMPARE_DEFAULT), help="comma-separated strategies (default %(default)s)"
    )
    p_compare.add_argument("--schedule", metavar="FILE.csv", help="add a schedule in PyTorch's action CSV to the rows")
    _add_run_flags(p_compare)
    p_train = sub.add_parser("train", help="run several simulated steps with SGD and print the loss")
    p_train.add_argument("--strategy", default=RunConfig.strategy, help=strategy_help)
    _add_run_flags(p_train)
    p_train.add_argument("--steps", type=_whole, default=10, help="training steps (default %(default)s)")
    p_train.add_argument("--lr", type=_number, default=0.01, help="SGD learning rate (default %(default)s)")
    p_balance = sub.add_parser("balance", help="the partition whose slowest stage is fastest")
    p_balance.add_argument("--costs", help="plain per-layer costs, e.g. 5,1,1,1,1,1,1,5, instead of the model flags")
    p_balance.add_argument("--strategy", default=RunConfig.strategy, help="the strategy whose stages to balance")
    _add_run_flags(p_balance)
    p_report = sub.add_parser("report", help="run a study and write a report folder with one HTML page")
    p_report.add_argument("study", nargs="?", help="a study TOML file (default: the built-in study)")
    p_report.add_argument("-o", "--output", default="pipesched-report", help="the folder to write (default %(default)s)")
    p_sweep = sub.add_parser("sweep", help="run the product of a sweep file's axes, locally or on a Dask cluster")
    p_sweep.add_argument("study", help="the sweep file (TOML): [model], [axes], [constraints]")
    p_sweep.add_argument("-o", "--output", default="results.jsonl", help="JSON-lines results file (default %(default)s)")
    p_sweep.add_argument("--workers", type=_whole, help="local worker processes (default: one per core)")
    p_sweep.add_argument("--scheduler", help="a Dask distributed scheduler, tcp://HOST:PORT (pip install 'pipesched[dask]')")
    p_sweep.add_argument("--report", metavar="DIR", help="write heat maps and the Pareto plot to DIR")
    p_export = sub.add_parser("export", help="write a strategy's schedule in PyTorch's action format")
    p_export.add_argument("--strategy", default=RunConfig.strategy, help=strategy_help)
    p_export.add_argument("--devices", type=_whole, default=RunConfig.devices, help="K (default %(default)s)")
    p_export.add_argument("--microbatches", type=_whole, default=RunConfig.microbatches, help="M (default %(default)s)")
    p_export.add_argument("--chunks", type=_whole, help="v (default: the strategy's)")
    p_export.add_argument("--format", default="torch-csv", choices=("torch-csv", "text"),
                          help="torch-csv: one row per rank; text: the step-by-rank table (default %(default)s)")
    p_export.add_argument("-o", "--output", help="write to this file instead of standard output")
    p_formulas = sub.add_parser("formulas", help="the closed forms for a configuration")
    p_formulas.add_argument("--devices", type=_whole, default=RunConfig.devices, help="K (default %(default)s)")
    p_formulas.add_argument("--microbatches", type=_whole, default=RunConfig.microbatches, help="M (default %(default)s)")
    p_formulas.add_argument("--chunks", type=_whole, default=2, help="v for interleaved (default %(default)s)")
    p_formulas.add_argument("--layers", default=DEFAULT_LAYERS, help="the model, for the all-reduce time")
    p_formulas.add_argument("--link-bandwidth", type=_number, help="link bytes/s (default 1e11)")
    p_formulas.add_argument("--link-latency", type=_number, help="link latency in seconds (default 5e-6)")
    p_formulas.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_parser("strategies", help="list every strategy found, built-in and plug-in")
    return parser


#: The strategies ``pipesched compare`` runs unless told otherwise.
COMPARE_DEFAULT = ("gpipe", "1f1b", "interleaved", "zb-h1", "dp")


def _config(args: argparse.Namespace) -> RunConfig:
    if getattr(args, "schedule", None) and getattr(args, "strategy", RunConfig.strategy) != RunConfig.strategy:
        raise ConfigError("--schedule and --strategy both name what to run; give one of them")
    strategy = getattr(args, "schedule", None) or getattr(args, "strategy", RunConfig.strategy)
    devices, microbatches = args.devices, args.microbatches
    if strategy.endswith(".csv") and (devices is None or microbatches is None):
        schedule = load_strategy(strategy).plan  # a CSV's own size fills what the flags leave out
        file_schedule = schedule.__self__.schedule  # type: ignore[attr-defined]
        devices = file_schedule.devices if devices is None else devices
        microbatches = file_schedule.microbatches if microbatches is None else microbatches
    return RunConfig(
        layers=args.layers, batch=args.batch, microbatches=RunConfig.microbatches if microbatches is None else microbatches,
        devices=RunConfig.devices if devices is None else devices,
        chunks=args.chunks, strategy=strategy, partition=args.partition, remat=args.remat,
        cost=args.cost, device_flops=args.device_flops, link_bandwidth=args.link_bandwidth,
        link_latency=args.link_latency, loss=args.loss, compute=not args.no_compute,
        reference=not args.no_reference, seed=args.seed, balance_by=args.balance_by,
        device_memory=parse_bytes(args.device_memory) if args.device_memory else None, allow_oom=args.allow_oom,
    )


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart.

    >>> print(_table([("a", "bb"), ("ccc", "d")]))
    a    bb
    ccc  d
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _print_run(result: RunResult) -> None:
    config, metrics, unit = result.config, result.metrics, result.trace.time_unit
    counts = ",".join(str(len(s)) for s in result.partition)
    chunks = f", {config.chunks} chunks per device" if config.chunks != 1 else ""
    print(
        f"{config.strategy}: {count(config.devices, 'device')}{chunks}, {count(config.microbatches, 'micro-batch')}, "
        f"batch {config.batch}, layers {config.layers} (partition {counts}), remat {config.remat}, cost {config.cost}"
    )
    print()
    caveats = [
        "assumes equal unit-cost stages and free links" if config.cost != "unit" else "",
        "is stated for --remat never" if config.remat != "never" else "",
    ]
    caveat = " and ".join(x for x in caveats if x)
    caveat = f" (the closed form {caveat})" if caveat else ""
    formula = "no closed form stated" if result.bubble_formula is None else f"{result.bubble_formula:.4f} closed form{caveat}"
    summary = [
        ("makespan", format_time(metrics.makespan, unit)),
        ("bubble fraction", f"{metrics.bubble_fraction:.4f} measured, {formula}"),
        ("throughput", f"{format_rate(metrics.throughput)} samples/{'s' if unit == 's' else 'unit'}"),
        ("transfers", _transfers(result)),
        *([("memory", _oom(result))] if config.device_memory is not None else []),
        ("loss", "not computed (--no-compute)" if result.loss is None else f"{result.loss:.6f}"),
        ("grad rel. error", "not checked" if result.grad_rel_err is None else f"{result.grad_rel_err:.2e} against one unpartitioned full-batch pass"),
    ]
    print(_table(summary))
    print()
    placement = result.schedule.placement()
    rows = [("device", "stages", "layers", "busy", "in flight", "peak activations", "peak memory")]
    for d in range(config.devices):
        stages = [s for s, ds in placement.items() if d in ds]
        layers = ",".join(f"{result.partition[s][0]}-{result.partition[s][-1]}" for s in stages)
        rows.append((
            str(d), ",".join(map(str, stages)), layers, format_time(metrics.busy[d], unit),
            str(metrics.peak_inflight_microbatches[d]), format_bytes(metrics.peak_activation_bytes[d]), format_bytes(metrics.peak_memory_bytes[d]),
        ))
    print(_table(rows))
    if result.balance is not None:
        bottleneck = format_time(result.balance.bottleneck, "s")
        print(f"\nbalanced by {config.balance_by}: bottleneck {bottleneck} per micro-batch")
        print(_balance_table(result.balance, in_seconds=True))


def _balance_table(result: Balance, in_seconds: bool) -> str:
    """Per stage: its layers, cost (seconds for a model, plain for --costs) and memory."""
    rows = [("stage", "layers", "size", "cost", "memory")]
    for index, (stage, cost, memory) in enumerate(zip(result.stages, result.stage_costs, result.stage_memory)):
        rows.append((
            str(index), f"{stage[0]}-{stage[-1]}", str(len(stage)),
            format_time(cost, "s") if in_seconds else f"{cost:g}",
            format_bytes(int(memory)) if in_seconds else "-",
        ))
    return _table(rows)


def _oom(result: RunResult) -> str:
    cap = result.config.device_memory or 0
    if result.trace.oom is None:
        return f"every device fits --device-memory {format_bytes(cap)}"
    device, sample = result.trace.oom
    return (
        f"OUT OF MEMORY: device {device} exceeds --device-memory {format_bytes(cap)} at "
        f"{format_time(sample.time, result.trace.time_unit)} (peak {format_bytes(result.metrics.peak_memory_bytes[device])})"
    )


def _transfers(result: RunResult) -> str:
    moves = result.trace.transfers
    if not moves:
        return "none (every stage's neighbour is on the same device)"
    total = sum(t.arrival - t.start for t in moves)
    if total == 0:
        return f"{len(moves)} over the links, free under --cost {result.config.cost}"
    return (
        f"{len(moves)} over the links, {format_bytes(sum(t.nbytes for t in moves))} in all, "
        f"{format_time(total / len(moves), result.trace.time_unit)} each on average"
    )


def _check_output_path(flag: str, path: str) -> None:
    """Fail before any work unless ``path`` names a regular file that can be written, new or existing."""
    if not path:
        raise ConfigError(f"{flag} is empty; give a file path such as trace.json")
    real = os.path.realpath(path)  # write through a symbolic link, not over it
    folder = os.path.dirname(real)
    if os.path.isdir(real):
        raise ConfigError(f"{flag} {path} is a folder; give a file path such as {os.path.join(path, 'trace.json')}")
    if os.path.exists(real) and not os.path.isfile(real):
        raise ConfigError(f"{flag} {path} is not a regular file; give a path for an ordinary file")
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag} {path}: folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK) or (os.path.exists(real) and not os.access(real, os.W_OK)):
        raise ConfigError(f"{flag} {path} cannot be written; choose another path")


def _write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a failure never leaves a half-written file.

    The text goes to a temporary file beside the target, which then replaces it
    with the target's permissions (or the umask's, for a new file).
    """
    real = os.path.realpath(path)
    umask = os.umask(0)
    os.umask(umask)
    mode = os.stat(real).st_mode & 0o777 if os.path.exists(real) else 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(real), prefix=".pipesched-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        os.unlink(tmp)
        raise


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


def _cmd_run(args: argparse.Namespace) -> None:
    if args.trace is not None:
        _check_output_path("--trace", args.trace)
    if args.profile is not None:
        _check_output_path("--profile", args.profile)
    config = _config(args)
    for note in getattr(load_strategy(config.strategy), "notes", []) if config.strategy.endswith(".csv") else []:
        print(f"pipesched: note: {note}", file=sys.stderr)
    result = _profiled(args.profile, lambda: run(config)) if args.profile else run(config)
    if args.trace:
        _write_atomic(args.trace, json.dumps(to_chrome(result.trace)))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_run(result)
        if args.trace:
            print(f"\ntrace written to {args.trace} (open it in https://ui.perfetto.dev)")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from .sweep import Results, load_sweep, pareto, point_key, sweep

    study = load_sweep(args.study)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers} is not allowed; use 1 or more")
    _check_output_path("-o", args.output)
    lock = os.open(args.output, os.O_RDWR | os.O_CREAT, 0o644)  # held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"-o {args.output} is being written by another sweep; wait for it or give another file") from None
    if args.report and os.path.isdir(args.report) and os.listdir(args.report) and not _is_sweep_report(args.report):
        raise ConfigError(f"--report {args.report} is a folder with other files in it; give a new folder")
    results = Results(args.output)
    points = list(study.points())

    def stop(signum: int, frame: Any) -> None:  # SIGTERM stops like Ctrl-C: whole lines kept, pool shut
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    before = sum(results.done(point_key(p)) for p in points)
    ran = sweep(study, results, workers=args.workers, scheduler=args.scheduler)
    mine = [results.records[point_key(p)] for p in points if point_key(p) in results.records]
    ok = [r for r in mine if r.get("ok") and not r.get("oom")]
    failed = [r for r in mine if not r.get("ok")]
    print(f"{len(points)} points: {ran} run now, {before} already in {args.output}; "
          f"{len(failed)} failed, {sum(bool(r.get('oom')) for r in mine)} out of memory")
    if not ok:
        print("no point ran without an error or an OOM; see the error of each in the results file")
        return
    rows = [("", "throughput", "peak memory", "bubble", "configuration")]
    best_speed = max(ok, key=lambda r: r["throughput"])
    best_memory = min(ok, key=lambda r: (r["peak_memory_bytes"], -r["throughput"]))
    front = pareto(ok)
    for label, r in [("fastest", best_speed), ("leanest", best_memory)] + [("pareto", r) for r in front]:
        rows.append((label, format_rate(r["throughput"]), format_bytes(r["peak_memory_bytes"]),
                     f"{r['bubble_fraction']:.4f}", _describe_point(r["point"])))
    print(_table(rows))
    if args.report:
        path = _sweep_report(args.report, mine, front)
        print(f"\nheat maps and Pareto plot written to {path}")


def _describe_point(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(point.items()) if k not in ("layers", "compute"))


def _is_sweep_report(folder: str) -> bool:
    return set(os.listdir(folder)) <= {"heatmaps.png", "pareto.png", "summary.md"}


def _sweep_report(folder: str, records: list[dict[str, Any]], front: list[dict[str, Any]]) -> str:
    from .report.figures import sweep_heatmaps, sweep_pareto
    from .report.render import write_folder

    import matplotlib.pyplot as plt

    def fill(work: str) -> None:
        for name, fig in (("heatmaps", sweep_heatmaps(records)), ("pareto", sweep_pareto(records, front))):
            fig.savefig(os.path.join(work, f"{name}.png"), dpi=110, metadata={"Software": None})
            plt.close(fig)
        with open(os.path.join(work, "summary.md"), "w", encoding="utf-8") as f:
            f.write("# Sweep\n\n![heat maps](heatmaps.png)\n\n![Pareto front](pareto.png)\n\n"
                    + "".join(f"- {_describe_point(r['point'])}: {format_rate(r['throughput'])} samples per time "
                              f"unit, {format_bytes(r['peak_memory_bytes'])}\n" for r in front))

    return write_folder(folder, fill)


def _cmd_export(args: argparse.Namespace) -> None:
    from .exchange import to_torch_csv

    for flag, value in (("--devices", args.devices), ("--microbatches", args.microbatches), ("--chunks", args.chunks)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; use 1 or more")
    if args.output is not None:
        _check_output_path("-o", args.output)
    strategy = load_strategy(args.strategy)
    chunks = args.chunks or getattr(strategy, "default_chunks", 1)
    schedule = make_plan(strategy, args.devices, args.microbatches, chunks)
    text = to_torch_csv(schedule) if args.format == "torch-csv" else schedule.table() + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write_atomic(args.output, text)
        print(f"{args.format} schedule of {strategy.name} ({count(args.devices, 'rank')}, "
              f"{count(args.microbatches, 'micro-batch')}) written to {args.output}")


def _cmd_compare(args: argparse.Namespace) -> None:
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    if args.schedule:
        names.append(args.schedule)
    results = compare(_config(args), names)
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
        return
    config, unit = results[0].config, results[0].trace.time_unit
    print(
        f"{count(config.devices, 'device')}, {count(config.microbatches, 'micro-batch')}, batch {config.batch}, "
        f"layers {config.layers}, remat {config.remat}, cost {config.cost}"
    )
    print()
    rows = [("strategy", "chunks", "makespan", "bubble", "formula", "throughput", "peak act.", "peak mem.", "grad err")]
    for result in results:
        metrics = result.metrics
        rows.append((
            result.config.strategy, str(result.config.chunks), format_time(metrics.makespan, unit), f"{metrics.bubble_fraction:.4f}",
            "-" if result.bubble_formula is None else f"{result.bubble_formula:.4f}", format_rate(metrics.throughput),
            format_bytes(max(metrics.peak_activation_bytes)), format_bytes(max(metrics.peak_memory_bytes)),
            "-" if result.grad_rel_err is None else f"{result.grad_rel_err:.1e}",
        ))
    print(_table(rows))
    print("\nper device (device 0 first): in-flight micro-batches | peak activations | peak memory")
    rows = [("strategy", "in flight", "peak activations", "peak memory")]
    for result in results:
        metrics = result.metrics
        rows.append((
            result.config.strategy, "/".join(map(str, metrics.peak_inflight_microbatches)),
            " / ".join(format_bytes(b) for b in metrics.peak_activation_bytes),
            " / ".join(format_bytes(b) for b in metrics.peak_memory_bytes),
        ))
    print(_table(rows))
    if config.cost != "unit":
        print("\nformula: the closed-form bubble under unit cost and free links, for reference")


def _cmd_train(args: argparse.Namespace) -> None:
    results = train(_config(args), steps=args.steps, lr=args.lr)
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
        return
    rows = [("step", "loss", "grad rel. error")]
    for step, result in enumerate(results):
        err = "not checked" if result.grad_rel_err is None else f"{result.grad_rel_err:.2e}"
        rows.append((str(step), f"{result.loss:.6f}", err))
    print(_table(rows))
    print(f"\nloss {results[0].loss:.6f} -> {results[-1].loss:.6f} over {len(results)} steps")


def _cmd_balance(args: argparse.Namespace) -> None:
    config = _config(args)
    cap = config.device_memory
    if args.costs is not None:
        try:
            costs = [float(c) for c in args.costs.split(",")]
        except ValueError:
            raise ConfigError(f"--costs {args.costs!r} is not a list of numbers; write e.g. 5,1,1,1,1,1,1,5") from None
        if config.devices < 1:
            raise ConfigError(f"--devices {config.devices} is not allowed; use 1 or more")
        graph, links, stages = chain_graph(costs), {}, config.devices * (config.chunks or 1)
    else:
        strategy = load_strategy(config.strategy)
        chunks = config.chunks or getattr(strategy, "default_chunks", 1)
        stages = make_plan(strategy, config.devices, config.microbatches, chunks).num_stages
        graph, links = model_graph(config)
    result = balance(graph, stages, memory_cap=cap, **links)
    uniform_sizes = [len(r) for r in uniform(graph.number_of_nodes(), stages)]
    baseline = evaluate(graph, uniform_sizes, **links)
    if args.json:
        data = {**result.to_dict(), "uniform": baseline.to_dict()}
        if args.costs is not None:  # plain costs carry no memory: say unknown, not zero
            data["stage_memory"] = data["uniform"]["stage_memory"] = None
        print(json.dumps(data, indent=2))
        return
    seconds = args.costs is None
    what = "--costs" if not seconds else f"layers {config.layers}, batch {config.batch}, by {config.balance_by}"
    print(f"{graph.number_of_nodes()} layers into {stages} stages ({what})\n")
    print(_balance_table(result, in_seconds=seconds))
    show = (lambda v: format_time(v, "s")) if seconds else (lambda v: f"{v:g}")
    print(f"\nbottleneck {show(result.bottleneck)}; uniform {','.join(map(str, uniform_sizes))} gives "
          f"{show(baseline.bottleneck)}")


def _cmd_formulas(args: argparse.Namespace) -> None:
    k, m, v = args.devices, args.microbatches, args.chunks
    for flag, value in (("--devices", k), ("--microbatches", m), ("--chunks", v)):
        if value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; use 1 or more")
    links = FlopsCost(**{name: value for name, value in (("link_bandwidth", args.link_bandwidth),
                                                         ("link_latency", args.link_latency)) if value is not None})
    params = sum(layer.param_count for layer in layers_from_widths(parse_layers(args.layers))) * 8
    allreduce = formulas.ring_allreduce_time(k, params, links.link_bandwidth, links.link_latency)
    rows_out = {}
    for name, form in formulas.CLOSED_FORMS.items():
        chunks = v if name == "interleaved" else 1
        rows_out[name] = {
            "bubble": form.bubble(k, m, chunks), "bubble_formula": form.bubble_text,
            "peak_inflight_microbatches": [form.inflight(k, m, chunks, d) for d in range(k)],
            "inflight_formula": form.inflight_text, "source": form.source,
        }
    speedup = formulas.pipeline_speedup(k, m)
    if args.json:
        print(json.dumps({"devices": k, "microbatches": m, "chunks": v, "strategies": rows_out,
                          "pipeline_speedup": speedup, "allreduce_bytes": params, "allreduce_time": allreduce},
                         indent=2))
        return
    print(f"K={k} devices, M={m} micro-batches, v={v} chunks for interleaved; bubble under unit cost\n")
    table = [("strategy", "bubble", "formula", "peak in flight", "formula", "source")]
    for name, row in rows_out.items():
        bubble = "-" if row["bubble"] is None else f"{row['bubble']:.4f}"
        table.append((name, bubble, row["bubble_formula"], "/".join(map(str, row["peak_inflight_microbatches"])),
                      row["inflight_formula"], row["source"]))
    print(_table(table))
    print(f"\npipeline speedup over one device, K/(1+(K-1)/M): {speedup:.4f}")
    print(f"ring all-reduce of {format_bytes(params)} of gradients (--layers {args.layers}) over {k} devices, "
          f"2(K-1)/K*bytes/bandwidth + 2(K-1)*latency: {format_time(allreduce, 's')}")
    print("bubble = idle share of K x makespan; Megatron's bubble/ideal ratio r is the fraction r/(1+r)")


def _cmd_report(args: argparse.Namespace) -> None:
    from .report import collect, default_study, load_study, write_report
    from .report.render import is_report
    from .report.study import SCHEMA_EXAMPLE

    if args.study:
        study = load_study(args.study)
        with open(args.study, encoding="utf-8") as f:
            text = f.read()
    else:
        study, text = default_study(), SCHEMA_EXAMPLE
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ConfigError(f"-o {args.output} is a file; give a folder to write the report into")
    if os.path.isdir(args.output) and os.listdir(args.output) and not is_report(args.output):
        raise ConfigError(
            f"-o {args.output} is a folder with other files in it, and a report replaces its folder whole; "
            "give a new folder, or an earlier report's"
        )
    try:
        results = collect(study)
    except PipeschedError as exc:  # a run the study asks for cannot be made: say which file asked
        raise type(exc)(f"{args.study or 'the built-in study'}: {exc}") from exc
    page = write_report(results, args.output, text)
    rows = [("strategy", "partition", "step", "bubble", "peak memory")]
    for cells in comparison_rows(results):
        rows.append((cells[0], cells[1], cells[3], cells[4], cells[8]))
    print(_table(rows))
    print(f"\nreport written to {page} (open it in a browser; report.md and figures/ beside it)")


def _cmd_strategies(args: argparse.Namespace) -> None:
    rows = [("name", "source", "description")]
    for name, source in available_strategies().items():
        try:
            doc = (type(load_strategy(name)).__doc__ or "").strip().splitlines()[0]
        except PipeschedError as exc:
            doc = f"fails to load: {exc}"
        rows.append((name, source, doc))
    print(_table(rows))
    print("\nany path/to/file.py:ClassName works too")


_COMMANDS: dict[str, Any] = {
    "run": _cmd_run, "compare": _cmd_compare, "train": _cmd_train, "balance": _cmd_balance,
    "formulas": _cmd_formulas, "report": _cmd_report, "export": _cmd_export, "sweep": _cmd_sweep,
    "strategies": _cmd_strategies,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipesched`` command; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one line (or --help)
        return int(exc.code or 0)
    try:
        _COMMANDS[args.command](args)
    except PipeschedError as exc:
        print(f"pipesched: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into head: not an error of the user's
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        print(f"pipesched: error: {exc.strerror or exc} ({exc.filename}); check the path and permissions", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            "pipesched: error: the model and data do not fit in this machine's memory; "
            "use --no-compute, or fewer or narrower --layers, or a smaller --batch",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
