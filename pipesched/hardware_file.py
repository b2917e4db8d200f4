"""The hardware file's keys as pydantic models (pipesched.schema): a user's ``--hardware mine.toml``, and the
package's own preset file in the tests.

Apart from :mod:`pipesched.hardware` so that a run on a built-in preset never imports pydantic (issue 20:
start-up); :func:`pipesched.hardware.load_hardware` checks a user's file with :class:`Hardware` and turns it
into the run's plain ``pipesched.hardware.Hardware``.

>>> from pipesched.schema import validate
>>> validate(Link, {"name": "NVLink 4", "bandwidth": 4.5e11, "latency": 2}, "mine.toml", ("intra_node",))
Traceback (most recent call last):
pipesched.errors.ConfigError: mine.toml: [intra_node].latency: 2 is not between 0 and 1 second; give seconds, e.g. 5e-6
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel

from .schema import STRICT, Fraction, PositiveNumber

__all__ = ["Link", "PeakFlops", "Hardware", "PresetFile"]


def _latency(value: float) -> float:
    if not (0 <= value <= 1):  # nan fails too
        raise ValueError("is not between 0 and 1 second; give seconds, e.g. 5e-6")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("is not 1 or more; give the devices of one node, e.g. 8")
    return value


def _per_second(value: float) -> float:
    # the flags' rule (pipesched.cost.FlopsCost): so a file's rate fails at its own key, not at a flag it never gave
    if not (math.isfinite(value) and value >= 1):
        raise ValueError("is not a finite rate of at least 1 per second; give e.g. 1e12")
    return value


Latency = Annotated[float, AfterValidator(_latency)]
Rate = Annotated[float, AfterValidator(_per_second)]


class Link(BaseModel):
    """One kind of link: bytes per second in each direction, seconds of latency, a name such as ``NVLink 4``."""

    model_config = STRICT
    name: str
    bandwidth: Rate
    latency: Latency
    source: str = ""


class PeakFlops(BaseModel):
    """Dense peak FLOP/s of the matrix units in each training precision (pipesched.precision's names)."""

    model_config = STRICT
    bf16: Rate
    fp16: Rate
    fp32: Rate
    fp64: Rate


class Hardware(BaseModel):
    """One device preset: the keys of a ``[preset.NAME]`` table, or of a user's whole file."""

    model_config = STRICT
    description: str = ""
    source: str = ""
    fp32_kind: str = ""
    peak_flops: PeakFlops
    memory: PositiveNumber  # bytes per device
    devices_per_node: Annotated[int, AfterValidator(_at_least_one)]
    intra_node: Link
    inter_node: Link
    name: str = ""  # the preset's name or the file's path, filled in by load_hardware


class PresetFile(BaseModel):
    """The package's preset file (pipesched/hardware.toml)."""

    model_config = STRICT
    efficiency: Fraction
    efficiency_source: str
    preset: dict[str, Hardware]
