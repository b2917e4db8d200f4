"""What every command shares: reading the flags into a run config, tables, safe output files.

>>> print(_table([("a", "bb"), ("ccc", "d")]))
a    bb
ccc  d
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Sequence, cast

from ..errors import ConfigError
from ..pipeline import COMPARE_DEFAULT, RunConfig
from ..strategy import load_strategy
from ..units import parse_bytes

__all__ = ["COMPARE_DEFAULT", "_config", "_table", "_check_output_path", "_check_output_folder", "_write_atomic"]


def _config(args: argparse.Namespace) -> RunConfig:
    if getattr(args, "schedule", None) and getattr(args, "strategy", RunConfig.strategy) != RunConfig.strategy:
        raise ConfigError("--schedule and --strategy both name what to run; give one of them")
    # a flag's text (RunConfig's default is text too): a name, path/file.py:Class, or a schedule file
    strategy = cast(str, getattr(args, "schedule", None) or getattr(args, "strategy", RunConfig.strategy))
    devices, microbatches = args.devices, args.microbatches
    if strategy.endswith(".csv") and (devices is None or microbatches is None):
        schedule = load_strategy(strategy).plan  # a CSV's own size fills what the flags leave out
        file_schedule = schedule.__self__.schedule  # type: ignore[attr-defined]
        devices = file_schedule.devices if devices is None else devices
        microbatches = file_schedule.microbatches if microbatches is None else microbatches
    return RunConfig(
        layers=args.layers,
        batch=args.batch,
        microbatches=RunConfig.microbatches if microbatches is None else microbatches,
        devices=RunConfig.devices if devices is None else devices,
        data_parallel=args.data_parallel,
        tensor_parallel=args.tensor_parallel,
        sequence_parallel=args.sequence_parallel,
        chunks=args.chunks,
        strategy=strategy,
        partition=args.partition,
        remat=args.remat,
        cost=args.cost,
        device_flops=args.device_flops,
        link_bandwidth=args.link_bandwidth,
        link_latency=args.link_latency,
        hardware=args.hardware,
        devices_per_node=args.devices_per_node,
        node_map=args.node_map,
        efficiency=args.efficiency,
        inter_node_bandwidth=args.inter_node_bandwidth,
        inter_node_latency=args.inter_node_latency,
        device_speed=args.device_speed,
        overlap=args.overlap,
        times=getattr(args, "times", None),
        p2p=args.p2p,
        grad_sync=args.grad_sync,
        collective=args.collective,
        model=getattr(args, "model", None),
        seq_len=getattr(args, "seq_len", None),
        loss=args.loss,
        dtype=args.dtype,
        optimizer=args.optimizer,
        compute=not args.no_compute,
        reference=not args.no_reference,
        seed=args.seed,
        balance_by=args.balance_by,
        device_memory=parse_bytes(args.device_memory) if args.device_memory else None,
        allow_oom=args.allow_oom,
        max_inflight=getattr(args, "max_inflight", None),
    )


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart.

    >>> print(_table([("a", "bb"), ("ccc", "d")]))
    a    bb
    ccc  d
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _check_output_path(flag: str, path: str, example: str = "trace.json") -> None:
    """Fail before any work unless ``path`` names a regular file that can be written, new or existing.

    ``example`` is the file name the fix suggests (``times.toml`` for a profile).
    """
    if not path:
        raise ConfigError(f"{flag} is empty; give a file path such as {example}")
    real = os.path.realpath(path)  # write through a symbolic link, not over it
    folder = os.path.dirname(real)
    if os.path.isdir(real):
        raise ConfigError(f"{flag} {path} is a folder; give a file path such as {os.path.join(path, example)}")
    if os.path.exists(real) and not os.path.isfile(real):
        raise ConfigError(f"{flag} {path} is not a regular file; give a path for an ordinary file")
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag} {path}: folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK) or (os.path.exists(real) and not os.access(real, os.W_OK)):
        raise ConfigError(f"{flag} {path} cannot be written; choose another path")


def _check_output_folder(flag: str, path: str) -> None:
    """Fail before any work unless a folder can be made (or replaced) at ``path``.

    The folder is built beside its target and moved into place, so the target's
    parent, or its nearest existing ancestor where the parent is still to be
    made, must be a folder this process can write.
    """
    if not path:
        raise ConfigError(f"{flag} is empty; give a folder path such as pipesched-report")
    target = os.path.abspath(path)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ConfigError(f"{flag} {path} is a file; give a folder to write into")
    ancestor = os.path.dirname(target)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"{flag} {path} cannot be made: {ancestor} is a file, not a folder; choose another path")
    try:  # a probe says what permission bits cannot: read-only mounts, /proc, root squash
        os.rmdir(tempfile.mkdtemp(prefix=".pipesched-probe-", dir=ancestor))
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path} cannot be written: folder {ancestor} refuses new files ({exc.strerror}); "
            "choose another path"
        ) from None


def _write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a failure never leaves a half-written file.

    The text goes to a temporary file beside the target, which then replaces it
    with the target's permissions (or the umask's, for a new file).
    """
    real = os.path.realpath(path)
    umask = os.umask(0)
    os.umask(umask)
    mode = os.stat(real).st_mode & 0o777 if os.path.exists(real) else 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(real), prefix=".pipesched-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        os.unlink(tmp)
        raise
