"""The sweep's figures: bubble and throughput heat maps over devices × micro-batches, and the Pareto front.

Each takes the sweep's records (``pipesched.sweep``), one per point.

>>> point = {"strategy": "gpipe", "devices": 2, "microbatches": 4}
>>> record = {"ok": True, "point": point, "bubble_fraction": 0.2, "throughput": 3.0, "peak_memory_bytes": 2048}
>>> heatmaps, pareto = sweep_heatmaps([record]), sweep_pareto([record], [record])
>>> [ax.get_title("left") for ax in heatmaps.axes if ax.get_title("left")], pareto.axes[0].get_xlabel()
(['gpipe: bubble', 'gpipe: throughput'], 'peak memory of the fullest device (KiB)')
>>> plt.close(heatmaps), plt.close(pareto)
(None, None)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import matplotlib.pyplot as plt
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..units import byte_prefix
from .style import LINE_COLOURS, MARKERS, WIDTH_IN, _note, _per_time, _plain, _readable, _title_and_legend

__all__ = ["sweep_heatmaps", "sweep_pareto"]


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
def sweep_pareto(
    records: list[dict[str, Any]], front: list[dict[str, Any]], metric: str = "throughput", unit: str | None = None
) -> Figure:
    """Throughput against peak memory for every point; the Pareto front joined.

    ``metric`` is the record's throughput key (``tokens_per_second`` for a plan), ``unit`` its unit
    (default: samples per the records' time unit).
    """
    ok = [r for r in records if r.get("ok") and not r.get("oom")]
    fig, ax = plt.subplots(figsize=(8, 5.6))
    strategies = sorted({r["point"].get("strategy", "gpipe") for r in ok})
    size, size_unit = byte_prefix(max((r["peak_memory_bytes"] for r in ok), default=1))
    handles = []
    for i, name in enumerate(strategies):
        mine = [r for r in ok if r["point"].get("strategy", "gpipe") == name]
        handles += ax.plot(
            [r["peak_memory_bytes"] / size for r in mine],
            [r[metric] for r in mine],
            MARKERS[i % len(MARKERS)],
            markerfacecolor="none",
            markersize=8,
            color=LINE_COLOURS[i % len(LINE_COLOURS)],
            label=name,
        )
    if front:
        handles += ax.plot(
            [r["peak_memory_bytes"] / size for r in front],
            [r[metric] for r in front],
            "-",
            color="black",
            linewidth=1,
            label="Pareto front",
        )
    units = sorted({r.get("time_unit", "s") for r in ok})
    ax.set_xlabel(f"peak memory of the fullest device ({size_unit})")
    ax.set_ylabel(
        f"throughput ({unit})"
        if unit is not None
        else f"throughput ({_per_time(units[0])})"
        if len(units) == 1
        else "throughput (samples/s and samples/unit mixed)"
    )
    _plain(ax.yaxis)
    ax.grid(alpha=0.3)
    _title_and_legend(fig, "Throughput against memory: upper left is better", handles, columns=4)
    return fig
