"""Measured times of this machine: ``pipesched profile`` times the real NumPy layers and writes a times file.

The file is the one ``--cost measured --times`` reads (``pipesched.times``):
``time_unit``, then per layer (or per stage) a ``[layer.N]`` (``[stage.N]``)
table with ``F``, ``I``, ``W`` and ``R``, and ``activation_bytes`` where a
boundary can follow. Each time is the median of ``repeats`` timed runs after
``warmup`` untimed ones, its minimum and maximum written beside it as a
comment and its interquartile range in the table's ``spread``; ``rows``
states the micro-batch size measured, ``[about]`` the model and the machine
(platform, CPU, NumPy and its BLAS). The passes timed are the workload's own, as the engine calls them
(``pipesched.balance.profile.time_passes``), on one micro-batch of the run's
size. Sends are not measured (there is no network here): the file gives the
bytes, and the cost model's links give their time.

>>> profile = measure(RunConfig(layers="8,16,4", batch=4, microbatches=2), warmup=0, repeats=3)
>>> [part.label for part in profile.parts], profile.parts[0].activation_bytes  # 2 rows x 16 fp64 values
(['Dense(8->16, relu)', 'Dense(16->4)'], 256)
>>> text = profile.to_toml()
>>> "[layer.1]" in text and "activation_bytes = 256" in text
True
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from . import __version__, microbatch
from .balance.profile import PASSES, time_passes
from .compute import NumpyWorkload, Workload
from .decoder import assemble as decoder
from .errors import ConfigError
from .limits import array_bytes, machine_memory
from .model import parse_layers
from .pipeline import RunConfig, _check_counts, prepare, training_sizes
from .precision import nbytes
from .times import TIME_UNITS
from .units import count, format_bytes, time_prefix

__all__ = ["Spread", "Part", "Profile", "measure", "machine", "DEFAULT_WARMUP", "DEFAULT_REPEATS", "DEFAULT_THREADS"]

#: Untimed runs before the timed ones: the first pass pays for caches, lazy allocations and BLAS start-up.
DEFAULT_WARMUP = 2
#: Timed runs per pass: about three seconds on tiny-gpt's 11 layers here, enough for a steady median.
DEFAULT_REPEATS = 20

#: BLAS threads while timing: one, so that timings on a machine shared with other work stay steady.
DEFAULT_THREADS = 1

#: The times file's units (``pipesched.times``), by the prefix ``units.time_prefix`` chooses.
_UNITS = {"s": "s", "ms": "ms", "µs": "us", "ns": "us"}


@dataclass(frozen=True)
class Spread:
    """One pass's timed runs, in seconds: the median (the value written), the range and the quartiles around it."""

    median: float
    low: float
    high: float
    q1: float
    q3: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Spread":
        """The median, minimum, maximum and quartiles (inclusive method: within the range) of ``samples``."""
        if len(samples) < 2:
            q1 = q3 = samples[0]
        else:
            q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(statistics.median(samples), min(samples), max(samples), q1, q3)


@dataclass(frozen=True)
class Part:
    """A layer (or a stage) and its measured passes; ``activation_bytes`` is None where no boundary follows."""

    label: str
    layers: range
    times: dict[str, Spread]
    activation_bytes: int | None


@dataclass(frozen=True)
class Profile:
    """What ``pipesched profile`` measured: the parts, per ``layer`` or per ``stage``, on micro-batches of ``rows``.

    ``header`` is the file's opening comment, ``about`` its ``[about]`` table (what and where was measured).
    """

    kind: str
    parts: tuple[Part, ...]
    rows: int
    header: tuple[str, ...]
    about: dict[str, str | int]

    def time_unit(self) -> str:
        """The unit of the file: the SI prefix of its longest median, as ``units.time_prefix`` shows times."""
        longest = max(spread.median for part in self.parts for spread in part.times.values())
        return _UNITS[time_prefix(longest)[1]]

    def to_toml(self) -> str:
        """The times file: the header as comments, ``time_unit``, ``rows``, ``[about]``, then one table per part.

        Each time is the median; a comment beside it gives the minimum and
        maximum, and the part's ``spread`` table the interquartile range
        (``pipesched.times`` reads it and keeps it).
        """
        unit = self.time_unit()
        scale = TIME_UNITS[unit]
        lines = [f"# {line}" for line in self.header]
        lines += [
            "",
            f'time_unit = "{unit}"',
            f"rows = {self.rows}  # the micro-batch measured: one of r rows takes r/{self.rows} of each time",
            "",
            "[about]",
        ]
        lines += [f"{key} = {_toml(value)}" for key, value in self.about.items()]
        for index, part in enumerate(self.parts):
            lines += ["", f"[{self.kind}.{index}]  # {part.label}"]
            for op in PASSES:
                spread = part.times[op]
                lines.append(
                    f"{op} = {_number(spread.median / scale)}  "
                    f"# min {_number(spread.low / scale)}, max {_number(spread.high / scale)}"
                )
            if part.activation_bytes is not None:
                lines.append(f"activation_bytes = {part.activation_bytes}")
            iqr = ", ".join(f"{op} = {_number((part.times[op].q3 - part.times[op].q1) / scale)}" for op in PASSES)
            lines.append(f"spread = {{ {iqr} }}  # interquartile range")
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """Four significant digits as a TOML float (``0.0123``, ``1.5e-05``); rounding keeps min <= median <= max."""
    return repr(float(f"{value:.4g}"))


def _toml(value: str | int) -> str:
    """A TOML value: JSON's string escapes are TOML's basic string's."""
    return json.dumps(value)


def machine() -> dict[str, str | int]:
    """This machine as a times file's ``[about]`` states it: platform, CPU, cores, Python, NumPy and its BLAS."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = re.findall(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        cpu = names[0].strip() if names else cpu
    except OSError:  # not Linux: platform's answer stands
        pass
    blas = "unknown"
    try:
        config: Any = np.show_config(mode="dicts")  # NumPy 1.26 and later
        found = config["Build Dependencies"]["blas"]
        blas = f"{found['name']} {found.get('version', '')}".strip()
    except (TypeError, KeyError):
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
    }


def _stages(config: RunConfig, layers: int, devices: int | None, chunks: int | None) -> tuple[str, list[int]]:
    """Per layer (no ``devices``, no partition) or the stages of ``devices`` x ``chunks`` or of the counts given."""
    given = config.partition != "uniform"
    if devices is None and not given:
        if chunks is not None:
            raise ConfigError(f"--chunks {chunks} counts stages per device; give --devices too, or drop it")
        return "layer", [1] * layers
    if config.partition == "balanced":
        raise ConfigError(
            "--partition balanced is chosen from layer times; profile per layer (no --partition) and give the "
            "times file to a run with --partition balanced, or give layer counts such as 3,3,3,2"
        )
    for flag, value in (("--devices", devices), ("--chunks", chunks)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; use 1 or more")
    if devices is not None:
        stages = devices * (chunks or 1)
    elif re.fullmatch(r"\d+(,\d+)*", config.partition.replace(" ", "")):
        stages = config.partition.count(",") + 1
    else:
        stages = 0  # parse_partition names what is wrong with the text
    from .partition import parse_partition

    return "stage", [len(stage) for stage in parse_partition(config.partition, layers, stages)]


def _check_memory(config: RunConfig, rows: int) -> None:
    """Refuse a model whose float64 arrays cannot fit here, before building any, as ``run`` bounds them.

    The bound is the run's own for one micro-batch of ``rows`` (``limits.array_bytes`` for the MLP,
    ``decoder.assemble.check_run``'s for a decoder), so what it lets through ``prepare`` lets through too.
    """
    available = machine_memory()
    if available is None:
        return
    if config.model is None:
        needed = sum(array_bytes(parse_layers(config.layers), rows, 1, reference=False).values())
        what = f"--layers {config.layers}"
    else:
        from .decoder.accounting import total_parameters

        model = decoder.resolve(config.model, config.seq_len)
        seq_len = config.seq_len or decoder.default_seq_len(model)
        needed = 3 * 8 * total_parameters(model) + 8 * rows * seq_len * model.vocab_size
        what = f"--model {config.model}"
    if needed > available:
        raise ConfigError(
            f"{what} needs at least {format_bytes(needed)} of float64 arrays to time its real NumPy layers but this "
            f"machine has {format_bytes(available)}; profile a smaller model (such as tiny-gpt or narrower "
            "--layers) or a smaller micro-batch (--batch, --microbatches)"
        )


def measure(
    config: RunConfig,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    devices: int | None = None,
    chunks: int | None = None,
    threads: int | None = DEFAULT_THREADS,
) -> Profile:
    """Time ``config``'s model on one micro-batch of its size, per layer, or per stage with ``devices``/partition.

    ``config`` gives the model (``layers`` or ``model`` and ``seq_len``),
    ``batch`` and ``microbatches`` (the micro-batch is the largest,
    ⌈batch/M⌉ rows, of synthetic data from ``seed``), ``loss``, and ``dtype``,
    the training precision ``activation_bytes`` counts. Per stage when
    ``devices`` is given (``devices`` x ``chunks`` stages, split by
    ``config.partition``) or the partition is layer counts; else per layer.
    Every check runs before any array is built. ``threads`` caps the BLAS
    threads while timing (threadpoolctl); None leaves the BLAS its own.
    """
    for flag, value, least in (("--warmup", warmup, 0), ("--repeats", repeats, 1), ("--threads", threads or 1, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{flag} {value!r} is not allowed; give a whole number of at least {least}")
    _check_counts(config)
    if config.model is None and config.seq_len is not None:
        raise ConfigError(f"--seq-len {config.seq_len} is a decoder's sequence length; give --model too, or drop it")
    rows = max(s.stop - s.start for s in microbatch.split(config.batch, config.microbatches))
    if config.model is None:
        layers = len(parse_layers(config.layers)) - 1
    else:
        model = decoder.resolve(config.model, config.seq_len)
        config = replace(config, seq_len=config.seq_len or decoder.default_seq_len(model))
        layers = len(decoder.chain(model))
    kind, counts = _stages(config, layers, devices, chunks)
    _check_memory(config, rows)
    # one micro-batch is the whole batch of this run: its arrays and nothing else; the stages as a GPipe plan has them
    one = replace(
        config, batch=rows, microbatches=1, devices=len(counts), chunks=1, strategy="gpipe",
        partition=",".join(map(str, counts)), cost="unit", compute=True, reference=False,
    )  # fmt: skip
    p = prepare(one)
    size, state = training_sizes(p.config)
    work: Workload
    assert p.x is not None and p.target is not None  # prepare builds the data with the model when computing
    if p.decoder_model is not None:
        from .decoder.workload import DecoderWorkload

        work = DecoderWorkload(p.decoder_model, p.partition, p.x, p.target, p.slices, size, state)
    else:
        assert p.model is not None
        work = NumpyWorkload(p.model, p.partition, p.x, p.target, config.loss, p.slices, size, state)
    from threadpoolctl import threadpool_info, threadpool_limits

    # one BLAS thread by default: small matrix products on shared cores time steadily that way, and a device
    # in a pipeline runs its stage alone; the count is written in [about] either way
    with threadpool_limits(limits=threads, user_api="blas"):
        used = max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)
        samples, outputs = time_passes(work, len(counts), warmup, repeats)
    parts = []
    for stage, (span, passes) in enumerate(zip(p.partition, samples)):
        names = [str(p.layers[i]) for i in span]
        span_text = f"layer {span[0]}" if len(span) == 1 else f"layers {span[0]}-{span[-1]}"
        label = names[0] if kind == "layer" else f"{span_text}: {', '.join(names)}"
        boundary = nbytes(outputs[stage], size) if stage + 1 < len(counts) else None
        parts.append(Part(label, span, {op: Spread.of(passes[op]) for op in PASSES}, boundary))
    per = "layer" if kind == "layer" else f"stage (partition {','.join(map(str, counts))})"
    header = (
        f"Measured by pipesched profile: the real NumPy passes of each {per}, as the engine runs them,",
        f"on one micro-batch of {count(rows, 'row' if config.model is None else 'sequence')} "
        f"(--batch {config.batch} in {count(config.microbatches, 'micro-batch')}) of synthetic data from "
        f"--seed {config.seed}, on the machine in [about].",
        f"Each time is the median of {count(repeats, 'timed run')} after {count(warmup, 'warm-up run')}, its min "
        "and max beside it, its interquartile range in spread; times vary from run to run.",
        "F forward, I input-gradient, W weight-gradient, R recompute (measured: the forward run again from the "
        "kept stage input, as --remat runs it).",
        f"activation_bytes: what one micro-batch sends across a boundary after this {kind}, in {p.config.dtype}.",
        "Sends are not measured here (no network): they are left to the links of the cost model.",
    )
    named: dict[str, str | int] = (
        {"layers": config.layers} if config.model is None else {"model": config.model, "seq_len": config.seq_len or 0}
    )
    if kind == "stage":  # the stages measured: a run of another split is refused (Times.check_partition)
        named["partition"] = ",".join(map(str, counts))
    about: dict[str, str | int] = {
        "tool": f"pipesched profile {__version__}",
        **named,
        "batch": config.batch,
        "microbatches": config.microbatches,
        "seed": config.seed,
        "dtype": p.config.dtype or "",
        "warmup": warmup,
        "repeats": repeats,
        "blas_threads": used,
        **machine(),
    }
    return Profile(kind, tuple(parts), rows, header, about)
