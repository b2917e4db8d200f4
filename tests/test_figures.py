"""Figures readable where they are shown: text as large as the page's body text at the size the page shows
each figure, shared scales where panels are compared, one legend, chunks and pairs told apart, units of the
study's cost model. The page's sizes are read from the written page itself (its CSS and each SVG's width)."""

import re

import matplotlib.pyplot as plt
import pytest
from matplotlib.text import Text

from pipesched import run
from pipesched.cli import main
from pipesched.report import collect, load_study
from pipesched.report.collect import StudyResults
from pipesched.report.figures import FIGURES, memory
from pipesched.report.render import comparison_columns
from pipesched.report.study import CompareSection, ModelSection, Study
from pipesched.report.sweep_figures import sweep_heatmaps, sweep_pareto
from pipesched.schedule import Overlap

STUDY = """
title = "figures"
[model]
layers = "8,16x6,4"
batch = 8
[hardware]
devices = 2
cost = "{cost}"
link_bandwidth = 1e9
[compare]
strategies = ["gpipe", "interleaved", "zb-v", "dualpipev", "dp"]
microbatches = 4
chunks = 2
partitions = {partitions}
[sweep]
microbatches = [2, 4]
devices = [1, 2]
[train]
steps = 1
"""

CSS_PX_PER_PT = 96 / 72  # CSS Values 3, section 5.2: 1in = 96px = 72pt


def _study(tmp_path_factory, cost, partitions):
    path = tmp_path_factory.mktemp(cost) / "study.toml"
    path.write_text(STUDY.format(cost=cost, partitions=partitions))
    return path


@pytest.fixture(scope="module")
def flops(tmp_path_factory):
    return collect(load_study(str(_study(tmp_path_factory, "flops", '["uniform", "balanced"]'))), progress=False)


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    return collect(load_study(str(_study(tmp_path_factory, "unit", '["uniform"]'))), progress=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The written page of the flops study: its body text size, its column width and each figure's width."""
    study = _study(tmp_path_factory, "flops", '["uniform", "balanced"]')
    out = study.parent / "out"
    assert main(["report", str(study), "-o", str(out)]) == 0
    text = (out / "index.html").read_text()
    body = re.search(r"body\{([^}]*)\}", text).group(1)
    font_px = float(re.search(r"font:(\d+(?:\.\d+)?)px", body).group(1))
    column_px = float(re.search(r"max-width:(\d+)px", body).group(1))
    svg_pt = [float(w) for w in re.findall(r'<svg[^>]* width="([\d.]+)pt"', text)]
    return font_px, column_px, svg_pt, text


def _draw(fig):
    fig.draw_without_rendering()
    return fig


def _texts(fig):
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _legends(fig):
    return len(fig.legends) + sum(ax.get_legend() is not None for ax in fig.axes)


def _blocks(fig, prefix):
    return {p.get_gid(): p for ax in fig.axes for p in ax.patches if p.get_gid() and p.get_gid().startswith(prefix)}


@pytest.fixture(scope="module")
def drawn(flops, unit):
    figures = {
        (name, stem): _draw(draw(results))
        for name, results in (("flops", flops), ("unit", unit))
        for stem, _, draw in FIGURES
    }
    yield figures
    for fig in figures.values():
        plt.close(fig)


def test_every_figure_shows_at_natural_size_with_text_at_least_the_body_text(page, drawn):
    font_px, column_px, svg_pt, _ = page
    assert len(svg_pt) == len(FIGURES)
    for width_pt in svg_pt:  # the page shows an SVG at its natural size unless it is wider than the column
        assert width_pt * CSS_PX_PER_PT <= column_px
    for (_, stem), fig in drawn.items():
        assert fig.get_figwidth() * 96 <= column_px, stem
        sizes = [t.get_fontsize() for t in _texts(fig)]
        assert sizes and min(sizes) * CSS_PX_PER_PT >= font_px, (stem, min(sizes))


def test_each_figure_has_one_legend_above_its_panels(drawn):
    for (_, stem), fig in drawn.items():
        assert _legends(fig) == 1, stem
        legend = fig.legends[0].get_window_extent()
        assert all(legend.y0 >= ax.get_window_extent().y1 - 1e-6 for ax in fig.axes), stem


def test_memory_panels_share_both_axes_and_hold_every_curve(flops, drawn):
    fig = drawn["flops", "memory"]
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == len(flops.study.compare.strategies)
    assert len({ax.get_ylim() for ax in panels}) == 1 and len({ax.get_xlim() for ax in panels}) == 1
    first = flops.study.compare.partitions[0]
    runs = [r for r in flops.compare if r.config.partition == first]
    held = max(s.activations + s.deferred + s.buffers for r in runs for samples in r.trace.memory for s in samples)
    label = panels[0].get_ylabel()
    scale = {"(B)": 1, "(KiB)": 2**10, "(MiB)": 2**20}[label[label.index("(") :]]
    assert held / scale <= panels[0].get_ylim()[1] and panels[0].get_ylim()[0] == 0


def test_memory_panels_count_optimizer_state_with_the_weights():
    study = Study(
        model=ModelSection(layers="8,16x6,4", batch=8, dtype="fp32", optimizer="adam"),
        compare=CompareSection(strategies=("gpipe",), partitions=("uniform",)),
    )
    results = StudyResults(study, compare=[run(study.run_config(strategy="gpipe", compute=False))])
    fig = _draw(memory(results))
    # device 0 runs layers 0-1 of the 4 devices' 2,2,2,1: (8+1)*16 + (16+1)*16 = 416 parameters, each with
    # 4 bytes of weight, 4 of gradient and 8 of Adam's two fp32 moments: 6656 bytes, 6.5 KiB
    [panel] = [ax for ax in fig.axes if ax.lines]
    assert panel.get_title(loc="left") == "gpipe\n+6.5 KiB weights and optimizer state on device 0"
    assert any("(beyond parameters, gradients and optimizer state)" in t.get_text() for t in _texts(fig))
    plt.close(fig)


def test_gantt_panels_share_one_time_axis_as_long_as_the_longest_step(flops, drawn):
    fig = drawn["flops", "gantt"]
    longest = max(r.metrics.makespan for r in flops.compare if r.config.partition == "uniform")
    assert len({ax.get_xlim() for ax in fig.axes}) == 1
    assert fig.axes[0].get_xlim()[1] == pytest.approx(longest * 1e6)  # µs: the steps here last tens of µs
    assert fig.axes[-1].get_xlabel().startswith("time (µs)")


@pytest.mark.parametrize(
    "strategy, chunks",
    [
        ("zb-v", {0: (0, 3), 1: (1, 2)}),  # K=2: device d holds stages d and 2K-1-d, the V
        ("interleaved", {0: (0, 2), 1: (1, 3)}),  # stage s on device s mod K
    ],
)
def test_a_devices_chunks_look_different_and_equal_chunks_look_alike(drawn, strategy, chunks):
    fig = drawn["flops", "gantt"]
    blocks = _blocks(fig, f"{strategy}/")
    for op in "FB" if strategy.startswith("interleaved") else "FIW":
        style = {}
        for d, stages in chunks.items():
            for c, stage in enumerate(stages):
                mine = [p for gid, p in blocks.items() if re.fullmatch(rf".*/{d}/{stage}{op}\d+", gid)]
                assert mine, (d, stage, op)
                style[d, c] = {(p.get_hatch(), p.get_facecolor()) for p in mine}
                assert len(style[d, c]) == 1  # every block of one chunk alike
        for d in chunks:
            assert style[d, 0] != style[d, 1]  # a device's two chunks differ
        assert style[0, 0] == style[1, 0] and style[0, 1] == style[1, 1]  # chunk c alike on every device


def test_an_overlapped_pair_is_one_outlined_block_over_its_two_adjacent_halves(flops, drawn):
    fig = drawn["flops", "gantt"]
    run = next(r for r in flops.compare if r.label == "dualpipev" and r.config.partition == "uniform")
    spans = {(s.device, s.op, s.stage, s.microbatch): s for s in run.trace.spans}
    expected = []
    for d, items in enumerate(run.schedule.actions):
        for item in items:
            if type(item) is Overlap:
                f = spans[d, "F", item.forward.stage, item.forward.microbatch]
                b = spans[d, item.backward.op, item.backward.stage, item.backward.microbatch]
                assert f.end == pytest.approx(b.start)  # the halves are adjacent on the pair's device
                expected.append((d, f.start * 1e6, b.end * 1e6))
    assert expected  # dualpipev with M = 2K has pairs
    outlines = [p for gid, p in _blocks(fig, "dualpipev/").items() if "/pair/" in gid]
    drawn_pairs = sorted((round(p.get_y() + 0.4), p.get_x(), p.get_x() + p.get_width()) for p in outlines)
    assert [(d, pytest.approx(a), pytest.approx(b)) for d, a, b in sorted(expected)] == drawn_pairs
    assert all(not p.get_fill() and p.get_linewidth() > 1 for p in outlines)


def test_microbatch_numbers_sit_inside_their_blocks_and_only_there(drawn):
    fig = drawn["flops", "gantt"]
    renderer = fig.canvas.get_renderer()
    blocks = _blocks(fig, "")
    labels = [t for ax in fig.axes for t in ax.texts if (t.get_gid() or "").endswith("/label")]
    assert labels and len(labels) < len([g for g in blocks if "/pair/" not in g])  # some blocks too narrow
    for text in labels:
        block = blocks[text.get_gid().removesuffix("/label")].get_window_extent(renderer)
        box = text.get_window_extent(renderer)
        assert block.x0 <= box.x0 and box.x1 <= block.x1, text.get_gid()
        assert text.get_text() == re.fullmatch(r"\d+[FBIWR](\d+)", text.get_gid().split("/")[2]).group(1)
    assert "wide enough" in fig.legends[0].get_title().get_text()


def test_bubble_markers_sit_at_their_micro_batch_counts(flops, drawn):
    ms = {r["microbatches"] for r in flops.sweep_microbatches}
    fig = drawn["flops", "bubble-vs-microbatches"]
    markers = [line for ax in fig.axes for line in ax.lines if line.get_marker() not in (None, "None", "")]
    assert markers and all(set(line.get_xdata()) <= ms for line in markers)  # no sideways shift


def test_stage_costs_are_in_the_unit_model_and_titled_by_the_partitions_asked(unit, flops, drawn):
    fig = drawn["unit", "stage-costs"]
    ax = fig.axes[0]
    assert ax.get_ylabel().endswith("(units)")
    # unit cost, one stage per device: F = 1 and B = 2 units whatever the stage's layers (pipesched.cost)
    assert [p.get_height() for p in ax.patches] == [3.0, 3.0]
    title = fig.legends[0].get_title().get_text()
    assert "uniform" in title and "balanced" not in title
    ax = drawn["flops", "stage-costs"].axes[0]
    # in the unit its label names (ns on the default study's cpu preset), the bars' heights in that unit
    scale = {"(ns)": 1e9, "(µs)": 1e6, "(ms)": 1e3}[ax.get_ylabel().rsplit(" ", 1)[-1]]
    expected = [c * scale for name in ("uniform", "balanced") for c in flops.partitions[name].stage_costs]
    assert [p.get_height() for p in ax.patches] == pytest.approx(expected)
    assert "uniform against balanced" in drawn["flops", "stage-costs"].legends[0].get_title().get_text()


def test_throughput_says_samples_per_unit_under_unit_cost(unit, flops):
    assert "throughput (samples/unit)" in comparison_columns(unit)
    assert "throughput (samples/s)" in comparison_columns(flops)
    assert "fits memory" not in comparison_columns(flops)  # no cap: nothing to fit


def test_speedup_under_unit_cost_is_the_closed_form(unit):
    # the unit model charges K devices' model K units of forward, so the same work on one device takes K times
    # its own step: GPipe's speedup is then exactly K/(1+(K-1)/M) (Huang et al. 2019), 1.6 for K=2, M=4
    row = next(r for r in unit.sweep_devices if r["devices"] == 2)
    assert row["speedup_study"] == pytest.approx(1.6) and row["efficiency_study"] == pytest.approx(0.8)


def _record(strategy, devices, microbatches, bubble, throughput, time_unit="s"):
    return {
        "ok": True,
        "oom": False,
        "point": {"strategy": strategy, "devices": devices, "microbatches": microbatches},
        "bubble_fraction": bubble,
        "throughput": throughput,
        "peak_memory_bytes": 2**20,
        "time_unit": time_unit,
    }


def test_heat_maps_share_one_colour_scale_per_quantity_with_plain_labels():
    records = [
        _record("gpipe", 2, 4, 0.2, 1_000_123.0),
        _record("gpipe", 4, 4, 0.43, 1_000_456.0),
        _record("1f1b", 2, 4, 0.25, 3_000_789.0),
        _record("1f1b", 2, 4, 0.1, 2_000_000.0),
        _record("zb-h1", 2, 8, 0.05, 2.5, time_unit="unit"),
        _record("zb-h1", 2, 4, 0.3, 1.5, time_unit="unit"),
    ]
    fig = _draw(sweep_heatmaps(records))
    columns: dict[int, list] = {}
    for ax in fig.axes:
        if ax.images:
            columns.setdefault(ax.get_subplotspec().colspan.start, []).append(ax.images[0])
    assert sorted(columns) == [0, 1, 2] and all(len(images) == 3 for images in columns.values())
    # one scale per quantity, from the best value of each cell over every strategy: the bubble's lowest,
    # throughput's highest (1f1b's 3,000,789 beats its 2,000,000), and units apart from seconds
    expected = {0: (0.05, 0.43), 1: (1_000_123.0, 3_000_789.0), 2: (1.5, 2.5)}
    for col, images in columns.items():
        assert {(i.norm.vmin, i.norm.vmax) for i in images} == {expected[col]}, col
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(bars) == 3  # one colour bar per quantity
    assert {bar.get_xlabel() for bar in bars} == {"bubble", "throughput (samples/s)", "throughput (samples/unit)"}
    for bar in bars:
        assert bar.xaxis.get_offset_text().get_text() == ""  # nothing beside the bar to collide with
        ticks = [t.get_text() for t in bar.get_xticklabels() if t.get_text()]
        assert ticks and not any("e" in t or "×" in t for t in ticks)
    assert fig.get_figwidth() * 96 <= 1100 and min(t.get_fontsize() for t in _texts(fig)) * CSS_PX_PER_PT >= 16
    plt.close(fig)


def test_pareto_plot_names_the_time_unit():
    records = [_record("gpipe", 2, 4, 0.2, 3.0, "unit"), _record("1f1b", 2, 4, 0.1, 2.0, "unit")]
    fig = _draw(sweep_pareto(records, records[:1]))
    assert fig.axes[0].get_ylabel() == "throughput (samples/unit)" and _legends(fig) == 1
    plt.close(fig)
