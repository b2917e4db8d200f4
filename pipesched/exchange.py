"""Exchange schedules with PyTorch's ``torch.distributed.pipelining``: its action CSV, read and written.

PyTorch writes a schedule as one CSV row per rank, one action per cell, in its
action notation: ``2F0`` (stage 2, forward, micro-batch 0), ``1B3`` (full
backward), ``1I3`` and ``1W3`` (input- and weight-gradient), the
communication actions ``0SEND_F0``, ``1RECV_F0``, ``1SEND_B0``, ``0RECV_B0``,
``0REDUCE_GRAD``, ``(0F4;7B0)OVERLAP_F_B`` for an overlapped pair, and
``0UNSHARD`` / ``0RESHARD`` for sharded stages. An
empty cell is a bubble; pipesched writes each action in the column of its time
step (``to_torch_csv``), so that both of PyTorch's readers run it. pipesched's text form of an action is the same, so a
schedule crosses over unchanged:

- compute actions and SEND/RECV become actions of pipesched's schedule (a
  SEND issues the send of its output at that point instead of as soon as it
  is computed; a RECV posts the receive there, and only the action that needs
  the data waits for it: see ``pipesched.links``);
- REDUCE_GRAD places a replicated stage's gradient all-reduce;
- UNSHARD and RESHARD (FSDP's parameter gathering) are accepted and left out,
  with a note, since pipesched does not model sharded parameters.

>>> text = to_torch_csv(Schedule.parse(["0F0 0B0", "1F0 1B0"]))
>>> print(text, end="")
0F0,,,0B0
,1F0,1B0
>>> from_torch_csv(text).schedule == Schedule.parse(["0F0 0B0", "1F0 1B0"])
True
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field

from .errors import ScheduleError, StrategyError
from .schedule import OPS, OVERLAP, Action, Item, Schedule, expand, parse_action, validate

__all__ = ["Imported", "to_torch_csv", "time_steps", "from_torch_csv", "load_torch_csv", "FileSchedule"]

#: Actions pipesched accepts and leaves out: it does not model sharded parameters.
IGNORED = ("UNSHARD", "RESHARD")
# The actions that compute what another stage needs (W, SEND, RECV and REDUCE_GRAD compute nothing sent)
_SENDS_OUTPUT = ("F", "B", "I")


@dataclass
class Imported:
    """A schedule read from a CSV, where each action stood (its column, from 1), and notes on what was left out."""

    schedule: Schedule
    columns: list[list[int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def where(self, device: int, position: int) -> str:
        """``row R, column C`` of the CSV cell that holds the device's action at ``position``."""
        return f"row {device + 1}, column {self.columns[device][position]}"


def to_torch_csv(schedule: Schedule) -> str:
    """One row per rank, one compute action per cell (F, B, I, W, OVERLAP_F_B), columns aligned to time steps.

    PyTorch reads this form two ways, and it is written to be right under both:
    ``PipelineScheduleMulti`` itself runs column by column in lockstep, each
    rank receiving in step t what its neighbour computes in step t, so an
    action must stand in a later column than the action whose output it needs,
    with blank cells as bubbles (as PyTorch's own ``_dump_csv`` writes them);
    the runtime of the public multi-stage classes (``_PipelineScheduleRuntime``)
    skips blank cells and inserts its own sends and receives. Columns come from
    ``time_steps``. Communication actions are left out: both derive them from
    the compute order.

    Raises ``ScheduleError`` for a replicated stage (PyTorch places each stage
    on one rank: data parallelism, or a bidirectional pipeline such as
    DualPipe) and for a schedule that deadlocks.
    """
    placement = schedule.placement()
    replicated = [s for s, devices in placement.items() if len(devices) > 1]
    if replicated:
        s = replicated[0]
        raise ScheduleError(
            f"stage {s} runs on devices {', '.join(map(str, placement[s]))}; PyTorch's pipelining places each stage "
            "on one rank and refuses a replicated one, so neither data-parallel schedules nor bidirectional ones "
            "(dualpipe, chimera: each stage on two devices) can be exported (in PyTorch, data parallelism wraps the "
            "pipeline, e.g. with FSDP or DDP, instead of living inside the schedule; --format text prints any schedule)"
        )
    compute = [[a for a in actions if a.op in OPS or a.op == OVERLAP] for actions in schedule.actions]
    steps = time_steps(Schedule(compute))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for actions, columns in zip(compute, steps):
        row = [""] * (columns[-1] + 1 if columns else 0)
        for action, column in zip(actions, columns):
            row[column] = str(action)
        writer.writerow(row)
    return buffer.getvalue()


def time_steps(schedule: Schedule) -> list[list[int]]:
    """The column of each action when every action takes one time step (PyTorch's lockstep reading).

    An action's step is one past its device's previous action and one past the
    step of every action on another device whose output it needs (the forward
    of the stage before, the backward of the stage after). This is list
    scheduling under unit time, as PyTorch's ``_add_bubbles_to_actions`` places
    its zero-bubble orders.

    >>> time_steps(Schedule.parse(["0F0 0F1 0B0 0B1", "1F0 1F1 1B0 1B1"]))
    [[0, 1, 4, 5], [1, 2, 3, 4]]

    Raises ``ScheduleError`` if the schedule deadlocks (no action can be placed).
    """
    producer: dict[tuple[int, str, int | None], int] = {}  # (stage, F or B, micro-batch) -> device that computes it
    for d, actions in enumerate(schedule.actions):
        for a in expand(actions):
            if a.op in _SENDS_OUTPUT:
                producer[(a.stage, "F" if a.op == "F" else "B", a.microbatch)] = d  # B stands for B or I here
    done: dict[tuple[int, str, int | None], int] = {}
    steps: list[list[int]] = [[] for _ in schedule.actions]
    while True:
        progress = False
        for d, actions in enumerate(schedule.actions):
            while len(steps[d]) < len(actions):
                item = actions[len(steps[d])]
                step = steps[d][-1] + 1 if steps[d] else 0
                needs = [_input_of(a) for a in expand([item]) if a.op != "W"]
                ready = True
                for need in needs:
                    if need is None or producer.get(need, d) == d:  # none: the last stage; d: on this device
                        continue
                    if need not in done:
                        ready = False
                        break
                    step = max(step, done[need] + 1)
                if not ready:
                    break
                steps[d].append(step)
                for a in expand([item]):
                    if a.op in _SENDS_OUTPUT:
                        done[(a.stage, "F" if a.op == "F" else "B", a.microbatch)] = step
                progress = True
        if all(len(s) == len(a) for s, a in zip(steps, schedule.actions)):
            return steps
        if not progress:
            stuck = next(d for d, a in enumerate(schedule.actions) if len(steps[d]) < len(a))
            raise ScheduleError(
                f"device {stuck}'s {schedule.actions[stuck][len(steps[stuck])]} waits for an input that is never "
                "computed first: the schedule deadlocks, so it has no time steps; reorder its actions"
            )


def _input_of(action: Action) -> tuple[int, str, int | None] | None:
    """What ``action`` needs from another stage: the previous stage's forward, or the next stage's backward."""
    s, op, m = action
    if op == "F":
        return (s - 1, "F", m) if s > 0 else None
    return (s + 1, "B", m) if op in ("B", "I") else None


def from_torch_csv(text: str, source: str = "the CSV") -> Imported:
    """Parse PyTorch's action CSV; a bad cell fails naming its row and column (both from 1)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))  # a spreadsheet's byte-order mark is not a cell
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ScheduleError(
            f"{source} row {reader.line_num}: not CSV ({exc}); write one row of actions per rank"
        ) from None
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()  # trailing blank lines
    if not rows:
        raise ScheduleError(f"{source} has no rows; write one row of actions per rank")
    per_rank: list[list[Item]] = []
    columns: list[list[int]] = []
    ignored = 0
    for r, row in enumerate(rows, start=1):
        if not any(cell.strip() for cell in row):
            raise ScheduleError(f"{source} row {r} is empty; remove it, or write None in it for a rank that stays idle")
        actions, places = [], []
        for c, cell in enumerate(row, start=1):
            text_cell = cell.strip()
            if not text_cell or text_cell == "None":
                continue  # a bubble
            if re.fullmatch(r"[0-9]+(UNSHARD|RESHARD)", text_cell):
                ignored += 1
                continue
            try:
                actions.append(parse_action(text_cell))
            except ScheduleError as exc:
                raise ScheduleError(f"{source} row {r}, column {c}: {exc}") from None
            places.append(c)
        per_rank.append(actions)
        columns.append(places)
    notes = (
        [f"{ignored} UNSHARD/RESHARD actions left out: pipesched does not model sharded parameters"] if ignored else []
    )
    return Imported(Schedule(per_rank), columns, notes)


def load_torch_csv(path: str) -> Imported:
    """Read a schedule from a CSV file (see ``from_torch_csv``)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except OSError as exc:
        raise StrategyError(f"schedule file {path!r} cannot be read ({exc.strerror}); give an existing CSV") from None
    except UnicodeDecodeError:
        raise StrategyError(
            f"schedule file {path!r} is not UTF-8 text; give a CSV of actions such as 0F0,0B0"
        ) from None
    return from_torch_csv(text, source=os.path.basename(path))


def _locate(exc: ScheduleError, imported: Imported, source: str) -> str:
    """Turn the validator's 'device d, position p' into the CSV's row and column of that action."""
    message = str(exc)
    match = re.match(r"device (\d+), position (\d+): (.*)", message)
    if not match:
        return f"{source}: {message}"
    return f"{source} {imported.where(int(match.group(1)), int(match.group(2)))}: {match.group(3)}"


class FileSchedule:
    """A strategy that plans the schedule written in a CSV file: ``--strategy path/to/schedule.csv``.

    Its devices and micro-batches are the file's: one rank per row, and one
    more than the largest micro-batch number.
    """

    def __init__(self, path: str):
        self.path = path
        self.name = os.path.basename(path)
        imported = load_torch_csv(path)
        self.schedule, self.notes = imported.schedule, imported.notes
        stages, devices = self.schedule.num_stages, max(self.schedule.devices, 1)
        self.default_chunks = stages // devices if stages % devices == 0 and stages > devices else 1
        try:
            validate(self.schedule, self.schedule.devices, max(self.schedule.microbatches, 1))
        except ScheduleError as exc:
            raise ScheduleError(_locate(exc, imported, self.name)) from None

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        if (devices, microbatches) != (self.schedule.devices, self.schedule.microbatches):
            raise ValueError(
                f"the schedule in {self.name} has {self.schedule.devices} ranks and "
                f"{self.schedule.microbatches} micro-batches; run it with --devices {self.schedule.devices} "
                f"--microbatches {self.schedule.microbatches}"
            )
        return self.schedule

    def stages(self, devices: int, chunks: int = 1) -> int:
        """The file's stages, for the checks made before planning."""
        return self.schedule.num_stages
