"""Decoders: compute overhead with real NumPy, and shape-only time and memory at GPT-3's 96 blocks.

1. ``pipesched run --model tiny-gpt`` against a plain loop of the same decoder
   passes (``decoder_loop.py``) plus the same run with ``--no-compute``:
   ratio = run / (loop + no-compute); 1.0 adds nothing to the arithmetic.
2. ``pipesched run --model gpt3-175b --no-compute`` (96 blocks) on K=16,
   M=256: its peak RSS, and its time per action against the MLP's at the same
   K and M (the same number of actions), as a ratio.

All whole processes, timed in the same run, best of ``--repeat``.

    python benchmarks/decoder_speed.py
"""

import argparse
import os
import platform
import subprocess
import sys

from engine_overhead import best_of  # one timing rule for every benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
PIPESCHED = os.path.join(os.path.dirname(sys.executable), "pipesched")


def peak_rss(cmd: list[str]) -> float:
    """Peak resident memory of ``cmd`` alone, in MiB: it runs under a fresh interpreter that reports its child."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True).stdout
    return int(out) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    small = ["--model", "tiny-gpt", "--seq-len", "128", "--batch", "64", "--devices", "4", "--microbatches", "8"]
    run = [PIPESCHED, "run", *small, "--no-reference"]
    loop = [sys.executable, os.path.join(HERE, "decoder_loop.py"), "tiny-gpt", "128", "64", "8"]
    t_loop = best_of(loop, args.repeat)
    t_shape = best_of(run + ["--no-compute"], args.repeat)
    t_run = best_of(run, args.repeat)
    print(f"tiny-gpt, 64 x 128 tokens, K=4, M=8: loop {t_loop:.3f} s, --no-compute {t_shape:.3f} s, run {t_run:.3f} s")
    print(f"compute overhead, run / (loop + no-compute): {t_run / (t_loop + t_shape):.3f}")
    big = ["--devices", "16", "--microbatches", "256", "--batch", "256", "--no-compute", "--no-reference"]
    t_mlp = best_of([PIPESCHED, "run", "--layers", "8x99", *big], args.repeat)
    gpt = [PIPESCHED, "run", "--model", "gpt3-175b", "--seq-len", "2048", *big]
    t_gpt, rss = best_of(gpt, args.repeat), peak_rss(gpt)
    actions = 2 * 16 * 256  # GPipe: a forward and a backward per stage and micro-batch, in both runs
    print(f"K=16, M=256, {actions} actions: MLP 8x99 {t_mlp:.3f} s, gpt3-175b (96 blocks) {t_gpt:.3f} s")
    print(f"time per action, decoder / MLP: {t_gpt / t_mlp:.3f}; peak RSS of the decoder's run: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
