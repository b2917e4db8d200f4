"""The report's figures, each a function of the collected numbers and traces returning a matplotlib Figure.

Readable where they are shown. The page (``render``) shows a figure at its
natural size, one figure inch to 96 CSS pixels, in a column of
``PAGE_WIDTH_PX``; every figure is at most ``WIDTH_IN`` wide, which fits that
column, so no figure is scaled down there. Every text is ``FONT_PT`` points,
and a point is 96/72 CSS pixels (CSS Values 3, section 5.2: 1in = 96px =
72pt), so 12 pt shows as the page's 16 px body text. Panels that are compared
share their scales, each figure has one legend (above its panels), and every
axis says its unit, in the study's cost model (seconds, or units under
``unit`` cost).

Colours are the Okabe-Ito palette, safe for the common colour-vision
deficiencies; what colour alone could not tell apart (a device's chunks,
devices in the memory figure) also differs in hatch or line style.
matplotlib is imported here only, so ``run`` and ``compare`` never load it.

>>> [stem for stem, _, _ in FIGURES][:3]
['gantt', 'memory', 'bubble-vs-microbatches']
>>> sorted(OP_COLOURS) == sorted("FBIWR") + ["link"]
True
>>> FONT_PT, WIDTH_IN * CSS_PX_PER_IN <= PAGE_WIDTH_PX
(12.0, True)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, ScalarFormatter, StrMethodFormatter  # noqa: E402

from ..cost import UnitCost  # noqa: E402
from ..formulas import pipeline_speedup  # noqa: E402
from ..schedule import Overlap  # noqa: E402
from ..trace import Trace  # noqa: E402
from ..units import byte_prefix, time_prefix  # noqa: E402
from .collect import StudyResults  # noqa: E402
from .render import BODY_FONT_PX, PAGE_WIDTH_PX  # noqa: E402

__all__ = [
    "FIGURES",
    "OKABE_ITO",
    "OP_COLOURS",
    "CHUNK_HATCHES",
    "FONT_PT",
    "WIDTH_IN",
    "CSS_PX_PER_IN",
    "gantt",
    "memory",
    "bubble_vs_m",
    "bubble_vs_memory",
    "stage_costs",
    "speedup",
    "training",
    "sweep_heatmaps",
    "sweep_pareto",
]

#: CSS pixels per inch and points per inch (CSS Values 3, section 5.2).
CSS_PX_PER_IN, PT_PER_IN = 96, 72
#: Every text of every figure, in points: the page's body text at natural size (16 px is 12 pt).
FONT_PT = BODY_FONT_PX * PT_PER_IN / CSS_PX_PER_IN
#: The width of the wide figures: 10 in (960 CSS px), inside the page's column.
WIDTH_IN = min(10.0, PAGE_WIDTH_PX / CSS_PX_PER_IN)

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
#: For thin lines and hollow markers on white: Okabe-Ito with its yellow, too faint there, last as grey.
LINE_COLOURS = [c for c in OKABE_ITO if c != "#F0E442"] + ["#999999"]
OP_COLOURS = {"F": "#56B4E9", "B": "#E69F00", "I": "#D55E00", "W": "#009E73", "R": "#CC79A7", "link": "#BBBBBB"}
OP_NAMES = {
    "F": "forward",
    "B": "backward",
    "I": "input-gradient",
    "W": "weight-gradient",
    "R": "recompute",
    "link": "transfer",
}
#: A device's chunks (its stages in order: interleaved's v chunks, a V's way down and back up) by hatch.
CHUNK_HATCHES = ["", "///", "\\\\\\", "xxx", "...", "ooo"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINE_STYLES: tuple[Any, ...] = ("-", "--", ":", "-.")

# typed Any: matplotlib types rc_context's keys as a Literal of every rc name
_RC: Any = {
    "font.size": FONT_PT,
    "axes.titlesize": FONT_PT,
    "axes.labelsize": FONT_PT,
    "xtick.labelsize": FONT_PT,
    "ytick.labelsize": FONT_PT,
    "legend.fontsize": FONT_PT,
    "legend.title_fontsize": FONT_PT,
    "figure.titlesize": FONT_PT,
    "axes.titlelocation": "left",
    "figure.constrained_layout.use": True,
}


def _readable(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw under the report's text size; tick labels are pinned too, since matplotlib may make them later."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with plt.rc_context(_RC):
            fig = draw(*args, **kwargs)
            for ax in fig.axes:
                ax.tick_params(which="both", labelsize=FONT_PT)
        return fig

    return wrapper


def _title_and_legend(fig: Figure, title: str, handles: list[Any], columns: int | None = None) -> None:
    """The figure's title and its one legend, above its panels, where a reader meets them first.

    The title is the legend's title: constrained layout stacks an outside
    legend over a ``suptitle`` (seen in matplotlib 3.11); one block of text cannot overlap itself.
    """
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncols=columns or min(len(handles), 4),
        frameon=False,
        title=title,
        alignment="center",
    )


def _time_scale(trace: Trace) -> tuple[float, str]:
    """Factor from the trace's time to the axis' unit, and that unit ("ms", or "units" under unit cost)."""
    if trace.time_unit != "s":
        return 1.0, "units"
    scale, prefix = time_prefix(trace.makespan or 1.0)
    return (1 / scale, prefix) if scale else (1e9, "ns")


def _per_time(time_unit: str) -> str:
    """Throughput's unit: samples/s, or samples/unit under unit cost."""
    return f"samples/{'s' if time_unit == 's' else 'unit'}"


def _plain(axis: Any, ticks: int | None = None) -> None:
    """Plain tick labels, at most ``ticks`` of them: no offset or exponent text that could land on a
    neighbour (a colour bar), thousands separated as the tables write them."""
    if ticks:
        axis.set_major_locator(MaxNLocator(ticks))
    high = max(abs(v) for v in axis.get_view_interval())
    if high >= 1000:
        axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    else:
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        axis.set_major_formatter(formatter)


def _compare_runs(results: StudyResults) -> list:
    """One run per strategy: the first partition of the study."""
    first = results.study.compare.partitions[0]
    return [r for r in results.compare if r.config.partition == first]


# -- Gantt ------------------------------------------------------------------------------

_ROW_IN, _PANEL_IN, _HEAD_IN = 0.34, 0.95, 1.3  # a device's row; a panel's title and ticks; title and legend


def _chunks(schedule: Any) -> dict[tuple[int, int], int]:
    """(device, stage) -> the stage's chunk on that device: its place among the device's stages, in order."""
    on: dict[int, list[int]] = {}
    for stage, devices in schedule.placement().items():
        for d in devices:
            on.setdefault(d, []).append(stage)
    return {(d, s): i for d, stages in on.items() for i, s in enumerate(sorted(stages))}


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
    chunks_used, paired = set(), False
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
            ax.add_patch(
                Rectangle(
                    (t.start * scale, row - 0.3),
                    max((t.arrival - t.start) * scale, visible),
                    0.6,
                    facecolor=OP_COLOURS["link"],
                    edgecolor="none",
                )
            )
        labels = [f"device {d}" for d in range(trace.devices)] + [f"link {a}→{b}" for a, b in ls]
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
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg's canvas: use("Agg") above
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


# -- memory -----------------------------------------------------------------------------


def _grid(n: int) -> tuple[int, int]:
    """Rows and columns for ``n`` panels of the page's width: three abreast, two for four."""
    columns = 2 if n == 4 else min(n, 3)
    return -(-n // columns), columns


@_readable
def memory(results: StudyResults) -> Figure:
    """Per strategy, every device's memory beyond its weights over the step, all panels on the same axes."""
    runs = _compare_runs(results)
    rows, columns = _grid(len(runs))
    fig, axes = plt.subplots(
        rows, columns, figsize=(WIDTH_IN, 1.5 + 3.0 * rows), squeeze=False, sharex=True, sharey=True
    )
    largest = max(s.activations + s.deferred + s.buffers for r in runs for samples in r.trace.memory for s in samples)
    size, size_unit = byte_prefix(largest)
    longest = max(runs, key=lambda r: r.trace.makespan).trace
    scale, unit = _time_scale(longest)
    devices = max(r.trace.devices for r in runs)
    for i, (ax, result) in enumerate(zip(axes.flat, runs)):
        for d, samples in enumerate(result.trace.memory):
            ax.step(
                [s.time * scale for s in samples],
                [(s.activations + s.deferred + s.buffers) / size for s in samples],
                where="post",
                color=LINE_COLOURS[d % len(LINE_COLOURS)],
                linestyle=LINE_STYLES[d % 4],
                linewidth=1.5,
            )
        weights = max(s.params + s.grads for s in result.trace.memory[0])
        weight_size, weight_unit = byte_prefix(weights)
        ax.set_title(f"{result.label}\n+{weights / weight_size:.3g} {weight_unit} weights on device 0")
        ax.grid(alpha=0.3)
        if i + columns >= len(runs):  # the lowest panel of its column says the time axis
            ax.tick_params(labelbottom=True)
            ax.set_xlabel(f"time ({unit})")
        if i % columns == 0:
            ax.set_ylabel(f"held ({size_unit})")
    for ax in axes.flat[len(runs) :]:
        ax.remove()
    axes[0, 0].set_xlim(0, longest.makespan * scale)
    axes[0, 0].set_ylim(0, largest / size * 1.05)
    handles = [
        plt.Line2D(
            [],
            [],
            color=LINE_COLOURS[d % len(LINE_COLOURS)],
            linestyle=LINE_STYLES[d % 4],
            linewidth=1.5,
            label=f"device {d}",
        )
        for d in range(devices)
    ]
    _title_and_legend(
        fig,
        "Memory per device over one step: activations, deferred-W inputs and link buffers\n"
        "(beyond parameters and gradients); every panel on the same axes",
        handles,
    )
    return fig


# -- bubble -----------------------------------------------------------------------------


def _style(i: int) -> dict[str, Any]:
    return {"color": LINE_COLOURS[i % len(LINE_COLOURS)]}


@_readable
def bubble_vs_m(results: StudyResults) -> Figure:
    """Bubble against M per strategy: measured points at their M, closed forms as lines, on two cost models.

    Markers are drawn at their true M, larger to smaller, so strategies with
    equal values show as markers nested inside one another.
    """
    rows = results.sweep_microbatches
    if not rows:
        return _note("no micro-batch sweep to draw: every point was left out (dp needs M >= K)")
    labels = list(dict.fromkeys(r["label"] for r in rows))
    cost = results.study.hardware.cost
    panels = [("unit", "unit cost")] if "bubble_unit" in rows[0] else []
    panels.append(("study", "unit cost" if cost == "unit" else f"{cost} cost, the study's hardware"))
    fig, axes = plt.subplots(1, len(panels), figsize=(WIDTH_IN, 5.4), squeeze=False, sharey=True, sharex=True)
    ms = sorted({r["microbatches"] for r in rows})
    for ax, (key, title) in zip(axes[0], panels):
        for i, label in enumerate(labels):
            mine = [r for r in rows if r["label"] == label]
            size = 6 + 1.3 * (len(labels) - 1 - i)  # the first largest: equal values nest
            ax.plot(
                [r["microbatches"] for r in mine],
                [r[f"bubble_{key}"] for r in mine],
                MARKERS[i % len(MARKERS)],
                markersize=size,
                markerfacecolor="none",
                markeredgewidth=1.3,
                **_style(i),
            )
            if key != "study" or cost == "unit":
                formula = [(r["microbatches"], r["formula"]) for r in mine if r["formula"] is not None]
                if formula:
                    ax.plot(*zip(*formula), "-", linewidth=1, alpha=0.7, **_style(i))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ms))
        ax.xaxis.set_minor_locator(NullLocator())
        _plain(ax.xaxis)
        ax.set_xlabel("micro-batches M")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("bubble (idle share of K × step)")
    handles = [
        plt.Line2D(
            [],
            [],
            marker=MARKERS[i % len(MARKERS)],
            linestyle="",
            markerfacecolor="none",
            markersize=9,
            markeredgewidth=1.3,
            label=label,
            **_style(i),
        )
        for i, label in enumerate(labels)
    ]
    handles.append(plt.Line2D([], [], color="grey", linewidth=1, label="closed form"))
    _title_and_legend(
        fig,
        f"Bubble against micro-batches on K={results.study.hardware.devices} devices: markers "
        "measured, lines closed forms;\nmarkers sit at their M, so equal values nest inside one "
        "another",
        handles,
        columns=5,
    )
    return fig


@_readable
def bubble_vs_memory(results: StudyResults) -> Figure:
    """The trade-off every schedule makes: bubble against the fullest device's peak memory.

    Left, the activations a schedule keeps for its backward passes (what the
    schedules trade); right, everything a device holds (with parameters and
    gradients, where data parallelism pays). A hollow marker is one step's
    bubble; where steps run back to back with less idle time (zero-bubble
    schedules), a filled marker below it shows that. One point per strategy,
    on the study's first partition.
    """
    runs = _compare_runs(results)
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, 5.6), sharey=True)
    activations = byte_prefix(max(max(r.metrics.peak_activation_bytes) for r in runs))
    total = byte_prefix(max(max(r.metrics.peak_memory_bytes) for r in runs))
    panels = [
        (axes[0], "peak_activation_bytes", "peak activations", activations),
        (axes[1], "peak_memory_bytes", "peak memory", total),
    ]
    handles, steady_shown = [], False
    for i, result in enumerate(runs):
        colour, marker = LINE_COLOURS[i % len(LINE_COLOURS)], MARKERS[i % len(MARKERS)]
        y, steady = result.metrics.bubble_fraction, result.metrics.steady_bubble_fraction
        for ax, field, _, (scale, _) in panels:
            x = max(getattr(result.metrics, field)) / scale
            ax.plot([x], [y], marker, color=colour, markersize=10, markerfacecolor="none", markeredgewidth=1.5)
            if steady < y - 1e-9:
                steady_shown = True
                ax.plot([x, x], [y, steady], "-", color=colour, linewidth=0.8)
                ax.plot([x], [steady], marker, color=colour, markersize=9)
        handles.append(
            plt.Line2D(
                [],
                [],
                marker=marker,
                linestyle="",
                color=colour,
                markerfacecolor="none",
                markersize=10,
                markeredgewidth=1.5,
                label=result.label,
            )
        )
    if steady_shown:
        handles.append(
            plt.Line2D([], [], marker="o", linestyle="", color="grey", markersize=9, label="filled: back to back")
        )
    for ax, _, label, (_, unit) in panels:
        ax.set_xlabel(f"{label} of the fullest device ({unit})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("bubble (idle share)")
    _title_and_legend(
        fig, f"Bubble against memory ({runs[0].config.partition} partition): lower left is better", handles, columns=5
    )
    return fig


# -- partitions, speedup, training ---------------------------------------------------------


def _partition_names(names: list[str]) -> str:
    quoted = [n if n in ("uniform", "balanced") else f"the {n}" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " against " + quoted[-1]


@_readable
def stage_costs(results: StudyResults) -> Figure:
    """Each stage's cost for one micro-batch under the partitions the study compares, in its cost model.

    Under ``flops``: each stage's compute (forward + backward), from the
    balancer's layer graph; the balancer weighs each device's stages and each
    link's bytes (``pipesched.balance``). Under ``unit``: the unit cost model's F + B of a stage, K/S
    and 2K/S units for S stages whatever their layers (``pipesched.cost``), so
    every partition of K stages costs the same.
    """
    partitions = {
        name: part for name, part in results.partitions.items() if name in results.study.compare.partitions
    } or results.partitions
    devices = results.study.hardware.devices
    unit_cost = results.study.hardware.cost == "unit"
    if unit_cost:
        model = UnitCost()
        costs = {
            name: [sum(model.compute_time(op, [], 0, devices / len(p.sizes)) for op in "FB")] * len(p.sizes)
            for name, p in partitions.items()
        }
        unit, scale = "units", 1.0
    else:
        costs = {name: list(p.stage_costs) for name, p in partitions.items()}
        seconds, unit = time_prefix(max(c for cs in costs.values() for c in cs))
        scale = 1 / seconds if seconds else 1e9
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    width = 0.8 / len(costs)
    for i, (name, stage) in enumerate(costs.items()):
        sizes = ",".join(map(str, partitions[name].sizes))
        xs = [s + (i - (len(costs) - 1) / 2) * width for s in range(len(stage))]
        ax.bar(
            xs,
            [c * scale for c in stage],
            width,
            color=OKABE_ITO[i * 4 % 8],
            hatch=CHUNK_HATCHES[i % 2],
            edgecolor="white",
            label=f"{name if name in ('uniform', 'balanced') else 'counts'} {sizes}: "
            f"slowest {max(stage) * scale:.3g} {unit}",
        )
    ax.set_xticks(range(max(len(c) for c in costs.values())))
    ax.set_xlabel("stage")
    ax.set_ylabel(f"cost per micro-batch, F + B ({unit})")
    _plain(ax.yaxis)
    ax.set_ylim(0, max(c for cs in costs.values() for c in cs) * scale * 1.1)
    _title_and_legend(
        fig,
        f"Stage costs of {_partition_names(list(costs))}\n"
        + (
            "(unit cost: every stage F = K/S, B = 2K/S units, whatever its layers)"
            if unit_cost
            else "(compute, F + B, flops cost model)"
        ),
        ax.get_legend_handles_labels()[0],
        columns=1,
    )
    return fig


@_readable
def speedup(results: StudyResults) -> Figure:
    """GPipe's speedup and efficiency against K at fixed M, measured beside K/(1+(K-1)/M)."""
    rows = results.sweep_devices
    m = results.study.compare.microbatches
    ks = [r["devices"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, 4.8), sharex=True)
    dense = [k / 10 for k in range(10, 10 * max(ks) + 1)]
    handles: dict[str, Any] = {}
    for ax, kind in zip(axes, ("speedup", "efficiency")):
        # the closed form drawn smooth in K, between the whole numbers it is stated for
        curve = [pipeline_speedup(k, m) / (k if kind == "efficiency" else 1) for k in dense]  # type: ignore[arg-type]
        (handles["formula"],) = ax.plot(
            dense, curve, "-", color="black", linewidth=1, label="closed form K/(1+(K-1)/M), ÷K for efficiency"
        )
        for i, label in enumerate(("free_links", "study")):
            values = [r[f"{kind}_{label}"] for r in rows]
            if all(v is not None for v in values):
                (handles[label],) = ax.plot(
                    ks,
                    values,
                    ("s", "o")[i],
                    linestyle="--",
                    markersize=(9, 5)[i],
                    markerfacecolor="none",
                    linewidth=0.8,
                    label=f"measured, {label.replace('_', ' ')}",
                    **_style(i + 1),
                )
            else:
                ax.text(
                    0.5,
                    0.5,
                    "add 1 to [sweep].devices\nto measure against one device",
                    transform=ax.transAxes,
                    ha="center",
                )
        ax.set_xlabel("devices K")
        ax.set_ylabel(kind + (" (× one device)" if kind == "speedup" else " (speedup / K)"))
        ax.xaxis.set_major_locator(FixedLocator(ks))
        ax.grid(alpha=0.3)
    _title_and_legend(
        fig, f"GPipe, balanced partition, M={m}: speedup over one device", list(handles.values()), columns=2
    )
    return fig


def _note(text: str) -> Figure:
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


@_readable
def training(results: StudyResults) -> Figure:
    """Loss over SGD steps: the pipelined run over the single-device run (they coincide)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    single, piped = results.train["single device"], results.train["pipelined"]
    ax.plot(range(len(single)), single, "-", color=OKABE_ITO[1], linewidth=5, alpha=0.6, label="one device")
    ax.plot(
        range(len(piped)),
        piped,
        "o--",
        color=OKABE_ITO[5],
        markersize=5,
        linewidth=1,
        label=f"{results.study.train.strategy} on {results.study.hardware.devices} devices",
    )
    ax.set_xlabel("SGD step")
    ax.set_ylabel(f"training loss ({results.study.model.loss})")
    ax.grid(alpha=0.3)
    _title_and_legend(
        fig, "Training loss: pipelined and single-device runs coincide", ax.get_legend_handles_labels()[0], columns=2
    )
    return fig


#: (file stem, caption, function) of every figure, in report order.
FIGURES = [
    ("gantt", "Schedules as Gantt charts: devices and links as rows, micro-batch numbers on the blocks", gantt),
    ("memory", "Memory held per device over one step", memory),
    ("bubble-vs-microbatches", "Bubble against the number of micro-batches, with the closed forms", bubble_vs_m),
    ("bubble-vs-memory", "The bubble against peak memory trade-off", bubble_vs_memory),
    ("stage-costs", "Stage costs of the compared partitions", stage_costs),
    ("speedup", "Speedup and efficiency against devices", speedup),
    ("training", "Training loss, pipelined against one device", training),
]


# -- sweeps -----------------------------------------------------------------------------


@_readable
def sweep_heatmaps(records: list[dict[str, Any]]) -> Figure:
    """Bubble and throughput over devices × micro-batches: one row per strategy, the best over the other axes.

    Each column is one quantity on one colour scale, shared by every
    strategy, with one colour bar; throughput gets a column per time unit
    when the sweep mixes cost models (seconds and units do not compare).
    """
    ok = [r for r in records if r.get("ok") and not r.get("oom")]
    if not ok:
        return _note("no point of the sweep ran without an error or an OOM")
    strategies = sorted({r["point"].get("strategy", "gpipe") for r in ok})
    ks = sorted({r["point"].get("devices", 4) for r in ok})
    ms = sorted({r["point"].get("microbatches", 8) for r in ok})
    metrics: list[tuple[str, Callable, str, str | None]] = [("bubble_fraction", min, "bubble", None)]
    metrics += [
        ("throughput", max, f"throughput ({_per_time(u)})", u) for u in sorted({r.get("time_unit", "s") for r in ok})
    ]
    fig, axes = plt.subplots(
        len(strategies),
        len(metrics),
        figsize=(WIDTH_IN, 1.6 + 2.4 * len(strategies)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    grids: dict[tuple[int, int], list[list[float]]] = {}
    for col, (metric, better, _, time_unit) in enumerate(metrics):
        for row, name in enumerate(strategies):
            grid = [[math.nan] * len(ms) for _ in ks]
            for r in ok:
                p = r["point"]
                if p.get("strategy", "gpipe") != name or time_unit not in (None, r.get("time_unit", "s")):
                    continue
                i, j = ks.index(p.get("devices", 4)), ms.index(p.get("microbatches", 8))
                grid[i][j] = r[metric] if math.isnan(grid[i][j]) else better(grid[i][j], r[metric])
            grids[row, col] = grid
    for col, (_, _, label, _) in enumerate(metrics):
        values = [v for row in range(len(strategies)) for line in grids[row, col] for v in line if not math.isnan(v)]
        norm = Normalize(min(values, default=0.0), max(values, default=1.0))  # one scale for the whole column
        for row, name in enumerate(strategies):
            ax = axes[row][col]
            image = ax.imshow(grids[row, col], origin="lower", aspect="auto", cmap="viridis", norm=norm)
            ax.set_xticks(range(len(ms)), [str(m) for m in ms])
            ax.set_yticks(range(len(ks)), [str(k) for k in ks])
            ax.set_title(f"{name}: {label.split(' (')[0]}")
            if row == len(strategies) - 1:
                ax.set_xlabel("micro-batches M")
            if col == 0:
                ax.set_ylabel("devices K")
        bar = fig.colorbar(image, ax=list(axes[:, col]), location="top", shrink=0.9, aspect=25)
        bar.set_label(label)
        _plain(bar.ax.xaxis, ticks=4)
    fig.suptitle("Sweep: bubble (lower is better) and throughput (higher is better); blank: no point")
    return fig


@_readable
def sweep_pareto(records: list[dict[str, Any]], front: list[dict[str, Any]]) -> Figure:
    """Throughput against peak memory for every point; the Pareto front joined."""
    ok = [r for r in records if r.get("ok") and not r.get("oom")]
    fig, ax = plt.subplots(figsize=(8, 5.6))
    strategies = sorted({r["point"].get("strategy", "gpipe") for r in ok})
    size, size_unit = byte_prefix(max((r["peak_memory_bytes"] for r in ok), default=1))
    handles = []
    for i, name in enumerate(strategies):
        mine = [r for r in ok if r["point"].get("strategy", "gpipe") == name]
        handles += ax.plot(
            [r["peak_memory_bytes"] / size for r in mine],
            [r["throughput"] for r in mine],
            MARKERS[i % len(MARKERS)],
            markerfacecolor="none",
            markersize=8,
            color=LINE_COLOURS[i % len(LINE_COLOURS)],
            label=name,
        )
    if front:
        handles += ax.plot(
            [r["peak_memory_bytes"] / size for r in front],
            [r["throughput"] for r in front],
            "-",
            color="black",
            linewidth=1,
            label="Pareto front",
        )
    units = sorted({r.get("time_unit", "s") for r in ok})
    ax.set_xlabel(f"peak memory of the fullest device ({size_unit})")
    ax.set_ylabel(
        f"throughput ({_per_time(units[0])})" if len(units) == 1 else "throughput (samples/s and samples/unit mixed)"
    )
    _plain(ax.yaxis)
    ax.grid(alpha=0.3)
    _title_and_legend(fig, "Throughput against memory: upper left is better", handles, columns=4)
    return fig
