"""What each action computes: the real NumPy stage passes, or stand-ins of the same shapes.

The engine hands every action to a *workload*. ``NumpyWorkload`` runs the real
forward, input-gradient and weight-gradient of a stage, accumulates gradients
per device and sums the loss. ``ShapeWorkload`` (``--no-compute``) produces
``Buffer`` stand-ins with the byte counts the real arrays would have, so the
engine's timing and memory accounting are identical and only NumPy is skipped.

What a device holds for a micro-batch between its forward and backward is a
``Held``: the activations kept for backward (or only the stage input under
re-materialization), then, after an input-gradient (I), what the deferred
weight-gradient (W) still needs.

>>> from pipesched.model import layers_from_widths
>>> work = ShapeWorkload(layers_from_widths([4, 3, 2]), stages=(range(0, 1), range(1, 2)), rows=[5])
>>> out, held = work.forward(0, 0, None, keep=True)
>>> out.nbytes, sum(b.nbytes for b in held.buffers())  # 5 rows x 3 floats out; input 4 + output 3 kept
(120, 280)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Sequence

import numpy as np

from . import model as nn
from .model import Layer, Model, Params

__all__ = ["Held", "Buffer", "Workload", "NumpyWorkload", "ShapeWorkload", "StageWidths"]


class Buffer:
    """Stand-in for an array under ``--no-compute``: only its size matters, and its identity.

    ``nbytes`` is already in the run's precision (``pipesched.precision.nbytes``).
    """

    __slots__ = ("nbytes", "entry")

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        # its count on the device that counts it (pipesched.memory: which device, holders per role, the role of
        # its bytes), kept here rather than in a table keyed by identity: the shape-only engine holds and
        # releases a stand-in several times per action
        self.entry: list[Any] | None = None

    def __repr__(self) -> str:
        return f"Buffer({self.nbytes})"


@dataclass(slots=True)
class Held:
    """Arrays a device keeps for one (stage, micro-batch) until its backward is done.

    ``acts`` are the layer inputs (plus the output where a ReLU mask or the loss
    needs it); under re-materialization only ``[stage input]`` with ``remat``.
    After I, ``dzs`` holds the pre-activation gradients W needs.
    """

    acts: list[Any]
    dzs: list[Any] | None = None
    remat: bool = False

    def buffers(self) -> list[Any]:
        """Every array held, for memory accounting."""
        return self.acts + self.dzs if self.dzs else self.acts


class Workload(Protocol):
    """What the engine asks of a workload, per (stage, micro-batch).

    A workload with tied weights also states ``ties``: (stage a, stage b,
    bytes) per pair whose gradients the devices holding the two stages sum
    over the links (``pipesched.decoder.workload``); without it, none.
    """

    rows: list[int]
    itemsize: int  # bytes per element in the training precision: what memory and links count

    @property
    def layers(self) -> Sequence[Sequence[Any]]:
        """Per stage, its layers as the cost model reads them (``forward_flops(rows)``, ``param_count``)."""
        ...

    def param_bytes(self, stage: int) -> int: ...

    def optimizer_bytes(self, stage: int) -> int: ...

    def forward(self, stage: int, mb: int, x: Any, keep: bool) -> tuple[Any, Held]:
        """The stage output and what to hold; ``x`` is None for stage 0 (the data)."""
        ...

    def recompute(self, stage: int, mb: int, held: Held) -> Held:
        """Full activations again from a re-materialized ``held``."""
        ...

    def backward_input(self, stage: int, mb: int, held: Held, dy: Any) -> tuple[Any, Held]:
        """The input gradient (None for stage 0) and what W needs; ``dy`` is None on the last stage."""
        ...

    def backward_weight(self, device: int, stage: int, mb: int, held: Held) -> None:
        """Accumulate the weight gradients on ``device``."""
        ...


class _Stages:
    """What both workloads know: stage layers, micro-batch rows, the training precision's sizes.

    ``itemsize`` is bytes per element (``pipesched.precision``), ``state_bytes``
    the optimizer's bytes per parameter (``pipesched.optimizer``).
    """

    def __init__(
        self, layers: Sequence[Layer], stages: Sequence[range], rows: Sequence[int], itemsize: int, state_bytes: int
    ):
        self.stages = tuple(stages)
        self.layers: tuple[tuple[Layer, ...], ...] = tuple(tuple(layers[i] for i in r) for r in self.stages)
        self.rows = list(rows)
        self.itemsize = itemsize
        self.state_bytes = state_bytes

    def _keeps_output(self, stage: int) -> bool:
        return nn.keeps_output(self.layers[stage], last_stage=stage == len(self.stages) - 1)

    def param_count(self, stage: int) -> int:
        return sum(layer.param_count for layer in self.layers[stage])

    def param_bytes(self, stage: int) -> int:
        """The stage's parameters in the training precision; its gradients take as many."""
        return self.param_count(stage) * self.itemsize

    def optimizer_bytes(self, stage: int) -> int:
        """The optimizer state a device holds for the stage's parameters."""
        return self.param_count(stage) * self.state_bytes


class NumpyWorkload(_Stages):
    """Real NumPy passes over the micro-batches of ``x``; gradients per (device, stage).

    NumPy computes in the model's float64 whatever ``itemsize``, the training
    precision's bytes per element that memory and links count (default: the
    model's own arrays').
    """

    def __init__(
        self,
        model: Model,
        stages: Sequence[range],
        x: np.ndarray,
        target: np.ndarray,
        loss: str,
        slices: Sequence[slice],
        itemsize: int | None = None,
        state_bytes: int = 0,
    ):
        rows = [s.stop - s.start for s in slices]
        itemsize = model.params[0][0].itemsize if itemsize is None else itemsize
        super().__init__(model.layers, stages, rows, itemsize, state_bytes)
        self.model = model
        self.params: list[Params] = [[model.params[i] for i in r] for r in self.stages]
        self.x, self.target, self.slices = x, target, list(slices)
        self.loss_fn = nn.LOSSES[loss]
        self.scale = 1.0 / len(x)
        self.loss = 0.0
        self.grads: dict[tuple[int, int], Params] = {}

    def forward(self, stage: int, mb: int, x: Any, keep: bool) -> tuple[Any, Held]:
        if x is None:
            x = self.x[self.slices[mb]]
        y, acts = nn.forward(self.layers[stage], self.params[stage], x)
        if stage == len(self.stages) - 1:
            self.loss += self.loss_fn(y, self.target[self.slices[mb]], self.scale, grad=False)[0]
        if not keep:
            return y, Held([x], remat=True)
        return y, Held(acts if self._keeps_output(stage) else acts[:-1])

    def recompute(self, stage: int, mb: int, held: Held) -> Held:
        _, acts = nn.forward(self.layers[stage], self.params[stage], held.acts[0])
        return Held(acts if self._keeps_output(stage) else acts[:-1])

    def backward_input(self, stage: int, mb: int, held: Held, dy: Any) -> tuple[Any, Held]:
        layers = self.layers[stage]
        if dy is None:  # the last stage starts backward from its loss
            dy = self.loss_fn(held.acts[-1], self.target[self.slices[mb]], self.scale)[1]
        dx, dzs = nn.backward_input(layers, self.params[stage], held.acts, dy, need_dx=stage > 0)
        return dx, Held(held.acts[: len(layers)], dzs)

    def backward_weight(self, device: int, stage: int, mb: int, held: Held) -> None:
        grads = self.grads.get((device, stage))
        if grads is None:
            grads = self.grads[(device, stage)] = [(np.zeros_like(w), np.zeros_like(b)) for w, b in self.params[stage]]
        assert held.dzs is not None  # the engine passes what backward_input returned: the pre-activation gradients
        nn.backward_weight(held.acts, held.dzs, grads)

    def model_gradients(self) -> Params:
        """Per layer of the whole model, the gradient summed over replicas (the all-reduce)."""
        total = self.model.zeros_like_params()
        for (_, stage), grads in self.grads.items():
            for i, (gw, gb) in zip(self.stages[stage], grads):
                total[i][0][...] += gw
                total[i][1][...] += gb
        return total


class StageWidths(NamedTuple):
    """Per stage, the widths (elements per row) of what its shape-only stand-ins hold, and one rule."""

    inner: int  # the inputs of its layers after the first, together
    out: int  # its output
    gradients: int  # every layer's output together: the pre-activation gradients an I keeps for W
    first: int  # its input
    keeps_output: bool  # whether a kept forward holds its output too (a ReLU mask, or the loss's input)


class ShapeWorkload(_Stages):
    """Byte-exact stand-ins for ``NumpyWorkload``: no arithmetic, no weights.

    What a real stage holds as several arrays is held here as one buffer per
    group that is held and freed together (the stage input; the other layer
    inputs; the output; the pre-activation gradients), so the engine's
    accounting sees the same bytes, by the same roles, at the same times, with
    fewer objects to count.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        stages: Sequence[range],
        rows: Sequence[int],
        itemsize: int = 8,
        state_bytes: int = 0,
    ):
        super().__init__(layers, stages, rows, itemsize, state_bytes)
        # a buffer's bytes are rows x width x itemsize, as nbytes counts an array
        self.widths = [
            StageWidths(
                sum(layer.in_features for layer in ls[1:]),
                ls[-1].out_features,
                sum(layer.out_features for layer in ls),
                ls[0].in_features,
                self._keeps_output(stage),
            )
            for stage, ls in enumerate(self.layers)
        ]

    def forward(self, stage: int, mb: int, x: Any, keep: bool) -> tuple[Any, Held]:
        inner, out, _, first, keeps_output = self.widths[stage]
        rows = self.rows[mb] * self.itemsize
        if x is None:
            x = Buffer(rows * first)
        y = Buffer(rows * out)
        if not keep:
            return y, Held([x], remat=True)
        acts = [x, Buffer(rows * inner)] if inner else [x]
        if keeps_output:
            acts.append(y)
        return y, Held(acts)

    def recompute(self, stage: int, mb: int, held: Held) -> Held:
        return self.forward(stage, mb, held.acts[0], keep=True)[1]

    def backward_input(self, stage: int, mb: int, held: Held, dy: Any) -> tuple[Any, Held]:
        inner, _, gradients, first, _ = self.widths[stage]
        rows = self.rows[mb] * self.itemsize
        dx = Buffer(rows * first) if stage > 0 else None
        return dx, Held(held.acts[: 2 if inner else 1], [Buffer(rows * gradients)])

    def backward_weight(self, device: int, stage: int, mb: int, held: Held) -> None:
        pass
