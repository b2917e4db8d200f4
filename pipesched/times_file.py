"""The times file's keys as pydantic models (pipesched.schema), read by :func:`pipesched.times.parse_times`.

Apart from :mod:`pipesched.times` so that a run without ``--times`` never
imports pydantic (issue 20: start-up); the rules are the times file's, stated
in that module's docstring.

>>> from pipesched.schema import validate
>>> validate(_File, {"time_unit": "ms", "default": {"F": 1.0, "B": -2.0}}, "times.toml")
Traceback (most recent call last):
pipesched.errors.ConfigError: times.toml: [default].B: -2.0 is not a positive time; give the measured duration \
in time_unit, e.g. 1.5
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from .schema import STRICT

__all__ = ["_File", "_Table", "_Spread"]


def _note(value: Any) -> Any:
    if not isinstance(value, (str, int, float, bool)):
        raise ValueError('is not a string, number or true/false; write a note such as "measured by hand"')
    return value


def _positive_time(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError("is not a positive time; give the measured duration in time_unit, e.g. 1.5")
    return value


def _non_negative_time(value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("is not a time of zero or more; give the measured duration in time_unit, e.g. 0.6")
    return value


def _non_negative_bytes(value: int) -> int:
    if value < 0:
        raise ValueError("is not a byte count of zero or more; give bytes per micro-batch, e.g. 4194304")
    return value


def _positive_rows(value: int) -> int:
    if value < 1:
        raise ValueError("is not a micro-batch size of at least 1; give the rows the times were measured on, e.g. 4")
    return value


_Time = Annotated[float, AfterValidator(_positive_time)]
_Send = Annotated[float, AfterValidator(_non_negative_time)]


class _Spread(BaseModel):
    """The spread of each measurement beside it (e.g. the interquartile range); read, kept, never simulated."""

    model_config = STRICT
    F: _Send | None = None
    B: _Send | None = None
    I: _Send | None = None  # noqa: E741 - the field's standard name
    W: _Send | None = None
    R: _Send | None = None
    send: _Send | None = None


class _Table(BaseModel):
    """One ``[default]``, ``[stage.N]`` or ``[layer.N]`` table."""

    model_config = STRICT
    F: _Time | None = None
    B: _Time | None = None
    I: _Time | None = None  # noqa: E741 - the field's standard name
    W: _Time | None = None
    R: _Time | None = None
    send: _Send | None = None
    activation_bytes: Annotated[int, AfterValidator(_non_negative_bytes)] | None = None
    spread: _Spread | None = None


class _File(BaseModel):
    model_config = STRICT
    time_unit: Literal["s", "ms", "us"]
    rows: Annotated[int, AfterValidator(_positive_rows)] | None = None
    default: _Table | None = None
    stage: dict[str, _Table] = Field(default_factory=dict)
    layer: dict[str, _Table] = Field(default_factory=dict)
    # free notes: a rule rather than a union type, so a list reads as one sentence, not a union branch's path
    about: dict[str, Annotated[Any, AfterValidator(_note)]] = Field(default_factory=dict)
