"""The Gantt chart: per strategy, devices and links as rows on one time axis, every action as a block.

Blocks carry ids in the SVG (``_gid``), so a reader's tools and the tests find
a block by its strategy, device and action; a device's chunks are told apart
by hatch (``_chunks``: ZB-V on 2 devices puts stages 0 and 3 on device 0).

>>> from pipesched.strategy import load_strategy, make_plan
>>> _chunks(make_plan(load_strategy("zb-v"), 2, 2, chunks=2))
{(0, 0): 0, (0, 3): 1, (1, 1): 0, (1, 2): 1}
>>> _gid("zb v", 1, "2F0"), [_ordinal(n) for n in (1, 2, 3, 11, 22)]
('zb_v/1/2F0', ['1st', '2nd', '3rd', '11th', '22nd'])
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch, Rectangle

from ..schedule import Overlap
from .collect import StudyResults
from .style import (
    CHUNK_HATCHES,
    CSS_PX_PER_IN,
    FONT_PT,
    OP_COLOURS,
    OP_NAMES,
    WIDTH_IN,
    _compare_runs,
    _readable,
    _time_scale,
    _title_and_legend,
)

__all__ = ["gantt"]

_ROW_IN, _PANEL_IN, _HEAD_IN = 0.34, 0.95, 1.3  # a device's row; a panel's title and ticks; title and legend


def _chunks(schedule: Any) -> dict[tuple[int, int], int]:
    """(device, stage) -> the stage's chunk on that device: its place among the device's stages, in order."""
    on: dict[int, list[int]] = {}
    for stage, devices in schedule.placement().items():
        for d in devices:
            on.setdefault(d, []).append(stage)
    return {(d, s): i for d, stages in on.items() for i, s in enumerate(sorted(stages))}


#: A transfer between nodes (InfiniBand, Ethernet) against the light plain ones inside a node (NVLink, shared
#: memory): a darker grey, so that a send a few pixels wide still reads apart, and hatched where it is wide enough.
INTER_NODE_HATCH = "xxx"
INTER_NODE_COLOUR = "#666666"


def _link_label(trace: Any, src: int, dst: int) -> str:
    """A link's row label: ``link 1→2``, and its kind's name where the trace names it (``link 1→2 IB NDR``)."""
    name = trace.links.get((src, dst), ("link", False))[0]
    return f"link {src}→{dst}" + ("" if name == "link" else f" {name}")


def _gid(label: str, device: int, what: str) -> str:
    """An id for a Gantt block, kept in the SVG (``gpipe/0/1F3``): a reader's tools and the tests find it."""
    return f"{label}/{device}/{what}".replace(" ", "_")


def _ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..."""
    return f"{n}{'th' if 10 <= n % 100 < 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _pairs(result: Any) -> list[tuple[Overlap, int, float, float, set[tuple[Any, ...]]]]:
    """Each overlapped pair as (pair, device, start, end, its parts' spans as (device, op, stage, micro-batch)).

    The engine records a pair as its parts (F, a recompute if any, then B or
    I), back to back on the pair's device, the last ending when the pair
    ends; so the pair runs from its forward's start to its backward's end.
    """
    spans = {(s.device, s.op, s.stage, s.microbatch): s for s in result.trace.spans}
    pairs = []
    for d, items in enumerate(result.schedule.actions):
        for item in items:
            if type(item) is Overlap:
                f, b = item.forward, item.backward
                parts = {
                    (d, "F", f.stage, f.microbatch),
                    (d, "R", b.stage, b.microbatch),
                    (d, b.op, b.stage, b.microbatch),
                }
                pairs.append(
                    (
                        item,
                        d,
                        spans[(d, "F", f.stage, f.microbatch)].start,
                        spans[(d, b.op, b.stage, b.microbatch)].end,
                        parts,
                    )
                )
    return pairs


@_readable
def gantt(results: StudyResults) -> Figure:
    """Per strategy, devices and links as rows on one time axis, every action as a block.

    A block's colour is its op, its hatch the chunk of the device it belongs
    to, and an overlapped F&B pair is one black outline around its two
    halves. A block shows its micro-batch number only where the number fits
    inside it at the size the page shows the figure.
    """
    runs = _compare_runs(results)
    links = [sorted({(t.src, t.dst) for t in r.trace.transfers}) for r in runs]
    rows_per = [r.trace.devices + len(ls) for r, ls in zip(runs, links)]
    height = _HEAD_IN + _ROW_IN * sum(rows_per) + _PANEL_IN * len(runs)
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(WIDTH_IN, height), squeeze=False, sharex=True, gridspec_kw={"height_ratios": rows_per}
    )
    longest = max(runs, key=lambda r: r.trace.makespan).trace
    scale, unit = _time_scale(longest)
    chunks_used, paired, crossed = set(), False, False
    for ax, result, ls in zip(axes[:, 0], runs, links):
        trace = result.trace
        chunk = _chunks(result.schedule)
        pairs = _pairs(result)
        halves = set().union(*(parts for *_, parts in pairs))
        for s in trace.spans:
            c = chunk.get((s.device, s.stage), 0)
            chunks_used.add(c)
            half = (s.device, s.op, s.stage, s.microbatch) in halves  # a pair's halves: no white gap between them
            ax.add_patch(
                Rectangle(
                    (s.start * scale, s.device - 0.4),
                    (s.end - s.start) * scale,
                    0.8,
                    facecolor=OP_COLOURS[s.op],
                    edgecolor="white",
                    linewidth=0 if half else 0.6,
                    hatch=CHUNK_HATCHES[c % len(CHUNK_HATCHES)],
                    gid=_gid(result.label, s.device, s.name),
                )
            )
        for pair, d, start, end, _ in pairs:
            paired = True
            ax.add_patch(
                Rectangle(
                    (start * scale, d - 0.4),
                    (end - start) * scale,
                    0.8,
                    fill=False,
                    edgecolor="black",
                    linewidth=1.6,
                    gid=_gid(result.label, d, f"pair/{pair.forward}+{pair.backward}"),
                )
            )
        visible = 0.004 * longest.makespan * scale  # a send shorter than this would vanish from the page
        for t in trace.transfers:
            row = trace.devices + ls.index((t.src, t.dst))
            inter = trace.links.get((t.src, t.dst), ("link", False))[1]
            crossed |= inter
            ax.add_patch(
                Rectangle(
                    (t.start * scale, row - 0.3),
                    max((t.arrival - t.start) * scale, visible),
                    0.6,
                    facecolor=INTER_NODE_COLOUR if inter else OP_COLOURS["link"],
                    edgecolor="white" if inter else "none",
                    linewidth=0,
                    hatch=INTER_NODE_HATCH if inter else None,
                )
            )
        labels = [f"device {d}" for d in range(trace.devices)] + [_link_label(trace, a, b) for a, b in ls]
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_title(
            f"{result.label}: step {trace.makespan * scale:.4g} {unit}, bubble {result.metrics.bubble_fraction:.3f}"
        )
        ax.tick_params(labelbottom=True)  # a tall figure: every panel keeps its time ticks
    axes[0, 0].set_xlim(0, longest.makespan * scale)
    axes[-1, 0].set_xlabel(f"time ({unit}), the same axis in every panel")
    used = sorted(
        {s.op for r in runs for s in r.trace.spans} | {"link" for r in runs if r.trace.transfers},
        key=list(OP_COLOURS).index,
    )
    handles = [Patch(facecolor=OP_COLOURS[op], label=OP_NAMES[op]) for op in used]
    handles += [
        Patch(
            facecolor="#999999",
            edgecolor="white",
            hatch=CHUNK_HATCHES[c % len(CHUNK_HATCHES)],
            label=f"a device's {_ordinal(c + 1)} chunk",
        )
        for c in sorted(chunks_used - {0})
    ]
    if crossed:
        handles.append(
            Patch(facecolor=INTER_NODE_COLOUR, edgecolor="white", hatch=INTER_NODE_HATCH, label="send between nodes")
        )
    if paired:
        handles.append(Patch(facecolor="none", edgecolor="black", linewidth=1.6, label="overlapped F&B pair"))
    _title_and_legend(
        fig,
        "Who computes what, when: one row per device and per link, white is idle;\n"
        "micro-batch numbers on the blocks wide enough to hold them",
        handles,
    )
    _label_blocks(fig, axes[:, 0], runs, scale)
    return fig


def _label_blocks(fig: Figure, axes: Any, runs: list, scale: float) -> None:
    """Write each block's micro-batch number where it fits inside the block as the page shows it."""
    fig.draw_without_rendering()  # settles the layout: the axes' widths in inches are known from here
    fig.set_layout_engine("none")  # and stay so: the numbers are placed against them
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg's canvas: use("Agg") in style
    font = FontProperties(size=FONT_PT)
    widths: dict[str, float] = {}
    for ax, result in zip(axes, runs):
        left, right = ax.get_xlim()
        px_per_time = ax.get_position().width * fig.get_figwidth() * CSS_PX_PER_IN / (right - left)
        for s in result.trace.spans:
            text = str(s.microbatch)
            if text not in widths:  # the number's width on the page, in CSS px
                widths[text] = (
                    renderer.get_text_width_height_descent(text, font, ismath=False)[0] / fig.dpi * CSS_PX_PER_IN
                )
            if (s.end - s.start) * scale * px_per_time >= widths[text] + 4:  # 2 px clear on each side
                ax.text(
                    (s.start + s.end) / 2 * scale,
                    s.device,
                    text,
                    ha="center",
                    va="center",
                    gid=_gid(result.label, s.device, f"{s.name}/label"),
                )
