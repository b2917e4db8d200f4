"""``pipesched profile``: time the real NumPy layers here and write the times file ``--cost measured`` reads.

>>> import tempfile, os
>>> from pipesched.cli import main
>>> with tempfile.TemporaryDirectory() as folder:
...     path = os.path.join(folder, "times.toml")
...     main(["profile", "--layers", "8,16,4", "--batch", "4", "--microbatches", "2", "--repeats", "2", "-o", path])
...     "[layer.1]" in open(path).read()
times of 2 layers (median of 2 runs each) written to ...times.toml
0
True
"""

from __future__ import annotations

import argparse
import sys

from ..pipeline import RunConfig
from ..profile import measure
from ..units import count
from .common import _check_output_path, _write_atomic

__all__ = ["_cmd_profile"]


def _cmd_profile(args: argparse.Namespace) -> None:
    if args.output is not None:  # before any timing: a path that cannot be written fails at once
        _check_output_path("-o", args.output, "times.toml")
    config = RunConfig(
        layers=args.layers,
        model=args.model,
        seq_len=args.seq_len,
        batch=args.batch,
        microbatches=args.microbatches,
        partition=args.partition,
        loss=args.loss,
        dtype=args.dtype,
        seed=args.seed,
    )
    profile = measure(
        config, warmup=args.warmup, repeats=args.repeats, devices=args.devices, chunks=args.chunks, threads=args.threads
    )
    text = profile.to_toml()
    if args.output is None:
        sys.stdout.write(text)
        return
    _write_atomic(args.output, text)
    print(
        f"times of {count(len(profile.parts), profile.kind)} (median of {count(args.repeats, 'run')} each) "
        f"written to {args.output}"
    )
