"""The study's figures, each a function of the collected numbers and traces returning a matplotlib Figure.

``FIGURES`` lists them in report order; the Gantt chart is drawn in
``gantt``, the sweep's figures in ``sweep_figures``, and what every figure
shares (page size, text, palette, layout helpers) is in ``style``.

>>> [stem for stem, _, _ in FIGURES][:3]
['gantt', 'memory', 'bubble-vs-microbatches']
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from ..cost import UnitCost
from ..formulas import pipeline_speedup
from ..units import byte_prefix, time_prefix
from .collect import StudyResults
from .gantt import gantt
from .style import (
    CHUNK_HATCHES,
    LINE_COLOURS,
    LINE_STYLES,
    MARKERS,
    OKABE_ITO,
    WIDTH_IN,
    _compare_runs,
    _note,
    _plain,
    _readable,
    _style,
    _time_scale,
    _title_and_legend,
)

__all__ = [
    "FIGURES",
    "gantt",
    "memory",
    "bubble_vs_m",
    "bubble_vs_memory",
    "stage_costs",
    "speedup",
    "training",
]


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
        weights = max(s.params + s.grads + s.optimizer for s in result.trace.memory[0])
        weight_size, weight_unit = byte_prefix(weights)
        state = " and optimizer state" if any(s.optimizer for s in result.trace.memory[0]) else ""
        # beside another panel, the longer title (with optimizer state) breaks so it stays over its own panel
        state = state.replace(" and ", " and\n", 1) if state and columns > 1 else state
        ax.set_title(f"{result.label}\n+{weights / weight_size:.3g} {weight_unit} weights{state} on device 0")
        ax.grid(alpha=0.3)
        if i + columns >= len(runs):  # the lowest panel of its column says the time axis
            ax.tick_params(labelbottom=True)
            ax.set_xlabel(f"time ({unit})")
        if i % columns == 0:
            ax.set_ylabel(f"held ({size_unit})")
    for ax in axes.flat[len(runs) :]:
        ax.remove()
    stateful = any(s.optimizer for r in runs for samples in r.trace.memory for s in samples)
    beyond = "parameters, gradients and optimizer state" if stateful else "parameters and gradients"
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
        f"(beyond {beyond}); every panel on the same axes",
        handles,
    )
    return fig


# -- bubble -----------------------------------------------------------------------------


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
