"""Interleaved zero bubble (``interleaved-zb``) against PyTorch's ``ScheduleInterleavedZeroBubble``: the orders
PyTorch 2.13 itself lists for twelve sizes (fixtures/torch/interleaved-zb-orders.json, written by running it
in a venv with torch, as fixtures/torch/derive.py does), ZB-H1 at v = 1, and the closed forms under unit cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, formulas, load_strategy, run
from pipesched.cli import main
from pipesched.testing import check_strategy

ORDERS = json.loads((Path(__file__).parent / "fixtures" / "torch" / "interleaved-zb-orders.json").read_text())


@pytest.mark.parametrize("key", sorted(ORDERS))
def test_the_order_is_pytorchs_cell_for_cell(key):
    """PyTorch's pipeline_order for (K, M, v), its idle slots left out: v = 2 and 3, M < K, M = K, M a
    multiple of K and not (one round of M when M < 2K)."""
    devices, microbatches, chunks = map(int, key.split(","))
    schedule = load_strategy("interleaved-zb").plan(devices, microbatches, chunks)
    assert [[str(a) for a in row] for row in schedule.actions] == ORDERS[key]


@pytest.mark.parametrize("devices, microbatches", [(1, 3), (2, 2), (3, 6), (4, 8), (4, 3)])
def test_with_one_chunk_it_is_zb_h1(devices, microbatches):
    izb = load_strategy("interleaved-zb").plan(devices, microbatches, 1)
    assert izb.actions == load_strategy("zb-h1").plan(devices, microbatches, 1).actions


def test_an_m_the_rounds_do_not_divide_is_refused_with_the_nearest_that_work(capsys):
    """PyTorch raises for M = 5 on K = 2 (2 rounds); pipesched says so and offers 4 or 6."""
    assert main(["run", "--strategy", "interleaved-zb", "--devices", "2", "--microbatches", "5"]) == 2
    err = capsys.readouterr().err
    assert "2 does not divide --microbatches 5; use 4 or 6" in err and err.count("\n") == 1


@settings(max_examples=40, deadline=None)
@given(devices=st.integers(1, 5), microbatches=st.integers(1, 12), chunks=st.integers(1, 3))
def test_unit_cost_closed_forms(devices, microbatches, chunks):
    """3M + (K-1)/v for M >= K (found by simulation); peak in flight min((v-1)g + K, vM) on every device."""
    assume(microbatches % max(1, microbatches // devices) == 0)
    result = run(
        RunConfig(strategy="interleaved-zb", devices=devices, microbatches=microbatches, chunks=chunks, cost="unit",
                  compute=False, layers=f"3x{devices * chunks + 1}", batch=microbatches)
    )  # fmt: skip
    if microbatches >= devices:
        assert result.metrics.makespan == pytest.approx(3 * microbatches + (devices - 1) / chunks, abs=1e-12)
    g = microbatches // max(1, microbatches // devices)
    peak = min((chunks - 1) * g + devices, chunks * microbatches)
    assert result.metrics.peak_inflight_microbatches == [peak] * devices


def test_passes_check_strategy_with_its_formulas():
    """M <= 3: one round whatever K, so every draw is one PyTorch accepts."""
    form = formulas.CLOSED_FORMS["interleaved-zb"]
    check_strategy("interleaved-zb", bubble=True, inflight=lambda K, M, v, d: form.inflight(K, M, v, d),
                   chunks=(1, 2, 3), max_microbatches=3, max_examples=25)  # fmt: skip


@pytest.mark.parametrize("remat", ["never", "always", "except_last"])
def test_several_rounds_give_the_full_batch_gradients(remat):
    result = run(RunConfig(strategy="interleaved-zb", devices=3, microbatches=9, chunks=2, batch=20,
                           layers="8,16x6,4", remat=remat))  # fmt: skip
    assert result.grad_rel_err is not None and result.grad_rel_err < 1e-10


def test_every_refusal_names_the_nearest_m_that_works_on_each_side():
    """A larger M can have more rounds: K = 2, M = 11 needs 12 (not 15, which 7 rounds do not divide)."""
    from pipesched.errors import PipeschedError

    def works(k, m):
        return m % max(1, m // k) == 0

    for k in range(1, 7):
        for m in range(1, 30):
            if works(k, m):
                continue
            with pytest.raises(PipeschedError) as refused:
                load_strategy("interleaved-zb").plan(k, m, 2)
            below, above = (int(x) for x in str(refused.value).rsplit("use ", 1)[1].split(" or "))
            assert works(k, below) and works(k, above) and below < m < above
            assert not any(works(k, x) for x in range(below + 1, above))
