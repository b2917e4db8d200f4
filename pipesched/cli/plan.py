"""``pipesched plan``: the best layouts of a decoder on N GPUs, the Pareto front, and why the best wins.

>>> _share(0.25)
'25.0%'
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from ..units import format_bytes, parse_bytes
from .common import _table

if TYPE_CHECKING:  # the planner and its sweep machinery load when `plan` runs, not when the CLI starts
    from ..plan import Plan

__all__ = ["_cmd_plan", "add_plan_flags"]

#: Configurations the table shows unless --top says otherwise.
TOP = 10


def add_plan_flags(p: Any, whole: Any, model_help: str) -> None:
    """The ``plan`` command's flags (``whole``: the parser's whole-number type)."""
    p.add_argument("--gpus", type=whole, required=True, help="N: every GPU of the cluster")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--hardware", required=True, help="a device preset or a .toml file of one: its peak, memory, links")
    p.add_argument("--global-batch", type=whole, required=True, help="B: sequences per step, over all replicas")
    p.add_argument("--micro-batch-size", type=whole, required=True, help="b: sequences per micro-batch")
    p.add_argument("--seq-len", type=whole, help="tokens per sequence (default: the model's context length)")
    p.add_argument("--device-memory", help="memory per device, e.g. 40GB (default: the preset's)")
    p.add_argument("--data-parallel", type=whole, help="fix D instead of trying every divisor of N")
    p.add_argument("--tensor-parallel", type=whole, help="fix T instead of every divisor of the heads up to a node")
    p.add_argument("--devices", type=whole, help="fix K, the pipeline's devices")
    p.add_argument(
        "--sequence-parallel", action="store_true", help="every T > 1 configuration with sequence parallelism"
    )
    p.add_argument("--top", type=whole, default=TOP, help="configurations in the table (default %(default)s)")
    p.add_argument("-o", "--output", help="JSON-lines results file to append to and resume from (default: none)")
    p.add_argument("--workers", type=whole, help="local worker processes (default: one per core)")
    p.add_argument("--scheduler", help="a Dask distributed scheduler, tcp://HOST:PORT (pip install 'pipesched[dask]')")
    p.add_argument("--report", metavar="DIR", help="write the Pareto plot of throughput against memory to DIR")
    p.add_argument("--json", action="store_true", help="print a JSON list of configurations, best first")


def _share(value: float) -> str:
    return f"{100 * value:.1f}%"


def _layout(point: dict[str, Any], twins: list[dict[str, Any]] | None = None) -> str:
    """A configuration in one line; ``twins``: the same layout under other schedules with the same step."""

    def schedule(p: dict[str, Any]) -> str:
        return p["strategy"] + (f" v={p['chunks']}" if p.get("chunks") else "")

    sp = "+SP" if point.get("sequence_parallel") else ""
    names = " = ".join(schedule(p) for p in [point, *(twins or [])])
    return (
        f"D={point['data_parallel']} T={point['tensor_parallel']}{sp} K={point['devices']} M={point['microbatches']} "
        f"{names} remat={point['remat']} {point['grad_sync']}"
    )


def _twins(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records in groups: a layout under several schedules whose steps are the same (same tokens/s, bubble
    and peak memory: with one pipeline device every schedule is gradient accumulation), one row each."""
    groups: list[list[dict[str, Any]]] = []
    for r in records:
        last = groups[-1][0] if groups else None
        same = last is not None and all(
            last[key] == r[key] for key in ("tokens_per_second", "bubble_fraction", "peak_memory_bytes")
        )
        fields = ("data_parallel", "tensor_parallel", "devices", "remat", "grad_sync", "sequence_parallel")
        if same and all(last["point"].get(f) == r["point"].get(f) for f in fields):  # type: ignore[index]
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _rows(groups: list[list[dict[str, Any]]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("#", "tokens/s", "MFU", "bubble", "comm", "peak memory", "configuration")]
    for i, (r, *twins) in enumerate(groups, start=1):
        rows.append(
            (
                str(i),
                f"{r['tokens_per_second']:.4g}",
                _share(r["mfu"]),
                _share(r["bubble_fraction"]),
                _share(r["communication_share"]),
                format_bytes(r["peak_memory_bytes"]),
                _layout(r["point"], [t["point"] for t in twins]),
            )
        )
    return rows


def _why(best: dict[str, Any], runner_up: dict[str, Any] | None) -> str:
    """Why the top configuration wins: its bubble, its exposed communication, its memory headroom."""
    if runner_up is None:
        lead = "the only configuration that fits"
    else:
        gain = best["tokens_per_second"] / runner_up["tokens_per_second"] - 1
        leaner = runner_up["peak_memory_bytes"] - best["peak_memory_bytes"]
        if gain < 5e-4 and leaner > 0:  # what a table of four digits shows as a tie: memory decides
            close = "" if gain == 0 else " to within 0.05%"
            lead = f"as fast as #2{close} and {format_bytes(leaner)} leaner"
        else:
            lead = f"{gain:.2%} faster than #2"
    return (
        f"why #1 wins ({lead}): its devices idle {_share(best['bubble_fraction'])} of the step (bubble), links "
        f"carry data while no device computes for {_share(best['communication_share'])} of it (exposed "
        f"communication), and its fullest device keeps {format_bytes(best['headroom_bytes'])} of "
        f"{format_bytes(best['device_memory'])} free"
    )


def _summary(p: Plan) -> str:
    oom = p.out_of_memory
    worst = min(oom, key=lambda r: r["overshoot_bytes"]) if oom else None
    lines = [
        f"{len(p.records)} configurations: {len(p.ranked)} fit, {len(oom)} out of memory "
        f"({p.skipped} of them by weights and optimizer state alone, not simulated), {len(p.failed)} cannot run; "
        f"{p.layouts} layouts, each simulated once for both gradient synchronisations, {p.simulated} of them now"
    ]
    if worst is not None:
        lines.append(
            f"the closest to fitting of those is over by {format_bytes(worst['overshoot_bytes'])}: "
            f"{_layout(worst['point'])}"
        )
    return "\n".join(lines)


def _report(folder: str, p: Plan) -> str:
    import matplotlib.pyplot as plt

    from ..report.render import write_folder
    from ..report.sweep_figures import sweep_pareto

    def fill(work: str) -> None:
        fig = sweep_pareto(p.ranked, p.front, metric="tokens_per_second", unit="tokens/s")
        fig.savefig(os.path.join(work, "pareto.png"), dpi=110, metadata={"Software": None})
        plt.close(fig)
        with open(os.path.join(work, "summary.md"), "w", encoding="utf-8") as f:
            f.write(
                "# Plan\n\n![Pareto front](pareto.png)\n\n"
                + "".join(
                    f"- {_layout(r['point'], [t['point'] for t in twins])}: {r['tokens_per_second']:.4g} tokens/s, "
                    f"{format_bytes(r['peak_memory_bytes'])}\n"
                    for r, *twins in _twins(p.front)
                )
            )

    return write_folder(folder, fill)


def _cmd_plan(args: argparse.Namespace) -> None:
    from ..plan import Cluster, plan
    from .studies import _check_report_folder, _lock_results, _stop_on_sigterm

    cluster = Cluster(
        gpus=args.gpus,
        model=args.model,
        hardware=args.hardware,
        global_batch=args.global_batch,
        micro_batch_size=args.micro_batch_size,
        seq_len=args.seq_len,
        device_memory=parse_bytes(args.device_memory) if args.device_memory else None,
        data_parallel=args.data_parallel,
        tensor_parallel=args.tensor_parallel,
        devices=args.devices,
        sequence_parallel=args.sequence_parallel,
    )
    if args.output is not None:
        _lock_results(args.output)
    _check_report_folder(args.report)
    _stop_on_sigterm()
    result = plan(cluster, args.output, args.workers, args.scheduler, progress=not args.json)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        groups = _twins(result.ranked)
        print(_summary(result))
        print(f"\nthe best {min(args.top, len(groups))} by throughput:")
        print(_table(_rows(groups[: args.top])))
        print("\nPareto front of throughput against peak memory:")
        print(_table(_rows(_twins(result.front))))
        print("\n" + _why(groups[0][0], groups[1][0] if len(groups) > 1 else None))
    if args.report:
        path = _report(args.report, result)
        if not args.json:
            print(f"\nPareto plot written to {path}")
