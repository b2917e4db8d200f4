"""Engine overhead: ``pipesched run --no-compute`` against a hand-written SimPy loop, whole processes.

Both are timed in the same run, best of ``--repeat``; the figure is the ratio.

    python benchmarks/engine_overhead.py --devices 64 --microbatches 1024
"""

import argparse
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def best_of(cmd: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--microbatches", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    k, m = str(args.devices), str(args.microbatches)
    pipesched = [
        os.path.join(os.path.dirname(sys.executable), "pipesched"),
        "run",
        "--strategy",
        "gpipe",
        "--devices",
        k,
        "--microbatches",
        m,
        "--cost",
        "unit",
        "--remat",
        "never",
        "--no-compute",
        "--no-reference",
        "--layers",
        f"8x{args.devices + 1}",
        "--batch",
        m,
    ]
    baseline = [sys.executable, os.path.join(HERE, "handwritten_gpipe.py"), k, m]
    base = best_of(baseline, args.repeat)
    ours = best_of(pipesched, args.repeat)
    actions = 2 * args.devices * args.microbatches
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"K={k}, M={m}: {actions} actions")
    print(f"hand-written SimPy loop  {base:8.3f} s  ({base / actions * 1e6:.1f} µs/action)")
    print(f"pipesched run            {ours:8.3f} s  ({ours / actions * 1e6:.1f} µs/action)")
    print(f"ratio pipesched / hand-written: {ours / base:.2f}x")


if __name__ == "__main__":
    main()
