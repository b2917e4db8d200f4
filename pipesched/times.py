"""Measured times: the times file (``--times times.toml``) and the per-stage times it gives the ``measured`` cost model.

A times file holds what a profiler measured: per stage (or per layer) the
forward F, the backward B or its input-gradient and weight-gradient parts I
and W, the recompute R, and per stage boundary the send time and the bytes
sent. The complete schema::

    time_unit = "ms"        # required: "s", "ms" or "us"; every time below is in it
    rows = 4                # optional: the micro-batch size the times were measured at
                            # (then a micro-batch of r rows takes r / rows of each time)

    [default]               # optional: applies to every stage (or layer) without its own table
    F = 1.0                 # forward of one micro-batch (required, here or in the stage's table)
    B = 2.0                 # full backward; B = I + W, and only B given means I = W = B / 2
    send = 0.05             # one boundary transfer of one micro-batch, either direction
    activation_bytes = 1048576  # bytes of that transfer (used over the links when send is not given)

    [stage.3]               # stage 3 (stages count from 0, chunks included) overrides [default]
    F = 1.2
    I = 1.1                 # I and W together instead of B (I alone, or W alone, is an error)
    W = 0.9
    R = 1.2                 # recompute before the backward under --remat; defaults to F

    [stage.3.spread]        # optional: the spread of each measurement (written by `pipesched profile`)
    F = 0.01

    [about]                 # optional, free: who measured, where, how (tool, machine, repeats)
    tool = "pipesched profile"

``[layer.N]`` tables (N counts the model's layers from 0) may replace the
``[stage.N]`` tables: a stage's F, I, W and R are then the sums over its
layers, as the partition assigns them, and its send and bytes are those of
its last layer's output. One file uses stage or layer tables, not both.

Rules, each one stated so that a reader can check a simulated timeline by
hand:

- A table that gives any of B, I, W replaces the default's whole backward,
  so a stage never mixes its own I with the default's W.
- B given with I or W: the other part is B minus it; all three given: B
  must equal I + W.
- Times are converted to seconds, so measured runs read in the same unit
  as ``flops`` runs and their links (which are in seconds) add up with them.
- Compute times must be positive, send times and bytes may be zero.

>>> import tempfile, os
>>> with tempfile.TemporaryDirectory() as folder:
...     path = os.path.join(folder, "times.toml")
...     _ = open(path, "w").write('time_unit = "ms"\\n[default]\\nF = 2\\nB = 4\\n[stage.1]\\nF = 3\\nI = 1\\nW = 2\\n')
...     times = load_times(path)
>>> [(s.F, s.I, s.W, s.R) for s in times.stage_times(2)]
[(0.002, 0.002, 0.002, 0.002), (0.003, 0.001, 0.002, 0.003)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .errors import ConfigError
from .files import read_toml
from .model import parse_layers
from .partition import Partition
from .units import count

if TYPE_CHECKING:
    from .times_file import _Table

__all__ = ["TIME_UNITS", "StageTimes", "Times", "load_times", "parse_times", "STAGE_TIMES_ONLY"]

#: Seconds in one of each time unit a times file may use.
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class StageTimes:
    """One stage's measured times in seconds; ``send`` and ``activation_bytes`` are None when not measured.

    >>> StageTimes(F=1.0, I=0.5, W=1.5, R=1.0).B
    2.0
    """

    F: float
    I: float  # noqa: E741 - the field's standard name
    W: float
    R: float
    send: float | None = None
    activation_bytes: int | None = None

    @property
    def B(self) -> float:
        """The full backward: B = I + W."""
        return self.I + self.W

    def time(self, op: str) -> float:
        """The time of ``op`` (F, B, I, W or R)."""
        return self.B if op == "B" else float(getattr(self, op))


def _backward(table: _Table, where: str, name: str) -> tuple[float, float] | None:
    """(I, W) from a table's B, I and W, None when it gives none of them."""
    b, i, w = table.B, table.I, table.W
    if b is None and i is None and w is None:
        return None
    if b is None:
        if i is None or w is None:
            given, lacking = ("I", "W") if w is None else ("W", "I")
            raise ConfigError(
                f"{where}: {name} gives {given} but not {lacking}; give both I and W, or the full backward B"
            )
        return i, w
    if i is None and w is None:
        return b / 2, b / 2  # only B measured: split evenly, as the unit and flops models do
    if i is not None and w is not None:
        if not math.isclose(i + w, b, rel_tol=1e-9):
            raise ConfigError(f"{where}: {name} has B = {b:g} but I + W = {i + w:g}; give B or I and W, not both")
        return i, w
    part, key = (i, "I") if i is not None else (w, "W")
    assert part is not None
    if part >= b:
        raise ConfigError(f"{where}: {name}.{key} = {part:g} is not less than B = {b:g}; B is I + W")
    return (part, b - part) if key == "I" else (b - part, part)


@dataclass(frozen=True)
class Times:
    """A validated times file; :meth:`stage_times` gives each stage's times for a schedule.

    ``tables`` maps a stage (or layer, when ``per_layer``) to its own table;
    ``default`` applies to the rest.
    """

    path: str
    time_unit: str
    rows: int | None
    default: _Table | None
    tables: dict[int, _Table]
    per_layer: bool
    about: dict[str, Any] = field(default_factory=dict)

    def check_model(self, layers: str | None, model: str | None, seq_len: int | None) -> None:
        """Refuse a run of another model than the one ``[about]`` says was measured (``pipesched profile``
        writes ``layers``, or ``model`` and ``seq_len``); a file whose [about] names none is taken as it is."""
        ran = {"layers": layers} if model is None else {"model": model, "seq_len": seq_len}
        for key, value in ran.items():
            measured = self.about.get(key)
            if measured is None or value is None:
                continue
            same = (  # widths as widths: "8x3" is "8,8,8"
                parse_layers(str(measured)) == parse_layers(str(value))
                if key == "layers"
                else str(measured) == str(value)
            )
            if not same:
                flag = "--" + key.replace("_", "-")
                raise ConfigError(
                    f"{self.path}: [about].{key} says these times were measured with {flag} {measured}, but the "
                    f"run has {flag} {value}; profile this run's model (pipesched profile) or fix [about].{key}"
                )

    def check_partition(self, sizes: Sequence[int]) -> None:
        """Refuse per-stage times on another split than the one ``[about].partition`` says was measured."""
        measured = self.about.get("partition")
        ran = ",".join(map(str, sizes))
        if not self.per_layer and measured is not None and str(measured).replace(" ", "") != ran:
            raise ConfigError(
                f"{self.path}: [about].partition says these stage times were measured on --partition {measured}, "
                f"but the run splits its layers {ran}; run --partition {measured}, or profile per layer "
                "(pipesched profile without --devices) so that any split can be timed"
            )

    @property
    def seconds(self) -> float:
        """Seconds in one ``time_unit``."""
        return TIME_UNITS[self.time_unit]

    def _resolve(self, index: int, kind: str) -> StageTimes:
        """The merged times of stage (or layer) ``index``, in seconds."""
        own = self.tables.get(index)
        name = f"[{kind}.{index}]" if own is not None else "[default]"
        if own is None and self.default is None:
            plural = "stages" if kind == "stage" else "layers"
            raise ConfigError(
                f"{self.path}: {kind} {index} has no times; add a [{kind}.{index}] table "
                f"or a [default] table for all {plural}"
            )
        tables = [t for t in (self.default, own) if t is not None]  # the default first, so own keys win
        pick = {
            key: next((getattr(t, key) for t in reversed(tables) if getattr(t, key) is not None), None)
            for key in ("F", "R", "send", "activation_bytes")
        }
        if own is not None and own.F is not None and own.R is None:
            pick["R"] = own.F  # R defaults to F: a table that times its own forward recomputes in that time
        backward = next((b for t in reversed(tables) if (b := _backward(t, self.path, name)) is not None), None)
        if pick["F"] is None:
            raise ConfigError(f"{self.path}: {kind} {index} has no forward time F; add F to {name}")
        if backward is None:
            raise ConfigError(f"{self.path}: {kind} {index} has no backward time; add B, or I and W, to {name}")
        s = self.seconds
        forward = pick["F"] * s
        return StageTimes(
            F=forward,
            I=backward[0] * s,
            W=backward[1] * s,
            R=pick["R"] * s if pick["R"] is not None else forward,
            send=pick["send"] * s if pick["send"] is not None else None,
            activation_bytes=pick["activation_bytes"],
        )

    def stage_times(self, num_stages: int, partition: Partition | None = None) -> list[StageTimes]:
        """Each of the schedule's ``num_stages`` stages' times in seconds (``ConfigError`` naming a gap).

        ``partition`` (per stage, its layers) is needed only for a file of
        ``[layer.N]`` tables; a stage's F, I, W and R are then its layers'
        sums and its send is its last layer's.
        """
        if not self.per_layer:
            extra = [n for n in self.tables if n >= num_stages]
            if extra:
                raise ConfigError(
                    f"{self.path}: [stage.{extra[0]}] names a stage the schedule does not have "
                    f"(it has {count(num_stages, 'stage')}, 0 to {num_stages - 1}); remove it or use more stages"
                )
            return [self._resolve(s, "stage") for s in range(num_stages)]
        if partition is None or len(partition) != num_stages:
            raise ConfigError(f"{self.path}: [layer.N] tables need the model's partition into {num_stages} stages")
        self._check_layers(sum(len(p) for p in partition))
        stages = []
        for layers in partition:
            parts = [self._resolve(n, "layer") for n in layers]
            last = parts[-1]
            stages.append(
                StageTimes(
                    F=sum(p.F for p in parts),
                    I=sum(p.I for p in parts),
                    W=sum(p.W for p in parts),
                    R=sum(p.R for p in parts),
                    send=last.send,
                    activation_bytes=last.activation_bytes,
                )
            )
        return stages

    def _check_layers(self, num_layers: int) -> None:
        extra = [n for n in self.tables if n >= num_layers]
        if extra:
            raise ConfigError(
                f"{self.path}: [layer.{extra[0]}] names a layer the model does not have "
                f"(it has {count(num_layers, 'layer')}, 0 to {num_layers - 1}); remove it or check the model"
            )

    def layer_costs(self, num_layers: int, rows: int) -> list[float]:
        """Each layer's F + I + W in seconds on a micro-batch of ``rows`` rows: what ``--partition balanced``
        balances when the file gives per-layer times (``ConfigError`` for per-stage times, or a gap)."""
        if not self.per_layer:
            raise ConfigError(f"{self.path}: {STAGE_TIMES_ONLY}")
        self._check_layers(num_layers)
        factor = self.scale(rows)
        return [(t.F + t.I + t.W) * factor for t in (self._resolve(n, "layer") for n in range(num_layers))]

    def scale(self, rows: int) -> float:
        """The factor a micro-batch of ``rows`` rows multiplies each time by: rows / the file's ``rows``, else 1."""
        return 1.0 if self.rows is None else rows / self.rows


#: Why per-stage times cannot be balanced, wherever a balanced partition meets them.
STAGE_TIMES_ONLY = (
    "'balanced' moves layers between stages, but [stage.N] times belong to the stages they were measured on; "
    "give the measured partition's layer counts, e.g. 2,3,3,3, or per-layer times ([layer.N] tables, as "
    "pipesched profile writes them)"
)


def parse_times(data: dict[str, object], path: str) -> Times:
    """A parsed times file (``data`` as TOML reads it) checked and made ``Times``; ``path`` names it in errors."""
    from .schema import validate  # pydantic: imported when a file is read, not by every run
    from .times_file import _File

    checked = validate(_File, data, path)
    if checked.stage and checked.layer:
        raise ConfigError(
            f"{path}: has both [stage.N] and [layer.N] tables; give per-stage or per-layer times, not both"
        )
    kind = "layer" if checked.layer else "stage"
    tables: dict[int, _Table] = {}
    for key, table in (checked.layer or checked.stage).items():
        if not key.isdigit():
            raise ConfigError(f"{path}: [{kind}.{key}] is not a {kind} number; write [{kind}.0], [{kind}.1], ...")
        if str(int(key)) != key:  # [stage.01] would silently stand for [stage.1]
            raise ConfigError(f"{path}: [{kind}.{key}] has a leading zero; write [{kind}.{int(key)}]")
        tables[int(key)] = table
    if not tables and checked.default is None:
        raise ConfigError(f"{path}: has no times; add a [default] table or [stage.N] tables with F and B")
    return Times(
        path=path,
        time_unit=checked.time_unit,
        rows=checked.rows,
        default=checked.default,
        tables=dict(sorted(tables.items())),
        about=dict(checked.about),
        per_layer=bool(checked.layer),
    )


def load_times(path: str) -> Times:
    """The times file at ``path``, read and checked (``ConfigError`` as one sentence naming the key)."""
    return parse_times(read_toml(path, "times"), path)
