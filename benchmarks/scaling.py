"""Scaling: a step of K=64, M=4096 against K=64, M=1024 under --no-compute, with the larger run's peak RSS.

Linear in actions means a ratio of 4; the goal is at most 4.4 and under
500 MB. Whole processes, best of ``--repeat``; RSS from the kernel's
accounting of the finished child.

    python benchmarks/scaling.py
"""

import argparse
import os
import platform
import resource
import subprocess
import sys
import time


def run(devices: int, microbatches: int) -> tuple[float, float]:
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "pipesched"),
        "run",
        "--strategy",
        "gpipe",
        "--devices",
        str(devices),
        "--microbatches",
        str(microbatches),
        "--batch",
        str(microbatches),
        "--layers",
        f"8x{devices + 1}",
        "--cost",
        "unit",
        "--no-compute",
        "--no-reference",
    ]
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
    return elapsed, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    small = min(run(args.devices, 1024)[0] for _ in range(args.repeat))
    large_runs = [run(args.devices, 4096) for _ in range(args.repeat)]
    large = min(t for t, _ in large_runs)
    rss = max(r for _, r in large_runs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"K={args.devices}, M=1024: {small:.3f} s;  M=4096: {large:.3f} s;  ratio {large / small:.2f}")
    print(f"peak RSS of the M=4096 run: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
