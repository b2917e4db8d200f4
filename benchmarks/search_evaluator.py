"""The search's fast evaluator against the engine: seconds per evaluation of the same schedule, in one run.

Both evaluate every strategy's schedule under the same flops costs (one
pipeline, shape-only, links that take time): the engine through
``pipesched.engine.simulate`` on the shape-only workload (no planning, no
metrics: only the simulation a search would otherwise repeat), the
evaluator through ``pipesched.search.evaluate`` without validation (a search
validates once and then reorders), on times built once; and with validation
(``check=True``) beside it, for a schedule seen for the first time. Best of
``--repeat`` rounds of ``--number`` evaluations each; the figure is the ratio.

    python benchmarks/search_evaluator.py --devices 8 --microbatches 32
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Callable

from pipesched.compute import ShapeWorkload
from pipesched.engine import simulate
from pipesched.pipeline import RunConfig, prepare, training_sizes
from pipesched.search import evaluate, from_prepared

STRATEGIES = ("gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zb-v")


def best_of(call: Callable[[], object], number: int, repeat: int) -> float:
    """The least seconds per call over ``repeat`` rounds of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def row(name: str, args: argparse.Namespace) -> str:
    """One strategy's line: actions, engine and evaluator milliseconds per evaluation, their ratios."""
    config = RunConfig(
        strategy=name,
        devices=args.devices,
        microbatches=args.microbatches,
        batch=4 * args.microbatches,
        layers=f"64x{4 * args.devices + 1}",
        cost="flops",
        compute=False,
        reference=False,
    )
    p = prepare(config)
    size, state = training_sizes(p.config)
    rows = [s.stop - s.start for s in p.slices]

    def engine() -> float:
        work = ShapeWorkload(p.layers, p.partition, rows, size, state)  # a fresh one per run, as run does
        return simulate(p.schedule, work, p.cost, p.config.remat).makespan

    times = from_prepared(p)
    evaluator_ms = best_of(lambda: evaluate(p.schedule, times, check=False), args.number, args.repeat)
    checked_ms = best_of(lambda: evaluate(p.schedule, times), args.number, args.repeat)
    engine_ms = best_of(engine, args.number, args.repeat)
    equal = evaluate(p.schedule, times).makespan == engine()
    actions = sum(len(row) for row in p.schedule.actions)
    return (
        f"{name:<12} {actions:>7} {engine_ms * 1e3:>10.2f} {evaluator_ms * 1e3:>13.3f} "
        f"{engine_ms / evaluator_ms:>5.0f}x {checked_ms * 1e3:>11.3f} {engine_ms / checked_ms:>5.0f}x  {equal}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--microbatches", type=int, default=32)
    parser.add_argument("--number", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"K={args.devices}, M={args.microbatches}, flops costs, remat never, best of {args.repeat}x{args.number}")
    header = ("strategy", "actions", "engine ms", "evaluator ms", "ratio", "checked ms", "ratio")
    widths = (-12, 7, 10, 13, 6, 11, 6)
    print(" ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(header, widths)) + "  equal")
    for name in STRATEGIES:
        print(row(name, args))


if __name__ == "__main__":
    main()
