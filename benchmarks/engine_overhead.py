"""Engine overhead: ``pipesched run --no-compute`` against a hand-written SimPy loop, whole processes.

Both are timed in the same run, best of ``--repeat``, after one untimed run of each (``revision.PROCESS_ENV``:
Python's bytecode cached, as on a user's machine); the figure is the ratio. The same command on the code
before issue 20 (``revision.BEFORE``) is timed alongside, alternately, for the speed-up.

    python benchmarks/engine_overhead.py --devices 64 --microbatches 1024
"""

import argparse
import os
import platform
import subprocess
import sys
import time

from revision import PROCESS_ENV, pipesched_command, revision

HERE = os.path.dirname(os.path.abspath(__file__))


def best_of(cmd: list[str], repeat: int, cwd: str | None = None) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=cwd, env=PROCESS_ENV)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--microbatches", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    k, m = str(args.devices), str(args.microbatches)
    args_run = [
        "run", "--strategy", "gpipe", "--devices", k, "--microbatches", m, "--cost", "unit", "--remat", "never",
        "--no-compute", "--no-reference", "--layers", f"8x{args.devices + 1}", "--batch", m,
    ]  # fmt: skip
    pipesched = [os.path.join(os.path.dirname(sys.executable), "pipesched"), *args_run]
    baseline = [sys.executable, os.path.join(HERE, "handwritten_gpipe.py"), k, m]
    actions = 2 * args.devices * args.microbatches
    base, ours, before = [], [], []
    with revision() as folder:
        best_of(baseline, 1)  # once each, untimed: Python caches the bytecode, as after a user's first command
        best_of(pipesched, 1)
        if folder is not None:
            best_of(pipesched_command(folder, args_run), 1, cwd=folder)
        for _ in range(args.repeat):  # alternately, one of each at a time: the machine's speed drifts
            base.append(best_of(baseline, 1))
            ours.append(best_of(pipesched, 1))
            if folder is not None:
                before.append(best_of(pipesched_command(folder, args_run), 1, cwd=folder))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"K={k}, M={m}: {actions} actions, best of {args.repeat}")
    print(f"hand-written SimPy loop  {min(base):8.3f} s  ({min(base) / actions * 1e6:.1f} µs/action)")
    print(f"pipesched run            {min(ours):8.3f} s  ({min(ours) / actions * 1e6:.1f} µs/action)")
    print(f"ratio pipesched / hand-written: {min(ours) / min(base):.2f}x")
    if before:
        print(f"the code before issue 20 {min(before):8.3f} s: ratio {min(before) / min(base):.2f}x")


if __name__ == "__main__":
    main()
