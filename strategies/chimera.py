"""Chimera (Li and Hoefler, "Chimera: Efficiently Training Large-Scale Neural Networks with Bidirectional
Pipelines", SC 2021, arXiv 2107.06925): two pipelines in opposite directions over the same K devices.

The model is cut into K stages (K even). The *down* pipeline places stage s
on device s, the *up* pipeline on device K-1-s, so device d holds stage d of
one and stage K-1-d of the other: two replicas of every stage, whose
gradients are all-reduced at the end of the step. Micro-batches come in
basic units of K, the first K/2 of a unit down and the other K/2 up.

The basic unit (N = D in the paper's section 3: a 1F1B pipeline each way,
merged). Call *near* the direction in which device d holds a stage of the
model's first half (down for d < K/2, up for the others) and *far* the
other; let a = K/2 - d for d < K/2, else d - K/2 + 1, and b = K/2 - a.
Device d runs, in the authors' code (Shigangli/Chimera, ``ChimeraBk``
branch, ``chimera_bert/bert/main_with_runtime.py``):

1. a forwards of near;
2. b times: a forward of far, then one of near;
3. a times: a forward of far, then a backward of far;
4. b times: a backward of near, then one of far;
5. a backwards of near.

M > K is the paper's *direct concatenation* of M/K basic
units: unit u+1's phase 1 becomes a times (a backward of near left from
unit u, then a forward of near), and only the last unit ends with phase 5
(the authors' ``main_with_runtime_direct.py``; their newer generator,
``chimera_pipeline_rank.py`` on the main branch, lists the same order for
every device). The paper's two variants are not planned here: forward
doubling (each forward slot carries two micro-batches, the authors'
``main_with_runtime_forward_doubling.py``) could be written as two
forwards back to back, holding up to 2K in flight against K; backward halving
(a backward of half a micro-batch) cannot be written with micro-batches of
one size.

For K=4, M=4 (stage s of micro-batches 0, 1 on device s; of 2, 3 on 3-s)::

    device 0: 0F0 0F1 3F2 3B2 3F3 3B3 0B0 0B1
    device 1: 1F0 2F2 1F1 2F3 2B2 1B0 2B3 1B1
    device 2: 1F2 2F0 1F3 2F1 2B0 1B2 2B1 1B3
    device 3: 0F2 0F3 3F0 3B0 3F1 3B1 0B2 0B3

The paper's Table 2 (bubble ratio (D-2)/(2N+D-2), weights of two stages,
activations between (D/2+1) and D micro-batches' worth per worker) counts
D - 2 idle pass slots per worker beside its 2N busy ones, every slot
alike. pipesched's simulation of this order, free links, each stage's
forward F and full backward B alike: every device idles
(K/2 - 1)(F + B + |B - F|(2M/K - 1)) (``formulas.chimera_idle``, found by
simulation). With F = B that is the paper's (K - 2)F and its ratio (held
over even K <= 8, one to three units, in the tests); under unit cost (F = 1, B = 2) the step
is 3M + (K - 2)(M/K + 1) (``formulas.chimera_unit_makespan``), more than
the paper's ratio, since a backward twice a forward's length opens gaps in
the basic unit and between units (the paper's intermediate bubbles). Peak
in flight on device d: K/2 + 1 + min(d, K-1-d) stage-micro-batches, derived
in ``formulas.chimera_peak_inflight``: K/2 + 1 at the ends, K in the middle,
Table 2's range. Needs K even and M a multiple of K.

>>> print(Chimera().plan(devices=2, microbatches=2))
device 0: 0F0 1F1 1B1 0B0
device 1: 0F1 1F0 1B0 0B1
"""

from __future__ import annotations

from pipesched import Action, Schedule, formulas
from pipesched.compose import require_one_chunk
from pipesched.errors import ConfigError

__all__ = ["Chimera"]


def _refuse(devices: int, microbatches: int) -> None:
    """One sentence for a K or M the construction cannot take, naming the nearest that it can."""
    if devices % 2:
        nearest = f"{devices - 1} or {devices + 1}" if devices > 1 else "2"
        raise ConfigError(
            f"chimera runs two pipelines in opposite directions over the devices and needs an even number of "
            f"them, not --devices {devices}; use {nearest}"
        )
    if microbatches % devices:
        below, above = microbatches // devices * devices, (microbatches // devices + 1) * devices
        nearest = f"{below} or {above}" if below else str(above)
        raise ConfigError(
            f"chimera concatenates basic units of K = {devices} micro-batches, half down and half up (as "
            f"Li and Hoefler's code does), and {devices} does not divide --microbatches {microbatches}; use {nearest}"
        )


def _device_order(d: int, devices: int, microbatches: int) -> list[Action]:
    half = devices // 2
    near_is_down = d < half
    a = half - d if near_is_down else d - half + 1
    b = half - a
    # each direction's stage on this device, and its micro-batches: unit u sends u*K .. u*K+K/2-1 down, the rest up
    stage = {"down": d, "up": devices - 1 - d}
    first = {"down": 0, "up": half}
    near, far = ("down", "up") if near_is_down else ("up", "down")
    done = {(direction, op): 0 for direction in ("down", "up") for op in "FB"}
    order: list[Action] = []

    def run(op: str, direction: str) -> None:
        i = done[(direction, op)]
        done[(direction, op)] = i + 1
        order.append(Action(stage[direction], op, i // half * devices + first[direction] + i % half))

    for unit in range(microbatches // devices):
        for _ in range(a):  # 1
            if unit:
                run("B", near)
            run("F", near)
        for _ in range(b):  # 2
            run("F", far)
            run("F", near)
        for _ in range(a):  # 3
            run("F", far)
            run("B", far)
        for _ in range(b):  # 4
            run("B", near)
            run("B", far)
    for _ in range(a):  # 5
        run("B", near)
    return order


class Chimera:
    """Chimera: a down and an up pipeline over the same K devices, each device a stage of both."""

    name = "chimera"

    def plan(self, devices: int, microbatches: int, chunks: int = 1) -> Schedule:
        require_one_chunk(chunks, "chimera cuts the model into K stages, one per device in each direction")
        _refuse(devices, microbatches)
        return Schedule([_device_order(d, devices, microbatches) for d in range(devices)])

    def bubble(self, devices: int, microbatches: int, chunks: int = 1) -> float | None:
        return formulas.chimera_bubble(devices, microbatches) if formulas.chimera_runs(devices, microbatches) else None
