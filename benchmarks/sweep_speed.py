"""Sweep rate: points per second of the local process pool against one process, on the same sweep.

A sweep of small points (the seed model's size, --no-compute), run into fresh
results files, in this process: with --workers 1 and with one worker per
core, alternately, three times each, keeping each one's best rate (single
runs vary by a fifth on a shared machine). Goal: at least 1.7x on 2 cores.

    python benchmarks/sweep_speed.py
"""

import os
import platform
import tempfile
import time

from pipesched.sweep import Results, parse_sweep, sweep

STUDY = {
    "model": {"layers": "128,256x10,10", "batch": 64},
    "axes": {
        "strategy": ["gpipe", "1f1b", "zb-h1", "interleaved"],
        "devices": [2, 3, 4, 5],
        "microbatches": [4, 8, 12, 16, 24, 32],
        "remat": ["never", "always", "except_last"],
        "link_latency": [1e-6, 5e-6, 2e-5],
    },
    "constraints": {"where": ["microbatches >= devices"]},
}


def rate(workers: int) -> tuple[float, int]:
    study = parse_sweep(STUDY, "benchmark")
    with tempfile.TemporaryDirectory() as folder:
        results = Results(os.path.join(folder, "r.jsonl"))
        start = time.perf_counter()
        count = sweep(study, results, workers=workers, progress=False)
        return count / (time.perf_counter() - start), count


def main() -> None:
    cores = os.cpu_count() or 1
    ones, manys = [], []
    for _ in range(3):
        one, count = rate(1)
        many, _ = rate(cores)
        ones.append(one)
        manys.append(many)
    one, many = max(ones), max(manys)
    print(f"machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}")
    print(f"{count} points: one process {one:.1f} points/s, {cores} workers {many:.1f} points/s")
    print(f"ratio pool / one process: {many / one:.2f}x")


if __name__ == "__main__":
    main()
