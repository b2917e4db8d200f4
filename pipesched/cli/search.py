"""``pipesched search``: the fastest schedule found for a configuration's costs and an in-flight limit.

The search (``pipesched.search.synthesise``) times its candidates with the
fast evaluator; the schedule it keeps then runs once through the engine, as
``pipesched run`` would run it, for the step's period, memory and gradient
check.

>>> from pipesched.cli import main
>>> main(["search", "--devices", "2", "--microbatches", "2", "--max-inflight", "0"])  # one sentence on stderr
2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from ..units import format_bytes, format_time
from .common import _check_output_path, _config, _table, _write_atomic

__all__ = ["_cmd_search", "add_search_flags"]


def add_search_flags(p: Any, whole: Any, add_run_flags: Any) -> None:
    """The ``search`` command's flags: ``run``'s, the in-flight limit, the output file."""
    add_run_flags(p)  # --max-inflight among them
    p.add_argument(
        "--time-limit",
        type=float,
        default=2.0,
        help="the exact solver's limit in CP-SAT's deterministic work units, the same on every machine; their wall "
        "time varies with the model (default %(default)s)",
    )
    p.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="solve exactly with OR-Tools CP-SAT (default: for K <= 4 and M <= 8)",
    )
    p.add_argument(
        "--back-to-back",
        action="store_true",
        help="minimise the period of steps run back to back (no optimizer barrier between them, as the Zero "
        "Bubble paper runs them) instead of one step's makespan",
    )
    p.add_argument("-o", "--output", metavar="FILE.csv", help="write the schedule in PyTorch's action CSV")


def _cmd_search(args: argparse.Namespace) -> None:
    from ..exchange import to_torch_csv
    from ..pipeline import run
    from ..search import Fixed
    from ..search.configured import find

    if args.output is not None:
        _check_output_path("-o", args.output, "schedule.csv")
    config = _config(args)
    outcome = find(config, args.time_limit, args.exact, "period" if args.back_to_back else "makespan")
    found = outcome.found
    result = run(replace(config, strategy=Fixed(found.schedule), chunks=outcome.held, max_inflight=None))
    if args.output is not None:
        _write_atomic(args.output, to_torch_csv(found.schedule))
    m = result.metrics
    data = {
        "makespan": m.makespan,
        "period": m.period,
        "bubble_fraction": m.bubble_fraction,
        "steady_bubble_fraction": m.steady_bubble_fraction,
        "lower_bound": found.bound.value,
        "lower_bound_reason": found.bound.reason,
        "gap": found.gap,
        "optimal": found.optimal,
        "method": found.method,
        "objective": found.objective,
        "max_inflight": None if outcome.limit is None else outcome.limit[0] // outcome.held,
        "stages_per_device": outcome.held,
        "peak_inflight_microbatches": m.peak_inflight_microbatches,
        "peak_memory_bytes": m.peak_memory_bytes,
        "grad_rel_err": result.grad_rel_err,
        "candidates": found.candidates,
        "time_unit": result.trace.time_unit,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return
    unit = result.trace.time_unit
    held = "micro-batches" if outcome.held == 1 else "stage-micro-batches"
    if found.optimal:
        proof = f"optimal: the {'makespan' if found.objective == 'makespan' else 'period'} equals the lower bound"
    elif found.gap >= 5e-5:
        proof = f"within {found.gap:.2%} of it"
    else:  # the solver's integer times are rounded down to 1e-7 of the longest action
        proof = f"within {found.gap:.1e} of it (the round-off of the solver's integer times)"
    step = [("makespan", format_time(m.makespan, unit)), ("bubble fraction", f"{m.bubble_fraction:.4f}")]
    steady = [("back to back", f"{m.steady_bubble_fraction:.4f} bubble, steps {format_time(m.period, unit)} apart")]
    bound = [("lower bound", f"{format_time(found.bound.value, unit)}, {found.bound.reason}: {proof}")]
    rows = [
        ("schedule", f"{found.method} (the best of {found.candidates} timed)"),
        *(step[:1] + bound + step[1:] + steady if found.objective == "makespan" else steady + bound + step),
        ("in flight", f"{'/'.join(map(str, m.peak_inflight_microbatches))} {held} ({outcome.within})"),
        ("peak memory", ", ".join(format_bytes(b) for b in m.peak_memory_bytes)),
        (
            "grad rel. error",
            "not checked" if result.grad_rel_err is None else f"{result.grad_rel_err:.2e} against one full-batch pass",
        ),
    ]
    print(_table(rows))
    print()
    print(found.schedule.table())
    if args.output is not None:
        print(f"\nschedule written to {args.output} (PyTorch's action CSV)")
