"""The schedule as data: per device, an ordered list of actions, and the rules a valid one keeps.

An action is ``(stage, op, microbatch)`` written as in PyTorch's pipelining
schedules: ``2F0`` is stage 2's forward of micro-batch 0, ``B`` a full
backward, ``I`` the backward for the input only and ``W`` the backward for the
weights only.

>>> s = Schedule.parse(["0F0 0F1 0B1 0B0", "1F0 1F1 1B1 1B0"])
>>> s.devices, s.num_stages, s.microbatches
(2, 2, 2)
>>> print(s)
device 0: 0F0 0F1 0B1 0B0
device 1: 1F0 1F1 1B1 1B0
>>> validate(s, devices=2, microbatches=2)

An ``Overlap`` runs the forward of one micro-batch and the backward of another
as one overlapped kernel (DualPipe's F&B), written as PyTorch writes its
``OVERLAP_F_B`` action:

>>> parse_action("(0F1;3B0)OVERLAP_F_B")
Overlap('(0F1;3B0)OVERLAP_F_B')
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, NamedTuple, Sequence, Union

from .errors import ScheduleError

__all__ = ["Action", "Overlap", "Item", "Schedule", "validate", "parse_action", "expand", "OPS", "COMM_OPS", "OVERLAP"]

#: F forward, B full backward, I input-gradient only, W weight-gradient only.
OPS = ("F", "B", "I", "W")
#: Communication points, as in PyTorch's pipelining runtime: a stage issues the
#: send of its output (SEND_F) or input-gradient (SEND_B) at this point, posts
#: the receive of its input (RECV_F) or output-gradient (RECV_B) here (only the
#: action that needs the data waits for it, unless point-to-point is blocking:
#: see ``pipesched.links``), and a replicated stage all-reduces its gradients
#: here (REDUCE_GRAD, no micro-batch).
COMM_OPS = ("SEND_F", "RECV_F", "SEND_B", "RECV_B", "REDUCE_GRAD")
_ACTION = re.compile(r"([0-9]+)(SEND_F|RECV_F|SEND_B|RECV_B|REDUCE_GRAD|[FBIW])([0-9]*)")
#: The op of an overlapped forward-backward pair, PyTorch's name for it.
OVERLAP = "OVERLAP_F_B"
_OVERLAP = re.compile(r"\(([^;()]*);([^;()]*)\)" + OVERLAP)


class Action(NamedTuple):
    """One unit of work: ``op`` of ``stage`` on micro-batch ``microbatch``.

    >>> Action.parse("2F0")
    Action('2F0')
    >>> Action(1, "B", 3).stage
    1
    """

    stage: int
    op: str
    microbatch: int | None  # None for REDUCE_GRAD

    @classmethod
    def parse(cls, text: str) -> "Action":
        match = _ACTION.fullmatch(text.strip())
        if not match or (match.group(2) == "REDUCE_GRAD") != (match.group(3) == ""):
            raise ScheduleError(
                f"action {text!r} is not in the form STAGE OP MICROBATCH with OP one of "
                f"{', '.join(OPS + COMM_OPS)} (REDUCE_GRAD without a micro-batch); write e.g. 2F0, 1B3, 0SEND_F2"
            )
        return cls(int(match.group(1)), match.group(2), int(match.group(3)) if match.group(3) else None)

    def __str__(self) -> str:
        return f"{self.stage}{self.op}{'' if self.microbatch is None else self.microbatch}"

    def __repr__(self) -> str:
        return f"Action('{self}')"


class Overlap(NamedTuple):
    """A forward and a backward of other micro-batches, run together as one overlapped kernel.

    DualPipe (DeepSeek-AI, 2024) overlaps the forward of one chunk with the
    backward of another so that each one's communication hides behind the
    other's computation. The pair starts when both inputs have arrived, both
    outputs leave when it ends, and it lasts as the cost model's ``overlap``
    rule says (see ``pipesched.cost``). Text form as PyTorch's:
    ``(0F4;7B0)OVERLAP_F_B``.

    >>> pair = Overlap(Action(0, "F", 4), Action(7, "B", 0))
    >>> str(pair), pair.op
    ('(0F4;7B0)OVERLAP_F_B', 'OVERLAP_F_B')
    """

    forward: Action
    backward: Action

    @property
    def op(self) -> str:
        """``OVERLAP_F_B``: code that reads ``.op`` sees the pair as one action (a property, not a field)."""
        return OVERLAP

    def __str__(self) -> str:
        return f"({self.forward};{self.backward}){OVERLAP}"

    def __repr__(self) -> str:
        return f"Overlap('{self}')"


#: What a device's action list holds.
Item = Union[Action, Overlap]


def parse_action(text: str) -> Item:
    """An action (``2F0``) or an overlapped pair (``(0F4;7B0)OVERLAP_F_B``) from its text."""
    match = _OVERLAP.fullmatch(text.strip())
    if match:
        return Overlap(Action.parse(match.group(1)), Action.parse(match.group(2)))
    if OVERLAP in text:
        raise ScheduleError(
            f"action {text!r} is not an overlapped pair; write one forward and one backward as (0F4;7B0){OVERLAP}"
        )
    return Action.parse(text)


def expand(items: Iterable[Item]) -> Iterator[Action]:
    """The actions of ``items`` with each overlapped pair as its forward, then its backward.

    >>> [str(a) for a in expand(Schedule.parse(["0F0 (0F1;0B0)OVERLAP_F_B 0B1"]).actions[0])]
    ['0F0', '0F1', '0B0', '0B1']
    """
    for item in items:
        if type(item) is Overlap:
            yield item.forward
            yield item.backward
        else:
            yield item  # type: ignore[misc]  # so an Action: mypy does not narrow the else of a type() test


class Schedule:
    """Per device, the ordered actions it runs. Placement is read off the schedule.

    Args:
        per_device: for each device, its actions (``Action``, ``Overlap``, or text like ``"2F0"``).
        replicas: how many data-parallel copies of one pipeline the devices are (``pipesched.layout``);
            the unit cost model charges a stage of one copy.
    """

    __slots__ = ("actions", "replicas", "_facts")

    def __init__(self, per_device: Sequence[Iterable[Item | str]], replicas: int = 1):
        self.replicas = replicas
        self.actions: tuple[tuple[Item, ...], ...] = tuple(
            tuple(a if type(a) is Action or isinstance(a, (Action, Overlap)) else parse_action(a) for a in device)
            for device in per_device
        )
        # (the actions they were read from, stages, micro-batches, placement, ops): asked for several times per run
        # (planning, validation, the engine, the memory division), read in one pass over the actions, once
        self._facts: tuple[object, int, int, dict[int, tuple[int, ...]], frozenset[str]] | None = None

    def _read(self) -> tuple[object, int, int, dict[int, tuple[int, ...]], frozenset[str]]:
        """One more than the largest stage and micro-batch any action names, the placement (see there), and
        the ops named."""
        if self._facts is None or self._facts[0] is not self.actions:
            stages, microbatches = -1, -1
            where: dict[int, set[int]] = {}
            ops: set[str] = set()
            for d, device in enumerate(self.actions):
                forwards = set()
                for a in expand(device):
                    if a.stage > stages:
                        stages = a.stage
                    if a.microbatch is not None and a.microbatch > microbatches:
                        microbatches = a.microbatch
                    op = a.op
                    ops.add(op)
                    if op == "F":
                        forwards.add(a.stage)
                for stage in forwards:
                    where.setdefault(stage, set()).add(d)
            placement = {s: tuple(sorted(ds)) for s, ds in sorted(where.items())}
            self._facts = (self.actions, 1 + stages, 1 + microbatches, placement, frozenset(ops))
        return self._facts

    @classmethod
    def parse(cls, rows: Sequence[str]) -> "Schedule":
        """One whitespace-separated string of actions per device."""
        return cls([row.split() for row in rows])

    @property
    def devices(self) -> int:
        return len(self.actions)

    @property
    def num_stages(self) -> int:
        return self._read()[1]

    @property
    def stages_per_device(self) -> int:
        """v, the most stages one device holds: 2 on a V or in a bidirectional pipeline (DualPipe, Chimera), v
        looped; 1 where one stage is replicated over the devices (data parallelism)."""
        return max((len({a.stage for a in expand(device)}) for device in self.actions), default=1)

    @property
    def microbatches(self) -> int:
        return self._read()[2]

    @property
    def overlaps(self) -> bool:
        """Whether any device runs an overlapped pair (whose length the cost model's overlap rule sets)."""
        return any(type(a) is Overlap for device in self.actions for a in device)

    @property
    def ops(self) -> frozenset[str]:
        """Every op an action names, an overlapped pair's by its two parts' (``F``, ``B``, ``SEND_F`` ...).

        >>> sorted(Schedule.parse(["0F0 0I0 0W0"]).ops)
        ['F', 'I', 'W']
        """
        return self._read()[4]

    def placement(self) -> dict[int, tuple[int, ...]]:
        """For each stage, the devices that run its forwards (several means replicas), stages in order."""
        return dict(self._read()[3])  # a copy: the caller may change it

    def table(self) -> str:
        """Step-by-device grid, one column per device, as in the papers' diagrams."""
        steps = max((len(device) for device in self.actions), default=0)
        cells = [[str(device[i]) if i < len(device) else "" for device in self.actions] for i in range(steps)]
        width = max([len(f"device {self.devices - 1}")] + [len(c) for row in cells for c in row])
        header = " ".join(f"{'device ' + str(d):<{width}}" for d in range(self.devices))
        return "\n".join([header.rstrip()] + [" ".join(f"{c:<{width}}" for c in row).rstrip() for row in cells])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.actions == other.actions

    def __hash__(self) -> int:
        return hash(self.actions)

    def __str__(self) -> str:
        return "\n".join(f"device {d}: " + " ".join(map(str, a)) for d, a in enumerate(self.actions))

    def __repr__(self) -> str:
        return f"Schedule(devices={self.devices}, stages={self.num_stages}, microbatches={self.microbatches})"


#: What the validator has seen: each action (or REDUCE_GRAD with its device) -> (device, position).
_Seen = dict[Union[Action, tuple[Any, ...]], tuple[int, int]]


def validate(schedule: Schedule, devices: int, microbatches: int) -> None:
    """Raise ``ScheduleError`` naming device, position, action and rule if ``schedule`` is invalid.

    The rules: the schedule has ``devices`` devices; stages are numbered from 0
    with none skipped; every (stage, micro-batch) has exactly one F and either
    one B or one I and one W; each runs once, on the device that ran its F, and
    after it (W after I).
    """
    if schedule.devices != devices:
        raise ScheduleError(
            f"the schedule has {schedule.devices} devices but {devices} were asked for; plan one action list per device"
        )
    if not any(schedule.actions):
        raise ScheduleError("the schedule has no actions; plan each stage's forward and backward")
    # each action -> (device, position) where it runs; a REDUCE_GRAD is keyed with its device. Keys are
    # Actions, looked up by plain tuples too (equal, and hashed alike): building an Action costs a Python call
    seen: _Seen = {}
    pairs = schedule.overlaps  # without overlapped pairs, each device's list is its actions as they are
    communicates = False
    for d, device in enumerate(schedule.actions):
        for pos, a in _positions(device) if pairs else enumerate(device):
            # the common case, checked without building messages: a well-formed action not seen before, and a
            # backward after its forward (W after its I) on this device; anything else takes the long way below
            if (
                type(a) is Action
                and a not in seen
                and type(a.stage) is int
                and a.stage >= 0
                and type(a.microbatch) is int
                and 0 <= a.microbatch < microbatches
            ):
                op = a.op
                if op == "F":
                    seen[a] = (d, pos)
                    continue
                if op == "B" or op == "I" or op == "W":
                    before = seen.get((a.stage, "I" if op == "W" else "F", a.microbatch))
                    if before is not None and before[0] == d:
                        seen[a] = (d, pos)
                        continue
            where = f"device {d}, position {pos}: {a}"
            if type(a) is Overlap:
                _check_pair(a, where)
                continue
            if not isinstance(a, Action):
                raise ScheduleError(
                    f"device {d}, position {pos} holds {a!r}, not an Action; build Action(stage, op, mb)"
                )
            fields = [("stage", a.stage)] + ([] if a.op == "REDUCE_GRAD" else [("micro-batch", a.microbatch)])
            for field, value in fields:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ScheduleError(f"{where} has {field} {value!r}; use a whole number of 0 or more")
            if a.op not in OPS + COMM_OPS:
                raise ScheduleError(f"{where} has op {a.op!r}; use one of {', '.join(OPS + COMM_OPS)}")
            if a.microbatch is not None and not 0 <= a.microbatch < microbatches:
                raise ScheduleError(
                    f"{where} names micro-batch {a.microbatch}, outside 0..{microbatches - 1}; "
                    f"plan only the {microbatches} micro-batches asked for"
                )
            key = (a, d) if a.op == "REDUCE_GRAD" else a  # REDUCE_GRAD: once per device holding the stage
            if key in seen:
                first = seen[key]
                raise ScheduleError(
                    f"{where} repeats the action first planned at device {first[0]}, position {first[1]}; "
                    "every action runs exactly once (REDUCE_GRAD once per device)"
                )
            seen[key] = (d, pos)
            if a.op in COMM_OPS:
                communicates = True
                continue  # checked once every compute action is known, below
            if a.op == "F":
                continue
            needs = Action(a.stage, "I" if a.op == "W" else "F", a.microbatch)
            if needs not in seen:
                later = [f"device {x}" for x, dev in enumerate(schedule.actions) if needs in expand(dev)]
                rule = (
                    f"comes before {needs} on the same device; a weight-gradient must follow its input-gradient"
                    if a.op == "W"
                    else f"comes before {needs} on the same device; a stage's backward must follow its forward"
                )
                if later and later[0] != f"device {d}":
                    rule = (
                        f"needs {needs}, which runs on {later[0]}; a backward must run on the device "
                        "that holds its forward's activations"
                    )
                raise ScheduleError(f"{where} {rule}" if later else f"{where} has no {needs} anywhere; plan {needs}")
            if seen[needs][0] != d:
                raise ScheduleError(
                    f"{where} needs {needs}, which runs on device {seen[needs][0]}; a backward must run "
                    "on the device that holds its forward's activations"
                )
    stages = schedule.num_stages
    if communicates:  # SEND, RECV and REDUCE_GRAD actions never take the fast path: none seen, none to check
        _validate_communication(schedule, seen, stages)
    if _complete(seen, stages, microbatches):
        return
    for s in range(stages):  # the long way, to name the first (stage, micro-batch) that lacks an action
        for m in range(microbatches):
            which = f"stage {s}, micro-batch {m}"
            if (s, "F", m) not in seen:
                raise ScheduleError(f"{which} has no forward {s}F{m}; plan every stage's forward for every micro-batch")
            full, split = (s, "B", m) in seen, (s, "I", m) in seen or (s, "W", m) in seen
            if full and split:
                raise ScheduleError(
                    f"{which} has both a full backward {s}B{m} and a split one ({s}I{m}/{s}W{m}); plan one or the other"
                )
            if not full and not ((s, "I", m) in seen and (s, "W", m) in seen):
                missing = f"{s}B{m}" if not split else (f"{s}W{m}" if (s, "I", m) in seen else f"{s}I{m}")
                raise ScheduleError(f"{which} has no {missing}; every forward needs its backward")


def _complete(seen: _Seen, stages: int, microbatches: int) -> bool:
    """Whether every (stage, micro-batch) has its F and one B or one I and one W, by counting.

    ``seen`` holds distinct actions with stage < ``stages`` and micro-batch <
    ``microbatches``, each B, I or W after its F (W after its I). So S·M
    forwards are all of them; B's and I's on distinct pairs, S·M together,
    cover every pair once; as many W's as I's are one per I. Counting is a
    pass over the actions, where asking for each pair's is four look-ups.
    """
    count = dict.fromkeys(OPS, 0)
    both = False  # a pair with both a B and an I
    for a in seen:
        if type(a) is Action and a.op in count:
            count[a.op] += 1
            if a.op == "I" and (a.stage, "B", a.microbatch) in seen:
                both = True
    pairs = stages * microbatches
    return not both and count["F"] == count["B"] + count["I"] == pairs and count["I"] == count["W"]


def _positions(device: Sequence[Item]) -> Iterator[tuple[int, Item]]:
    """(position, item) of a device's list, an overlapped pair as itself and then as its two actions."""
    for pos, item in enumerate(device):
        yield pos, item
        if type(item) is Overlap and _well_formed(item):
            yield pos, item.forward
            yield pos, item.backward


def _well_formed(pair: Overlap) -> bool:
    return isinstance(pair.forward, Action) and isinstance(pair.backward, Action)


def _check_pair(pair: Overlap, where: str) -> None:
    """A pair is one forward and one full or input backward; the backward cannot be the forward's own.

    A backward that needs the pair's forward through other stages (0F0 with
    1B0's gradient, say) is not caught here: the engine reports it as a
    deadlock naming the pair.
    """
    forward, backward = pair
    if not _well_formed(pair) or forward.op != "F" or backward.op not in ("B", "I"):
        raise ScheduleError(
            f"{where} pairs {forward} with {backward}; an overlapped pair is one forward and one backward (B or I), "
            f"e.g. (0F4;7B0){OVERLAP}"
        )
    if (backward.stage, backward.microbatch) == (forward.stage, forward.microbatch):
        raise ScheduleError(
            f"{where} overlaps {backward} with the forward it needs; pair it with another micro-batch's forward"
        )


def _validate_communication(schedule: Schedule, seen: _Seen, stages: int) -> None:
    """Each SEND after what it sends, each RECV before what needs it, on that action's device."""
    for d, device in enumerate(schedule.actions):
        for pos, a in enumerate(device):
            if a.op not in COMM_OPS or not isinstance(a, Action):
                continue
            where = f"device {d}, position {pos}: {a}"
            s, m = a.stage, a.microbatch
            if a.op == "REDUCE_GRAD":
                own = [i for i, b in _positions(device) if type(b) is Action and b.stage == s and b.op in "BW"]
                if not own:
                    raise ScheduleError(
                        f"{where} reduces a stage this device does not run; put it on a device of stage {s}"
                    )
                if own[-1] > pos:
                    raise ScheduleError(
                        f"{where} comes before {device[own[-1]]}; reduce a stage's gradients after its last backward"
                    )
                continue
            sends = a.op.startswith("SEND")
            forward = a.op.endswith("_F")
            if forward and ((sends and s + 1 >= stages) or (not sends and s == 0)):
                raise ScheduleError(
                    f"{where}: stage {s} has no {'next' if sends else 'previous'} stage to "
                    f"{'send to' if sends else 'receive from'}; remove it"
                )
            if not forward and ((sends and s == 0) or (not sends and s + 1 >= stages)):
                raise ScheduleError(
                    f"{where}: stage {s} has no {'previous' if sends else 'next'} stage to "
                    f"{'send to' if sends else 'receive from'}; remove it"
                )
            compute = [Action(s, op, m) for op in (("F",) if forward else ("B", "I")) if Action(s, op, m) in seen]
            if not compute:
                raise ScheduleError(f"{where} has no {s}{'F' if forward else 'B'}{m} to go with it; plan it")
            place = seen[compute[0]]
            if place[0] != d:
                raise ScheduleError(f"{where} must be on device {place[0]}, which runs {compute[0]}; move it there")
            if sends and place[1] > pos:
                raise ScheduleError(f"{where} comes before {compute[0]}, whose output it sends; move it after")
            if not sends and place[1] < pos:
                raise ScheduleError(f"{where} comes after {compute[0]}, which needs what it receives; move it before")
