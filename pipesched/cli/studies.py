"""The commands that run many simulations: ``report`` (a study as a page) and ``sweep`` (a design space).

>>> _describe_point({"devices": 4, "layers": "8x9", "strategy": "gpipe"})
'devices=4 strategy=gpipe'
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import signal
import sys
from typing import Any

from ..errors import ConfigError, PipeschedError
from ..pipeline import AUTO
from ..report.render import COLUMNS, comparison_rows
from ..units import format_bytes, format_rate
from .common import _check_output_folder, _check_output_path, _table

__all__ = ["_cmd_report", "_cmd_sweep"]


def _cmd_report(args: argparse.Namespace) -> None:
    from ..report import collect, default_study, load_study, write_report
    from ..report.render import is_report
    from ..report.study import SCHEMA_EXAMPLE

    if args.study:
        study = load_study(args.study)
        with open(args.study, encoding="utf-8") as f:
            text = f.read()
    else:
        study, text = default_study(), SCHEMA_EXAMPLE
    _check_output_folder("-o", args.output)
    if os.path.isdir(args.output) and os.listdir(args.output) and not is_report(args.output):
        raise ConfigError(
            f"-o {args.output} is a folder with other files in it, and a report replaces its folder whole; "
            "give a new folder, or an earlier report's"
        )
    try:
        results = collect(study)
    except PipeschedError as exc:  # a run the study asks for cannot be made: say which file asked
        raise type(exc)(f"{args.study or 'the built-in study'}: {exc}") from exc
    if AUTO in results.notes:  # the default list left auto out, as compare's does: say why
        print(f"pipesched: note: {results.notes[AUTO]}", file=sys.stderr)
    page = write_report(results, args.output, text, study_path=args.study)
    shown = ("strategy", "partition", "step", "bubble", "back to back", "peak memory")
    rows = [shown] + [tuple(row[COLUMNS.index(c)] for c in shown) for row in comparison_rows(results)]
    print(_table(rows))
    print(f"\nreport written to {page} (open it in a browser; report.md and figures/ beside it)")


def _cmd_sweep(args: argparse.Namespace) -> int | None:
    from ..sweep import Results, load_sweep, pareto, point_key, sweep

    study = load_sweep(args.study)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers} is not allowed; use 1 or more")
    _lock_results(args.output)
    _check_report_folder(args.report)
    results = Results(args.output)
    points = list(study.points())
    _stop_on_sigterm()
    before = sum(results.done(point_key(p)) for p in points)
    ran = sweep(study, results, workers=args.workers, scheduler=args.scheduler)
    mine = [results.records[point_key(p)] for p in points if point_key(p) in results.records]
    ok = [r for r in mine if r.get("ok") and not r.get("oom")]
    failed = [r for r in mine if not r.get("ok")]
    print(
        f"{len(points)} points: {ran} run now, {before} already in {args.output}; "
        f"{len(failed)} failed, {sum(bool(r.get('oom')) for r in mine)} out of memory"
    )
    if not ok:
        if failed:
            print("\n" + _failure_summary(failed))
        if len(failed) == len(mine):
            print(
                f"pipesched: error: every point of {args.study} failed, for the reasons above; fix the values they "
                f"name (each point's error is in {args.output})",
                file=sys.stderr,
            )
            return 1  # ran, but nothing came of it: not bad input (2), and a script must not read it as success
        print("no point ran without an error or an OOM; see the error of each in the results file")
        return None
    rows = [("", "throughput", "peak memory", "bubble", "configuration")]
    best_speed = max(ok, key=lambda r: r["throughput"])
    best_memory = min(ok, key=lambda r: (r["peak_memory_bytes"], -r["throughput"]))
    front = pareto(ok)
    for label, r in [("fastest", best_speed), ("leanest", best_memory)] + [("pareto", r) for r in front]:
        rows.append(
            (
                label,
                format_rate(r["throughput"]),
                format_bytes(r["peak_memory_bytes"]),
                f"{r['bubble_fraction']:.4f}",
                _describe_point(r["point"]),
            )
        )
    print(_table(rows))
    if args.report:
        path = _sweep_report(args.report, mine, front)
        print(f"\nheat maps and Pareto plot written to {path}")
    return None


def _lock_results(path: str) -> None:
    """Check the results file ``-o`` and lock it for this process, so that one sweep or plan writes it at a time."""
    _check_output_path("-o", path, "results.jsonl")
    lock = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"-o {path} is being written by another sweep; wait for it or give another file") from None


def _check_report_folder(folder: str | None) -> None:
    """``--report DIR`` can be written and holds nothing but an earlier sweep's or plan's figures."""
    if folder is None:
        return
    _check_output_folder("--report", folder)
    if folder and os.path.isdir(folder) and os.listdir(folder) and not _is_sweep_report(folder):
        raise ConfigError(f"--report {folder} is a folder with other files in it; give a new folder")


def _stop_on_sigterm() -> None:
    """SIGTERM stops like Ctrl-C: whole lines kept in the results file, the pool shut."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _failure_summary(failed: list[dict[str, Any]]) -> str:
    """The errors of failed points, grouped by reason (numbers aside), the most frequent first.

    >>> print(_failure_summary([{"point": {"devices": d}, "error": f"{d} devices are too many"} for d in (7, 9)]
    ...                        + [{"point": {"devices": 2}, "error": "unknown"}]))
    why the points failed (number of points, an example):
    2  devices=7: 7 devices are too many
    1  devices=2: unknown
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in failed:
        groups.setdefault(re.sub(r"\d+(\.\d+)?", "#", record["error"]), []).append(record)
    rows = sorted(groups.values(), key=lambda g: -len(g))  # stable: ties keep the sweep's order
    return "why the points failed (number of points, an example):\n" + _table(
        [(str(len(g)), f"{_describe_point(g[0]['point'])}: {g[0]['error']}") for g in rows]
    )


def _describe_point(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(point.items()) if k not in ("layers", "compute"))


def _is_sweep_report(folder: str) -> bool:
    return set(os.listdir(folder)) <= {"heatmaps.png", "pareto.png", "summary.md"}


def _sweep_report(folder: str, records: list[dict[str, Any]], front: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    from ..report.render import write_folder
    from ..report.sweep_figures import sweep_heatmaps, sweep_pareto

    def fill(work: str) -> None:
        for name, fig in (("heatmaps", sweep_heatmaps(records)), ("pareto", sweep_pareto(records, front))):
            fig.savefig(os.path.join(work, f"{name}.png"), dpi=110, metadata={"Software": None})
            plt.close(fig)
        with open(os.path.join(work, "summary.md"), "w", encoding="utf-8") as f:
            f.write(
                "# Sweep\n\n![heat maps](heatmaps.png)\n\n![Pareto front](pareto.png)\n\n"
                + "".join(
                    f"- {_describe_point(r['point'])}: {format_rate(r['throughput'])} samples per time "
                    f"unit, {format_bytes(r['peak_memory_bytes'])}\n"
                    for r in front
                )
            )

    return write_folder(folder, fill)
