"""Compute overhead: pipesched's run with real NumPy against a plain NumPy loop plus its --no-compute run.

All three are whole processes, timed in the same run, best of ``--repeat``:
ratio = run / (numpy loop + run --no-compute). At 1.0 pipesched adds nothing
to the arithmetic beyond the simulation itself. The code before issue 20
(``revision.BEFORE``) is timed the same way in the same run: nothing regresses.

    python benchmarks/compute_overhead.py
"""

import argparse
import os
import platform
import sys

from engine_overhead import best_of
from revision import pipesched_command, revision

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1024x9")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args_run = [
        "run", "--layers", args.layers, "--batch", str(args.batch), "--devices", str(args.devices),
        "--microbatches", str(args.microbatches), "--remat", "never", "--no-reference",
    ]  # fmt: skip
    pipesched = [os.path.join(os.path.dirname(sys.executable), "pipesched"), *args_run]
    loop = [sys.executable, os.path.join(HERE, "numpy_loop.py"), args.layers, str(args.batch), str(args.microbatches)]
    t_loop = best_of(loop, args.repeat)
    t_shape = best_of(pipesched + ["--no-compute"], args.repeat)
    t_run = best_of(pipesched, args.repeat)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"--layers {args.layers} --batch {args.batch} --devices {args.devices} --microbatches {args.microbatches}")
    print(f"plain NumPy loop           {t_loop:8.3f} s")
    print(f"pipesched --no-compute     {t_shape:8.3f} s")
    print(f"pipesched with compute     {t_run:8.3f} s")
    print(f"ratio run / (loop + no-compute): {t_run / (t_loop + t_shape):.3f}")
    with revision() as folder:
        if folder is not None:
            before = pipesched_command(folder, args_run)
            b_shape = best_of(before + ["--no-compute"], args.repeat, cwd=folder)
            b_run = best_of(before, args.repeat, cwd=folder)
            print(f"the code before issue 20: {b_shape:.3f} s, {b_run:.3f} s; ratio {b_run / (t_loop + b_shape):.3f}")


if __name__ == "__main__":
    main()
