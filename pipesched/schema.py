"""One way to check the files users write: pydantic models, each failure one sentence with its key path.

Every file format pipesched reads (hardware presets, measured times, and the
sections of studies and sweeps built on them) is a pydantic model checked
by :func:`validate`. pydantic does the type checks, unknown keys and
defaults; this module turns its first error into the sentence the CLI
prints, naming the file, the key's path as TOML spells it, the value and
the fix::

    times.toml: [stage.3].W: -1 is not a positive time; give the measured duration in time_unit, e.g. 1.5

Value rules are plain functions raising ``ValueError("is not ...; ...")``
(the reason and its fix, without the value: :func:`validate` puts the value
in front), wrapped with ``Annotated[..., AfterValidator(rule)]``; ready-made
ones are below. A rule over several keys is a pydantic ``model_validator``
whose ``ValueError`` is the whole sentence after the file's name, keys
included (``n_head: 5 does not divide n_embd 48; ...``).

>>> from pydantic import BaseModel
>>> class Link(BaseModel):
...     model_config = STRICT
...     bandwidth: PositiveNumber
>>> validate(Link, {"bandwidth": 5e10}, "hw.toml").bandwidth
50000000000.0
>>> validate(Link, {"bandwidth": -1}, "hw.toml")
Traceback (most recent call last):
pipesched.errors.ConfigError: hw.toml: bandwidth: -1 is not a positive finite number; fix it and run again
"""

from __future__ import annotations

import json
import math
from types import UnionType
from typing import Annotated, Any, Callable, Sequence, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from .errors import ConfigError
from .units import parse_bytes

__all__ = [
    "STRICT",
    "validate",
    "key_path",
    "show",
    "PositiveNumber",
    "NonNegativeNumber",
    "Count",
    "WholeNumber",
    "Size",
    "NonEmpty",
    "positive",
    "non_negative",
    "whole",
    "count",
    "fraction",
    "Fraction",
    "one_of",
    "text",
    "reason",
]

#: The model config every file format uses: unknown keys are errors, and values keep their TOML types
#: (a string is never read as a number), so a typo fails instead of being ignored.
STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def show(value: Any, exact: bool = False) -> str:
    """A value as TOML and JSON write it (true, not True; -1, not -1.0 unless ``exact``), for messages.

    A rule after pydantic's type check sees -1 as -1.0; ``exact`` is for a value as the file wrote it.

    >>> show(True), show(-1.0), show("h100"), show(2.0, exact=True)
    ('true', '-1', '"h100"', '2.0')
    """
    if isinstance(value, float) and value.is_integer() and math.isfinite(value) and not exact:
        value = int(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def key_path(loc: Sequence[Any]) -> str:
    """The TOML spelling of pydantic's error location: ``[stage.3].W``, ``[hardware]``, ``time_unit``.

    A list's item is named by its list (the message shows its value), as the file has no index to name it by.

    >>> key_path(("stage", "3", "W")), key_path(("time_unit",)), key_path(("link", "intra_node"))
    ('[stage.3].W', 'time_unit', '[link].intra_node')
    >>> key_path(("axes", "devices", 1))
    '[axes].devices'
    """
    parts = [str(p) for p in loc if p != "[key]" and not isinstance(p, int)]
    if len(parts) <= 1:
        return "".join(parts)
    return f"[{'.'.join(parts[:-1])}].{parts[-1]}"


def _table(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    return f"[{'.'.join(parts)}]" if parts else "the top level"


#: pydantic's error types -> the reason they mean, as one clause after the value
_REASONS = {
    "float_type": "is not a number; write a number without quotes, e.g. 1.5",
    "float_parsing": "is not a number; write a number without quotes, e.g. 1.5",
    "finite_number": "is not a finite number; write a number such as 1.5",
    "int_type": "is not a whole number; write one without quotes or a decimal point, e.g. 4",
    "int_parsing": "is not a whole number; write one without quotes or a decimal point, e.g. 4",
    "int_from_float": "is not a whole number; write one without a decimal point, e.g. 4",
    "string_type": 'is not a string; write it in quotes, e.g. "text"',
    "bool_type": "is not true or false; write one of them",
    "dict_type": "is not a table",
    "model_type": "is not a table",
    "model_attributes_type": "is not a table",
    "list_type": "is not a list",
    "tuple_type": "is not a list",
}


_TABLES = ("dict_type", "model_type", "model_attributes_type")
_FIX = "; fix it and run again"  # for a reason that names no fix of its own


def _sentence(error: dict[str, Any], where: str, allowed: Sequence[str], whole_table: bool = False) -> str:
    loc = tuple(error["loc"])
    kind, value = error["type"], error.get("input")
    shown = show(value, exact=error.get("exact", False))
    if kind == "extra_forbidden":
        use = f"; use one of {', '.join(allowed)}" if allowed else "; remove it"
        key = _table(loc) if isinstance(value, dict) else key_path(loc)  # a table as written: [modell]
        return f"{where}: {key} is not a key of {_table(loc[:-1])}{use}"
    if kind in _TABLES:
        return f"{where}: {_table(loc)}: {shown} is not a table; write it as [{'.'.join(map(str, loc))}]"
    if kind == "missing":
        return f"{where}: {key_path(loc)} is missing; add it"
    if kind == "value_error":  # a rule's own words, its fix included
        reason = str(error["ctx"]["error"])
        if whole_table:  # a model_validator's: the rule names the keys it relates
            return f"{where}: {_table(loc)}: {reason}" if loc else f"{where}: {reason}"
        return f"{where}: {key_path(loc)}: {shown} {reason}"
    if kind == "literal_error":
        return f"{where}: {key_path(loc)}: {shown} is not one of {error['ctx']['expected']}"
    reason = _REASONS.get(kind, error["msg"].lower())
    return f"{where}: {key_path(loc)}: {shown} {reason}{'' if ';' in reason else _FIX}"


def _keys_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys the table at ``loc`` allows: walks fields that are models, or tables (dicts) of models."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            current = info.annotation if info is not None else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]  # a table of tables: the key is a name, the value the model
        else:
            return []
        for arg in get_args(current) if get_origin(current) in (Union, UnionType) else ():
            if arg is not type(None):
                current = arg  # an optional table: its model
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


_ABSENT = object()


def _raw(data: Any, loc: Sequence[Any]) -> Any:
    """The value at ``loc`` in the data as given, or ``_ABSENT`` (an alias or a default filled in on the way)."""
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, (list, tuple)) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return _ABSENT
    return data


def validate(model: type[M], data: Any, where: str, loc: Sequence[str] = ()) -> M:
    """``data`` checked against ``model``; the first problem raises ``ConfigError`` as one sentence.

    ``where`` names the file (``times.toml``); ``loc`` is the table ``data``
    came from inside it (``("hardware",)`` for a study's ``[hardware]``), so
    paths read as the user wrote them. A ``model_validator``'s ``ValueError``
    names its own keys, so its sentence follows the table's name:

    >>> from pydantic import model_validator
    >>> class Nodes(BaseModel):
    ...     devices: Count
    ...     per_node: Count
    ...     @model_validator(mode="after")
    ...     def _whole_nodes(self):
    ...         if self.devices % self.per_node:
    ...             raise ValueError(f"devices: {self.devices} is not a multiple of per_node {self.per_node}")
    ...         return self
    >>> validate(Nodes, {"devices": 12, "per_node": 8}, "study.toml", ("hardware",))
    Traceback (most recent call last):
    pipesched.errors.ConfigError: study.toml: [hardware]: devices: 12 is not a multiple of per_node 8
    >>> validate(Nodes, {"devices": "12", "per_node": 8}, "study.toml", ("hardware",))
    Traceback (most recent call last):
    pipesched.errors.ConfigError: study.toml: [hardware].devices: "12" is not a whole number of at least 1
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first: dict[str, Any] = dict(exc.errors(include_url=False)[0])
        inner = tuple(first["loc"])
        allowed = _keys_at(model, inner[:-1]) if first["type"] == "extra_forbidden" else []
        whole_table = first["type"] == "value_error" and bool(_keys_at(model, inner))  # loc names a table
        first["loc"] = (*loc, *inner)
        raw = _raw(data, inner)
        if raw is not _ABSENT:  # the value as written (2.0, not the 2 a rule after the type check saw)
            first.update(input=raw, exact=True)
        raise ConfigError(_sentence(first, where, allowed, whole_table)) from None


def positive(value: float) -> float:
    """A positive finite number (``ValueError`` otherwise)."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError("is not a positive finite number" + _FIX)
    return value


def non_negative(value: float) -> float:
    """A finite number of at least zero (``ValueError`` otherwise)."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("is not a non-negative finite number" + _FIX)
    return value


def fraction(value: float) -> float:
    """A number in (0, 1], such as an efficiency (``ValueError`` otherwise)."""
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError("is not in (0, 1]; give a fraction such as 0.5")
    return value


def whole(at_least: int) -> Callable[[Any], int]:
    """The rule of a whole number of at least ``at_least`` (``ValueError`` otherwise; true is not 1).

    Checked before pydantic's own int check, so a string or a bool gets this reason too.
    """

    def rule(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
            raise ValueError(f"is not a whole number of at least {at_least}")
        return value

    return rule


#: A whole number of at least 1, such as a number of layers.
count = whole(1)


def one_of(options: Sequence[str] | Callable[[], Sequence[str]]) -> BeforeValidator:
    """A name among ``options`` (or among what a function returns when checked, for a registry that grows)."""

    def rule(value: Any) -> str:
        allowed = options() if callable(options) else options
        if value not in allowed:
            raise ValueError(f"is not one of {', '.join(allowed)}")
        return value

    return BeforeValidator(rule)


def text(example: str) -> BeforeValidator:
    """A string, refused with an example of the key's own (``"0,0,1,1"``), not pydantic's generic one."""

    def rule(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f'is not a string; write it in quotes, e.g. "{example}"')
        return value

    return BeforeValidator(rule)


def reason(message: str, value: Any, flag: str = "") -> str:
    """A run's message about ``flag value`` as a rule's reason: without them, since :func:`validate` names both.

    >>> reason("--layers '4,x' is malformed at 'x'", "4,x", "--layers")
    "is malformed at 'x'"
    """
    message = message.removeprefix(flag).strip()
    for head in (repr(value), str(value).strip()):
        if message.startswith(head + " "):
            return message[len(head) + 1 :]
    return message


def size(value: Any) -> int:
    """Bytes, written as a number or a string with a unit (``"16GB"``), as ``--device-memory`` reads them."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError('is not a size; write bytes or a number with a unit, e.g. "16GB"')
    try:
        return parse_bytes(str(value), flag="")
    except ConfigError as exc:
        raise ValueError(reason(str(exc), value)) from None


def _non_empty(value: Any) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"is not a list; write it in brackets, e.g. [{show(value)}]")
    if not value:
        raise ValueError("is not a non-empty list; give at least one value, or leave the key out")
    return tuple(value)  # a TOML list; kept as a tuple, so the model stays hashable


PositiveNumber = Annotated[float, AfterValidator(positive)]
NonNegativeNumber = Annotated[float, AfterValidator(non_negative)]
Fraction = Annotated[float, AfterValidator(fraction)]
Count = Annotated[int, BeforeValidator(count)]
WholeNumber = Annotated[int, BeforeValidator(whole(0))]
Size = Annotated[int, BeforeValidator(size)]
#: A non-empty list of ``T`` (``NonEmpty[Count]``), held as a tuple.
NonEmpty = Annotated[tuple[T, ...], BeforeValidator(_non_empty)]
