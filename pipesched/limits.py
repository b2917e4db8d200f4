"""The limits every command checks before it plans or builds anything: schedule size, stages, memory.

Each check costs a few arithmetic operations on the flags, so a configuration
too large for this tool or this machine is refused at once, in one sentence
naming the value and the fix, instead of after minutes of planning or an
allocation that fails. Every command (run, compare, train, balance, formulas,
export, report studies, sweep points) uses these same checks, so they agree on
what can run.

>>> check_actions(devices=4, microbatches=8, chunks=2)  # 192 actions at most: fine
>>> check_actions(devices=100_000, microbatches=1_000, chunks=1)
Traceback (most recent call last):
...
pipesched.errors.ConfigError: --devices 100000 x --microbatches 1000 x --chunks 1 makes a schedule of up to \
300,000,000 actions, more than the 4,000,000 pipesched plans for one step; ...
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from .errors import ConfigError
from .units import count, format_bytes

if TYPE_CHECKING:  # pragma: no cover - imported for the annotations only
    from .pipeline import RunConfig

__all__ = [
    "MAX_ACTIONS",
    "OPS_PER_STAGE",
    "MAX_LISTED_DEVICES",
    "check_actions",
    "check_stages",
    "array_bytes",
    "check_memory",
    "check_listing",
    "machine_memory",
]

#: The most actions one step's schedule may have (K·M·v·3 at most, see ``check_actions``).
#:
#: Why this number: a schedule near it finishes in minutes within a tenth of the
#: development machine's memory (2 cores, 24 GiB, shared with other jobs): ZB-H1 on
#: K=64 devices with M=20,000 micro-batches, 3,840,000 actions, took 3 min 41 s and
#: 1.44 GiB under ``--no-compute`` (960,000 actions: 19 s, 416 MiB), so two sweep
#: workers at the limit still fit. No published pipeline comes near it: K=64 stages
#: with M=4096 micro-batches and a split backward (the scaling benchmark's size) is
#: 786,432 actions, and K=128, M=2048, v=4 chunks (more than any reported run) is
#: 3,145,728.
MAX_ACTIONS = 4_000_000

#: Actions per (stage, micro-batch): F, I and W when the backward is split (F and B otherwise).
OPS_PER_STAGE = 3

#: The most devices ``pipesched formulas`` lists per-device values for: each strategy's
#: in-flight counts make a list of K numbers, and past a thousand devices (no real pipeline
#: has so many stages) that is pages of digits, 8 MB of them at K=100,000.
MAX_LISTED_DEVICES = 1024


def check_actions(devices: int, microbatches: int, chunks: int, names: Sequence[str] = ()) -> None:
    """Refuse a configuration whose schedule could pass ``MAX_ACTIONS`` actions: K·M·v·3 bounds it.

    v stages per device (ZB-V's and DualPipeV's 2K stages are v = 2), each
    micro-batch's F, I and W on each, the most a stage runs; a replicated stage
    (data parallelism) runs each micro-batch once in all, and its ring
    all-reduce moves 2(K-1) chunks per device, under K·M since it needs M >= K.
    ``names`` are the three values' names in the message (default the flags).
    """
    flags = tuple(names) or ("--devices", "--microbatches", "--chunks")
    actions = OPS_PER_STAGE * devices * microbatches * chunks
    if actions > MAX_ACTIONS:
        raise ConfigError(
            f"{flags[0]} {devices} x {flags[1]} {microbatches} x {flags[2]} {chunks} makes a schedule of up to "
            f"{actions:,} actions, more than the {MAX_ACTIONS:,} pipesched plans for one step; "
            "use fewer devices, micro-batches or chunks"
        )


def check_stages(strategy: str, stages: int, devices: int, chunks: int, layers: int, layers_text: str) -> None:
    """Refuse ``stages`` stages of a model that has fewer layers: every stage needs at least one.

    ``stages`` is what the strategy places on ``devices`` devices with ``chunks``
    chunks (``strategy.planned_stages``, known without planning). ``layers_text``
    names the model: MLP widths (``--layers``), or a decoder as ``--model NAME``.
    """
    if stages > layers:
        on = f"--devices {devices}" + (f" and --chunks {chunks}" if chunks != 1 else "")
        model = layers_text if layers_text.startswith("--model") else f"--layers {layers_text}"
        raise ConfigError(
            f"strategy {strategy!r} plans {count(stages, 'stage')} on {on} but {model} has only "
            f"{count(layers, 'layer')}; use fewer devices or chunks, or more layers"
        )


def array_bytes(
    widths: Sequence[int], batch: int, microbatches: int, reference: bool, remat: str = "never", itemsize: int = 8
) -> dict[str, int]:
    """A lower bound on the bytes of the NumPy arrays a real-compute run builds, by role.

    - parameters: Σ (in+1)·out of the dense layers (weights and biases), float64;
    - gradients: one buffer of the same size (each replica of a stage holds its own, so more for ``dp``);
    - data: the batch's inputs, rows × input width (the labels add one number per row);
    - activations: every layer's output is the next one's input, kept for its
      backward (the first layer's input is a view of the data), rows × Σ out. The
      full-batch reference pass holds them for the whole batch at once; without it,
      one micro-batch (the largest, ⌈batch/M⌉ rows) passes through every layer before
      its first backward, or, under re-materialization, through at least one;
    - reference gradients: the reference pass accumulates its own gradients.

    >>> array_bytes([4, 8, 2], batch=10, microbatches=2, reference=False)
    {'parameters': 464, 'gradients': 464, 'data': 320, 'activations': 400}
    """
    params = sum((w_in + 1) * w_out for w_in, w_out in zip(widths, widths[1:])) * itemsize
    outputs = widths[1:]
    rows = batch if reference else -(-batch // microbatches)
    kept = sum(outputs) if reference or remat == "never" else max(outputs)
    sizes = {
        "parameters": params,
        "gradients": params,
        "data": batch * widths[0] * itemsize,
        "activations": rows * kept * itemsize,
    }
    if reference:
        sizes["reference gradients"] = params
    return sizes


def machine_memory() -> int | None:
    """This machine's memory in bytes: physical memory, or the container's limit where that is lower.

    ``None`` where the system does not say (then no run is refused for memory).
    """
    try:
        total: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" means no limit; v1 writes a huge number instead, and min() drops it
            total = int(text) if total is None else min(total, int(text))
        break
    return total


def check_memory(config: "RunConfig", copies: int = 1, roles: Sequence[str] = (), names: Sequence[str] = ()) -> None:
    """Refuse a real-compute run whose arrays cannot fit in this machine's memory, before building any.

    ``copies`` counts runs whose model, data and gradients are alive at once
    (``compare`` prepares every strategy's before running the first). The bound
    is ``array_bytes``, a lower bound, against the whole of ``machine_memory``:
    what it refuses cannot run here; what it lets through may still run out,
    which the command then reports in one sentence as well. ``roles`` keeps
    only those parts of ``array_bytes`` (timing layers for the balancer builds
    the weights and little else). ``names`` name the model and the batch in
    the message (default the flags; a study names its keys).
    """
    if not config.compute or config.batch < 1 or config.microbatches < 1:  # those are refused by their own checks
        return
    available = machine_memory()
    if available is None:
        return
    from .model import parse_layers  # the model module imports NumPy; this one stays light

    sizes = array_bytes(parse_layers(config.layers), config.batch, config.microbatches, config.reference, config.remat)
    # each of the D pipeline replicas (pipesched.layout) accumulates its own gradients of every stage
    sizes["gradients"] *= config.data_parallel
    for role in ("parameters", "gradients", "data"):
        sizes[role] *= copies
    if roles:
        sizes = {role: size for role, size in sizes.items() if role in roles}
    needed = sum(sizes.values())
    if needed > available:
        parts = ", ".join(f"{role} {format_bytes(size)}" for role, size in sizes.items())
        runs = f" for {copies} runs prepared together" if copies > 1 else ""
        layers, batch = tuple(names) or ("--layers", "--batch")
        raise ConfigError(
            f"{layers} {config.layers} with {batch} {config.batch} needs at least {format_bytes(needed)} of arrays"
            f"{runs} ({parts}) but this machine has {format_bytes(available)}; use --no-compute, fewer or "
            f"narrower {layers}, or a smaller {batch}"
        )


def check_listing(devices: int) -> None:
    """Refuse to list per-device values for more than ``MAX_LISTED_DEVICES`` devices (``pipesched formulas``)."""
    if devices > MAX_LISTED_DEVICES:
        raise ConfigError(
            f"--devices {devices} would list {devices:,} in-flight counts per strategy; formulas lists at most "
            f"{MAX_LISTED_DEVICES} devices, so give --devices {MAX_LISTED_DEVICES} or fewer"
        )
