"""Start-up: a tiny ``pipesched run`` as a whole process, against ``python -c pass`` and against the import of
the two libraries every run needs (NumPy and SimPy), timed in the same run, median of ``--repeat``.

The floor no change to pipesched can lower is the second baseline; what is above it is pipesched's own
modules, pydantic (which the file formats' validation loads) and the run itself.

    python benchmarks/startup.py --repeat 9
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

RUN = ["run", "--devices", "2", "--microbatches", "2", "--cost", "unit", "--no-compute", "--no-reference"]
#: what a plain run must not import (issue 20): figures and balancing load these when asked
NOT_ON_RUN = ("networkx", "matplotlib")


def median_of(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loaded_by_run() -> list[str]:
    """The heavy libraries a run has imported by its end, in a fresh process."""
    probe = (
        "import io, sys, contextlib\nfrom pipesched.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    main({RUN!r})\n"
        f"print(' '.join(m for m in {NOT_ON_RUN!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return out.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    pipesched = [os.path.join(os.path.dirname(sys.executable), "pipesched"), *RUN]
    empty = median_of([sys.executable, "-c", "pass"], args.repeat)
    floor = median_of([sys.executable, "-c", "import numpy, simpy"], args.repeat)
    ours = median_of(pipesched, args.repeat)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"python -c pass              {empty:6.3f} s")
    print(f"import numpy, simpy         {floor:6.3f} s")
    print(f"pipesched {' '.join(RUN)}  {ours:6.3f} s")
    print(f"above python: {ours - empty:.3f} s; above the NumPy and SimPy floor: {ours - floor:.3f} s")
    print(f"a run imports {', '.join(loaded_by_run()) or f'neither {NOT_ON_RUN[0]} nor {NOT_ON_RUN[1]}'}")


if __name__ == "__main__":
    main()
