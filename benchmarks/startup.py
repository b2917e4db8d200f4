"""Start-up: a tiny ``pipesched run`` as a whole process, against ``python -c pass`` and against the import of
the two libraries every run needs (NumPy and SimPy), timed in the same run, median of ``--repeat``.

The floor no change to pipesched can lower is the second baseline; what is above it is pipesched's own
modules and the run itself (pydantic, which checks the files users write, loads only when a file is read).
The commands take turns within each round, so that a shared machine's drift over minutes falls on all of
them alike; ``--also PYTHON`` adds the ``pipesched`` installed beside another interpreter (another venv,
e.g. the code before a change) to the same rounds.

    python benchmarks/startup.py --repeat 9
    python benchmarks/startup.py --repeat 9 --also /tmp/venv-before/bin/python
"""

import argparse
import os
import platform
import subprocess
import sys

from revision import PROCESS_ENV
from rounds import medians

RUN = ["run", "--devices", "2", "--microbatches", "2", "--cost", "unit", "--no-compute", "--no-reference"]
#: what a plain run must not import (issue 20): figures, balancing and the check of a file load these when asked
NOT_ON_RUN = ("networkx", "matplotlib", "pydantic")


def whole_processes(commands: list[list[str]], repeat: int) -> list[float]:
    """Each command's median wall time as a whole process over ``repeat`` rounds, taking turns (``rounds``)."""
    for cmd in commands:  # once each, untimed: Python caches the bytecode, as after a user's first command
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=PROCESS_ENV)
    return medians(
        [
            lambda cmd=cmd: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=PROCESS_ENV)
            for cmd in commands
        ],
        repeat,
    )


def _script(python: str) -> list[str]:
    """The ``pipesched`` command installed beside ``python``, running the tiny run."""
    return [os.path.join(os.path.dirname(python), "pipesched"), *RUN]


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
    parser.add_argument(
        "--also", action="append", default=[], metavar="PYTHON", help="time the pipesched beside this Python too"
    )
    args = parser.parse_args()
    commands = [[sys.executable, "-c", "pass"], [sys.executable, "-c", "import numpy, simpy"], _script(sys.executable)]
    empty, floor, ours, *others = whole_processes(commands + [_script(python) for python in args.also], args.repeat)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"python -c pass              {empty:6.3f} s")
    print(f"import numpy, simpy         {floor:6.3f} s")
    print(f"pipesched {' '.join(RUN)}  {ours:6.3f} s")
    print(f"above python: {ours - empty:.3f} s; above the NumPy and SimPy floor: {ours - floor:.3f} s")
    for python, other in zip(args.also, others):
        print(f"  the pipesched beside {python}: {other:6.3f} s, {other / ours:.2f}x this one")
    print(f"a run imports {', '.join(loaded_by_run()) or 'none of ' + ', '.join(NOT_ON_RUN)}")


if __name__ == "__main__":
    main()
