"""The report's figures, each a function of the collected numbers and traces returning a matplotlib Figure.

Colours are the Okabe-Ito palette, safe for the common colour-vision
deficiencies; every axis says its unit; every title says what was compared.
matplotlib is imported here only, so ``run`` and ``compare`` never load it.

>>> [stem for stem, _, _ in FIGURES][:3]
['gantt', 'memory', 'bubble-vs-microbatches']
>>> sorted(OP_COLOURS) == sorted("FBIWR") + ["link"]
True
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..formulas import pipeline_speedup  # noqa: E402
from ..trace import Trace  # noqa: E402
from ..units import time_prefix  # noqa: E402
from .collect import StudyResults  # noqa: E402

__all__ = ["FIGURES", "OKABE_ITO", "OP_COLOURS", "gantt", "memory", "bubble_vs_m", "bubble_vs_memory",
           "stage_costs", "speedup", "training", "sweep_heatmaps", "sweep_pareto"]

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
OP_COLOURS = {"F": "#56B4E9", "B": "#E69F00", "I": "#D55E00", "W": "#009E73", "R": "#CC79A7", "link": "#BBBBBB"}
OP_NAMES = {"F": "forward", "B": "backward", "I": "input-gradient", "W": "weight-gradient", "R": "recompute",
            "link": "transfer"}


def _time_scale(trace: Trace) -> tuple[float, str]:
    """Factor from seconds to the axis' unit, and the axis label."""
    if trace.time_unit != "s":
        return 1.0, "time (units)"
    scale, prefix = time_prefix(trace.makespan or 1.0)
    return (1 / scale, f"time ({prefix})") if scale else (1e9, "time (ns)")


def _compare_runs(results: StudyResults) -> list:
    """One run per strategy: the first partition of the study."""
    first = results.study.compare.partitions[0]
    return [r for r in results.compare if r.config.partition == first]


def gantt(results: StudyResults) -> Figure:
    """Per strategy, devices and links as rows, every action as a block with its micro-batch."""
    runs = _compare_runs(results)
    rows_per = [r.trace.devices + len({(t.src, t.dst) for t in r.trace.transfers}) for r in runs]
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 0.9 + 0.32 * sum(rows_per) + 0.5 * len(runs)),
                             squeeze=False, gridspec_kw={"height_ratios": rows_per})
    for ax, result in zip(axes[:, 0], runs):
        trace = result.trace
        scale, xlabel = _time_scale(trace)
        links = sorted({(t.src, t.dst) for t in trace.transfers})
        labels = [f"device {d}" for d in range(trace.devices)] + [f"link {a}→{b}" for a, b in links]
        for span in trace.spans:
            start, width = span.start * scale, (span.end - span.start) * scale
            ax.broken_barh([(start, width)], (span.device - 0.4, 0.8), facecolors=OP_COLOURS[span.op],
                           edgecolors="white", linewidth=0.3)
            if width > 0.018 * trace.makespan * scale:
                ax.text(start + width / 2, span.device, str(span.microbatch), ha="center", va="center", fontsize=6)
        visible = 0.004 * trace.makespan * scale  # a send shorter than this would vanish from the PNG
        for t in trace.transfers:
            row = trace.devices + links.index((t.src, t.dst))
            ax.broken_barh([(t.start * scale, max((t.arrival - t.start) * scale, visible))], (row - 0.3, 0.6),
                           facecolors=OP_COLOURS["link"], edgecolors="none")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_xlim(0, trace.makespan * scale)
        ax.set_title(f"{result.label}: bubble {result.metrics.bubble_fraction:.3f}, "
                     f"step {trace.makespan * scale:.4g} {xlabel[6:-1]}", fontsize=9, loc="left")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    used = sorted({s.op for r in runs for s in r.trace.spans} | ({"link"} if any(r.trace.transfers for r in runs) else set()),
                  key=list(OP_COLOURS).index)
    fig.suptitle("Who computes what, when: one row per device and per link; white is idle", fontsize=10, x=0.01,
                 ha="left")
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    fig.legend(handles=[Patch(color=OP_COLOURS[op], label=OP_NAMES[op]) for op in used], loc="lower center",
               ncol=len(used), fontsize=7, frameon=False)
    return fig


def memory(results: StudyResults) -> Figure:
    """Per strategy, every device's memory over the step."""
    runs = _compare_runs(results)
    fig, axes = plt.subplots(1, len(runs), figsize=(3.1 * len(runs), 3.2), squeeze=False)
    for ax, result in zip(axes[0], runs):
        scale, xlabel = _time_scale(result.trace)
        for d, samples in enumerate(result.trace.memory):
            style = ("-", "--", ":", "-.")[d % 4]  # devices with equal curves stay apart
            ax.step([s.time * scale for s in samples],
                    [(s.activations + s.deferred + s.buffers) / 2**10 for s in samples], where="post",
                    color=OKABE_ITO[d % len(OKABE_ITO)], linestyle=style, label=f"device {d}", linewidth=1.2)
        weights = max(s.params + s.grads for s in result.trace.memory[0]) / 2**20
        ax.set_title(f"{result.label} (+{weights:.2f} MiB weights on device 0)", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("activations and buffers (KiB)", fontsize=8)
    axes[0][-1].legend(fontsize=7, frameon=False)
    fig.suptitle("Memory per device over one step, beyond parameters and gradients", fontsize=10)
    fig.tight_layout()
    return fig


MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def _style(i: int) -> dict[str, Any]:
    return {"color": OKABE_ITO[i % len(OKABE_ITO)]}


def bubble_vs_m(results: StudyResults) -> Figure:
    """Bubble against M per strategy: closed forms as lines, measured points, on two cost models."""
    rows = results.sweep_microbatches
    if not rows:
        return _note("no micro-batch sweep to draw: every point was left out (dp needs M >= K)")
    labels = list(dict.fromkeys(r["label"] for r in rows))
    panels = [("unit", "unit cost: measured (markers) and closed form (lines)")] if "bubble_unit" in rows[0] else []
    panels.append(("study", f"{results.study.hardware.cost} cost, the study's hardware"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, (key, title) in zip(axes[0], panels):
        for i, label in enumerate(labels):
            mine = [r for r in rows if r["label"] == label]
            shift = 1.04 ** (i - (len(labels) - 1) / 2)  # strategies with equal values stay visible
            ms = [r["microbatches"] * shift for r in mine]
            ax.plot(ms, [r[f"bubble_{key}"] for r in mine], MARKERS[i % len(MARKERS)], markersize=5, label=label,
                    markerfacecolor="none", **_style(i))
            if key != "study" or results.study.hardware.cost == "unit":
                formula = [(r["microbatches"] * shift, r["formula"]) for r in mine if r["formula"] is not None]
                if formula:
                    ax.plot(*zip(*formula), "-", linewidth=1, alpha=0.7, **_style(i))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("micro-batches M", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("bubble (idle share of K × step)", fontsize=8)
    axes[0][-1].legend(fontsize=7, frameon=False)
    fig.suptitle(f"Bubble against micro-batches on K={results.study.hardware.devices} devices", fontsize=10)
    fig.tight_layout()
    return fig


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


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
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    panels = [(axes[0], "peak_activation_bytes", "peak activations of the fullest device (KiB)", 2**10),
              (axes[1], "peak_memory_bytes", "peak memory of the fullest device (MiB)", 2**20)]
    handles, steady_shown = [], False
    for i, result in enumerate(runs):
        colour, marker = OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]
        y, steady = result.metrics.bubble_fraction, result.metrics.steady_bubble_fraction
        for ax, field, _, scale in panels:
            x = max(getattr(result.metrics, field)) / scale
            ax.plot([x], [y], marker, color=colour, markersize=8, markerfacecolor="none", markeredgewidth=1.5)
            if steady < y - 1e-9:
                steady_shown = True
                ax.plot([x, x], [y, steady], "-", color=colour, linewidth=0.8)
                ax.plot([x], [steady], marker, color=colour, markersize=7)
        handles.append(plt.Line2D([], [], marker=marker, linestyle="", color=colour, markerfacecolor="none",
                                  markeredgewidth=1.5, label=result.label))
    if steady_shown:
        handles.append(plt.Line2D([], [], marker="o", linestyle="", color="grey",
                                  label="filled: steps back to back"))
    for ax, _, label, _ in panels:
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("bubble (idle share)", fontsize=8)
    axes[1].legend(handles=handles, fontsize=7, frameon=False, loc="upper right")
    fig.suptitle(f"Bubble against memory ({runs[0].config.partition} partition): lower left is better", fontsize=10)
    fig.tight_layout()
    return fig


def stage_costs(results: StudyResults) -> Figure:
    """Each stage's compute per micro-batch under the uniform and the balanced partition."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.38
    for i, (name, part) in enumerate(results.partitions.items()):
        xs = [s + (i - 0.5) * width for s in range(len(part.stage_costs))]
        ax.bar(xs, [c * 1e6 for c in part.stage_costs], width, color=OKABE_ITO[i * 4 % 8],
               label=f"{name} {','.join(map(str, part.sizes))}: bottleneck {part.bottleneck * 1e6:.3g} µs")
    ax.set_xticks(range(len(next(iter(results.partitions.values())).stage_costs)))
    tallest = max(c for part in results.partitions.values() for c in part.stage_costs) * 1e6
    ax.set_ylim(0, tallest * 1.3)  # room for the legend above the bars
    ax.set_xlabel("stage", fontsize=8)
    ax.set_ylabel("cost per micro-batch (µs)", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Stage costs: the slowest stage sets the pace", fontsize=10)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def speedup(results: StudyResults) -> Figure:
    """GPipe's speedup and efficiency against K at fixed M, measured beside K/(1+(K-1)/M)."""
    rows = results.sweep_devices
    m = results.study.compare.microbatches
    ks = [r["devices"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    dense = [k / 10 for k in range(10, 10 * max(ks) + 1)]
    for ax, kind in zip(axes, ("speedup", "efficiency")):
        curve = [pipeline_speedup(k, m) / (k if kind == "efficiency" else 1) for k in dense]
        ax.plot(dense, curve, "-", color="black", linewidth=1, label="K/(1+(K-1)/M)" + (" / K" if kind == "efficiency" else ""))
        for i, label in enumerate(("free_links", "study")):
            values = [r[f"{kind}_{label}"] for r in rows]
            if all(v is not None for v in values):
                ax.plot(ks, values, ("s", "o")[i], linestyle="--", markersize=(7, 4)[i], markerfacecolor="none",
                        linewidth=0.8, label=f"measured, {label.replace('_', ' ')}", **_style(i + 1))
            else:
                ax.text(0.5, 0.5, "add 1 to [sweep].devices\nto measure against one device", transform=ax.transAxes,
                        ha="center", fontsize=8)
        ax.set_xlabel("devices K", fontsize=8)
        ax.set_ylabel(kind + (" (× one device)" if kind == "speedup" else " (speedup / K)"), fontsize=8)
        ax.legend(fontsize=7, frameon=False)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"GPipe, balanced partition, M={m}: speedup over one device", fontsize=10)
    fig.tight_layout()
    return fig


def _note(text: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    return fig


def training(results: StudyResults) -> Figure:
    """Loss over SGD steps: the pipelined run over the single-device run (they coincide)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    single, piped = results.train["single device"], results.train["pipelined"]
    ax.plot(range(len(single)), single, "-", color=OKABE_ITO[1], linewidth=4, alpha=0.6, label="one device")
    ax.plot(range(len(piped)), piped, "o--", color=OKABE_ITO[5], markersize=4, linewidth=1,
            label=f"{results.study.train.strategy} on {results.study.hardware.devices} devices")
    ax.set_xlabel("SGD step", fontsize=8)
    ax.set_ylabel(f"training loss ({results.study.model.loss})", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Training loss: pipelined and single-device runs coincide", fontsize=10)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


#: (file stem, caption, function) of every figure, in report order.
FIGURES = [
    ("gantt", "Schedules as Gantt charts: devices and links as rows, micro-batch numbers on the blocks", gantt),
    ("memory", "Memory held per device over one step", memory),
    ("bubble-vs-microbatches", "Bubble against the number of micro-batches, with the closed forms", bubble_vs_m),
    ("bubble-vs-memory", "The bubble against peak memory trade-off", bubble_vs_memory),
    ("stage-costs", "Stage costs, uniform against balanced partition", stage_costs),
    ("speedup", "Speedup and efficiency against devices", speedup),
    ("training", "Training loss, pipelined against one device", training),
]


# -- sweeps -----------------------------------------------------------------------------


def sweep_heatmaps(records: list[dict[str, Any]]) -> Figure:
    """Bubble and throughput over devices × micro-batches, one column per strategy (best over other axes)."""
    ok = [r for r in records if r.get("ok") and not r.get("oom")]
    strategies = sorted({r["point"].get("strategy", "gpipe") for r in ok})
    ks = sorted({r["point"].get("devices", 4) for r in ok})
    ms = sorted({r["point"].get("microbatches", 8) for r in ok})
    if not ok:
        return _note("no point of the sweep ran without an error or an OOM")
    fig, axes = plt.subplots(2, len(strategies), figsize=(3.2 * len(strategies) + 1, 5.6), squeeze=False)
    for col, name in enumerate(strategies):
        for row, (metric, better, label) in enumerate((("bubble_fraction", min, "bubble"),
                                                       ("throughput", max, "throughput (samples/s)"))):
            grid = [[float("nan")] * len(ms) for _ in ks]
            for r in ok:
                p = r["point"]
                if p.get("strategy", "gpipe") != name:
                    continue
                i, j = ks.index(p.get("devices", 4)), ms.index(p.get("microbatches", 8))
                value = r[metric]
                grid[i][j] = value if grid[i][j] != grid[i][j] else better(grid[i][j], value)
            ax = axes[row][col]
            image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
            ax.set_xticks(range(len(ms)), [str(m) for m in ms], fontsize=7)
            ax.set_yticks(range(len(ks)), [str(k) for k in ks], fontsize=7)
            ax.set_xlabel("micro-batches M", fontsize=8)
            ax.set_ylabel("devices K", fontsize=8)
            ax.set_title(f"{name}: {label}", fontsize=9)
            fig.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    fig.suptitle("Sweep: bubble (lower is better) and throughput (higher is better); blank: no point", fontsize=10)
    fig.tight_layout()
    return fig


def sweep_pareto(records: list[dict[str, Any]], front: list[dict[str, Any]]) -> Figure:
    """Throughput against peak memory for every point; the Pareto front joined."""
    ok = [r for r in records if r.get("ok") and not r.get("oom")]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    strategies = sorted({r["point"].get("strategy", "gpipe") for r in ok})
    for i, name in enumerate(strategies):
        mine = [r for r in ok if r["point"].get("strategy", "gpipe") == name]
        ax.plot([r["peak_memory_bytes"] / 2**20 for r in mine], [r["throughput"] for r in mine],
                MARKERS[i % len(MARKERS)], markerfacecolor="none", color=OKABE_ITO[i % len(OKABE_ITO)], label=name)
    if front:
        ax.plot([r["peak_memory_bytes"] / 2**20 for r in front], [r["throughput"] for r in front], "-",
                color="black", linewidth=1, label="Pareto front")
    ax.set_xlabel("peak memory of the fullest device (MiB)", fontsize=8)
    ax.set_ylabel("throughput (samples per time unit)", fontsize=8)
    ax.set_title("Throughput against memory: upper left is better", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig
