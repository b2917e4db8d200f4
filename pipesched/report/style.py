"""What every figure of the report shares: page geometry, text size, palette, hatches, markers and layout helpers.

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
matplotlib is imported only by this module and the figure modules that use
it (``figures``, ``gantt``, ``sweep_figures``), so ``run`` and ``compare``
never load it; this module selects the Agg backend, files only, and every
figure module imports it before drawing.

>>> sorted(OP_COLOURS) == sorted("FBIWR") + ["link"]
True
>>> FONT_PT, WIDTH_IN * CSS_PX_PER_IN <= PAGE_WIDTH_PX
(12.0, True)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter, StrMethodFormatter  # noqa: E402

from ..trace import Trace  # noqa: E402
from ..units import time_prefix  # noqa: E402
from .collect import StudyResults  # noqa: E402
from .render import BODY_FONT_PX, PAGE_WIDTH_PX  # noqa: E402

__all__ = [
    "CSS_PX_PER_IN",
    "PT_PER_IN",
    "FONT_PT",
    "WIDTH_IN",
    "OKABE_ITO",
    "LINE_COLOURS",
    "OP_COLOURS",
    "OP_NAMES",
    "CHUNK_HATCHES",
    "MARKERS",
    "LINE_STYLES",
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
#: one per built-in and auto, so every strategy of the default comparison has its own; shapes alike (a circle
#: and an octagon, two hexagons) are kept apart, as the eight colours repeat
MARKERS = ["o", "s", "^", ">", "d", "D", "v", "P", "p", "h", "X", "x", "+", "*", "<"]
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


def _style(i: int) -> dict[str, Any]:
    """Keyword arguments that give the i-th series of a figure its colour from ``LINE_COLOURS``."""
    return {"color": LINE_COLOURS[i % len(LINE_COLOURS)]}


def _note(text: str) -> Figure:
    """A figure that only says why there is nothing to draw."""
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _compare_runs(results: StudyResults) -> list:
    """One run per strategy: the first partition of the study."""
    first = results.study.compare.partitions[0]
    return [r for r in results.compare if r.config.partition == first]
