"""Scaling: a step of K=64, M=4096 against K=64, M=1024 under --no-compute, with the larger run's peak RSS.

Linear in actions means a ratio of 4; the goal is at most 4.4 and under
500 MB. Whole processes, best of ``--repeat``; RSS from the kernel's
accounting of each finished child (``os.wait4``). The code before issue 20
(``revision.BEFORE``) runs the same steps in the same run, for comparison.

    python benchmarks/scaling.py
"""

import argparse
import os
import platform
import subprocess
import sys
import time

from revision import PROCESS_ENV, pipesched_command, revision


def run(devices: int, microbatches: int, folder: str | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one step as a whole process, on this code or on the code in ``folder``."""
    args = [
        "run", "--strategy", "gpipe", "--devices", str(devices), "--microbatches", str(microbatches),
        "--batch", str(microbatches), "--layers", f"8x{devices + 1}", "--cost", "unit", "--no-compute",
        "--no-reference",
    ]  # fmt: skip
    cmd = (
        pipesched_command(folder, args)
        if folder
        else [os.path.join(os.path.dirname(sys.executable), "pipesched"), *args]
    )
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, cwd=folder, env=PROCESS_ENV)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children so far
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, cmd)
    return elapsed, usage.ru_maxrss / 1024  # KiB on Linux


def scale(devices: int, repeat: int, folder: str | None = None) -> tuple[float, float, float]:
    """(M=1024 seconds, M=4096 seconds, the M=4096 run's peak RSS in MiB), best of ``repeat``."""
    run(devices, 2, folder)  # once, untimed: Python caches the bytecode, as after a user's first command
    small = min(run(devices, 1024, folder)[0] for _ in range(repeat))
    large_runs = [run(devices, 4096, folder) for _ in range(repeat)]
    return small, min(t for t, _ in large_runs), max(r for _, r in large_runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    small, large, rss = scale(args.devices, args.repeat)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"K={args.devices}, M=1024: {small:.3f} s;  M=4096: {large:.3f} s;  ratio {large / small:.2f}")
    print(f"peak RSS of the M=4096 run: {rss:.0f} MiB")
    with revision() as folder:
        if folder is not None:
            small, large, rss = scale(args.devices, args.repeat, folder)
            print(
                f"the code before issue 20: {small:.3f} s;  {large:.3f} s;  ratio {large / small:.2f};  {rss:.0f} MiB"
            )


if __name__ == "__main__":
    main()
