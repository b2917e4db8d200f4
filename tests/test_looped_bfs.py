"""Looped breadth-first (``looped-bfs``) against its sources: PyTorch's ``ScheduleLoopedBFS`` order, traced
by hand from its ``_calculate_single_rank_operations`` and as PyTorch 2.13 itself wrote it
(``fixtures/torch/derive.py``), and the closed forms of ``strategies/looped_bfs.py`` under unit cost."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, formulas, load_strategy, run
from pipesched.testing import check_strategy

TORCH = Path(__file__).parent / "fixtures" / "torch"

#: PyTorch's rule, traced by hand: rank d lists, for each of its stages d, d+K, ... in turn, the forwards of
#: micro-batches 0..M-1; then for its stages in reverse, the full backwards of micro-batches M-1..0.
HAND = {
    (2, 2, 2): [
        "0F0 0F1 2F0 2F1 2B1 2B0 0B1 0B0",
        "1F0 1F1 3F0 3F1 3B1 3B0 1B1 1B0",
    ],
    (3, 1, 3): [
        "0F0 3F0 6F0 6B0 3B0 0B0",
        "1F0 4F0 7F0 7B0 4B0 1B0",
        "2F0 5F0 8F0 8B0 5B0 2B0",
    ],
}


@pytest.mark.parametrize("sizes", sorted(HAND), ids=lambda s: "K{}-M{}-v{}".format(*s))
def test_the_order_is_pytorchs_traced_by_hand(sizes):
    devices, microbatches, chunks = sizes
    schedule = load_strategy("looped-bfs").plan(devices, microbatches, chunks)
    assert [" ".join(map(str, row)) for row in schedule.actions] == HAND[sizes]


def test_the_order_is_the_one_pytorch_wrote():
    """K = 4, M = 8, v = 2: PyTorch's pipeline_order, its idle slots (empty cells) left out."""
    rows = (TORCH / "looped-bfs-K4-M8-compute.csv").read_text().splitlines()
    torch_order = [[cell for cell in row.split(",") if cell] for row in rows]
    schedule = load_strategy("looped-bfs").plan(4, 8, 2)
    assert [[str(a) for a in row] for row in schedule.actions] == torch_order


@settings(max_examples=40, deadline=None)
@given(devices=st.integers(1, 5), microbatches=st.integers(1, 10), chunks=st.integers(1, 3))
def test_the_unit_cost_step_and_peak_in_flight_are_the_closed_forms(devices, microbatches, chunks):
    result = run(
        RunConfig(strategy="looped-bfs", devices=devices, microbatches=microbatches, chunks=chunks, cost="unit",
                  compute=False, layers=f"3x{devices * chunks + 1}", batch=microbatches)
    )  # fmt: skip
    assert result.metrics.makespan == pytest.approx(
        3 * microbatches + 3 * (devices - 1) / chunks + 3 * (chunks - 1) * max(0, devices - microbatches) / chunks,
        abs=1e-12,
    )
    if microbatches >= devices:  # interleaved 1F1B's bubble (Narayanan et al. 2021)
        assert result.metrics.bubble_fraction == pytest.approx((devices - 1) / (chunks * microbatches + devices - 1))
    assert result.metrics.peak_inflight_microbatches == [chunks * microbatches] * devices


def test_with_one_chunk_it_is_gpipe():
    for devices, microbatches in [(1, 1), (3, 2), (4, 7)]:
        bfs = load_strategy("looped-bfs").plan(devices, microbatches, 1)
        assert bfs.actions == load_strategy("gpipe").plan(devices, microbatches, 1).actions


def test_passes_check_strategy_with_its_formulas():
    form = formulas.CLOSED_FORMS["looped-bfs"]
    check_strategy(
        "looped-bfs",
        bubble=True,
        inflight=lambda K, M, v, d: form.inflight(K, M, v, d),
        chunks=(1, 2, 3),
        max_examples=25,
    )
