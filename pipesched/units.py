"""Sizes, times and rates as people write and read them: ``16GB``, ``512 MiB``, ``15.00 µs``.

Decimal units (KB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB,
GiB, TiB) powers of 1024, as in the SI and IEC standards.

>>> parse_bytes("16GB"), parse_bytes("1.5 KiB"), parse_bytes("1000")
(16000000000, 1536, 1000)
>>> parse_bytes("-5GB")
Traceback (most recent call last):
pipesched.errors.ConfigError: --device-memory -5GB is negative; give a size of at least one byte, e.g. 16GB
"""

from __future__ import annotations

import math
import re

from .errors import ConfigError

__all__ = ["parse_bytes", "format_bytes", "byte_prefix", "format_time", "time_prefix", "format_rate", "count", "UNITS"]

UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(text: str, flag: str = "--device-memory") -> int:
    """Bytes in ``text``: a number with an optional unit; raises ``ConfigError`` naming ``flag``."""
    if text.strip().startswith("-"):
        raise ConfigError(f"{flag} {text.strip()} is negative; give a size of at least one byte, e.g. 16GB")
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if not match or (unit and unit not in UNITS):
        raise ConfigError(
            f"{flag} {text!r} is not a size; write a number with an optional unit of "
            "B, KB, MB, GB, TB, KiB, MiB, GiB or TiB, e.g. 16GB"
        )
    value = float(match.group(1)) * UNITS[unit or "B"]
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"{flag} {text!r} is less than one byte; give e.g. 16GB")
    return int(value)


def format_time(value: float, unit: str) -> str:
    """Seconds with an SI prefix, or plain units.

    >>> format_time(1.5e-5, "s"), format_time(33.0, "unit")
    ('15.00 µs', '33 units')
    """
    if unit != "s":
        return f"{value:g} units"
    scale, prefix = time_prefix(value)
    if scale and scale < 1 and round(abs(value) / scale, 2) >= 1000:  # 999.999 µs reads as 1.00 ms
        scale, prefix = time_prefix(scale * 1000)
    return f"{value / scale:.2f} {prefix}" if scale else f"{value:.3g} s"


def time_prefix(seconds: float) -> tuple[float, str]:
    """The SI prefix to show ``seconds`` in: (seconds per unit, unit); (0, "s") below a nanosecond.

    >>> time_prefix(0.25), time_prefix(3e-6)
    ((0.001, 'ms'), (1e-06, 'µs'))
    """
    for scale, prefix in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
        if abs(seconds) >= scale:
            return scale, prefix
    return 0.0, "s"


def format_bytes(value: int) -> str:
    """Binary units: ``format_bytes(3 * 2**20)`` gives '3.00 MiB'.

    >>> format_bytes(512), format_bytes(3 * 2**20)
    ('512 B', '3.00 MiB')
    """
    scale, unit = byte_prefix(value)
    return f"{value} B" if scale == 1 else f"{value / scale:.2f} {unit}"


def byte_prefix(value: float) -> tuple[int, str]:
    """The binary unit to show ``value`` bytes in: (bytes per unit, unit).

    >>> byte_prefix(512), byte_prefix(3 * 2**20)
    ((1, 'B'), (1048576, 'MiB'))
    """
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= scale:
            return scale, unit
    return 1, "B"


def format_rate(value: float) -> str:
    """Whole numbers with separators from 1000 up, six digits below.

    >>> format_rate(1006661.2), format_rate(0.969697)
    ('1,006,661', '0.969697')
    """
    return f"{value:,.0f}" if value >= 1000 else f"{value:.6g}"


def count(n: int, noun: str) -> str:
    """A count and its noun, plural where it should be.

    >>> count(1, "device"), count(2, "micro-batch"), count(3, "layer")
    ('1 device', '2 micro-batches', '3 layers')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("ch") else f"{n} {noun}s"
