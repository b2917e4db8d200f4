"""V-Min and V-Half (Qi et al., "Pipeline Parallelism with Controllable Memory", NeurIPS 2024) against the
authors' own generator (fixtures/v_shape/v-shape-orders.json, written by running their ``zbv_greedy.py`` as
fixtures/v_shape/derive.py does), the building block's offsets by hand, and the paper's memory and bubble
statements under unit cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, formulas, load_strategy, run
from pipesched.cli import main
from pipesched.compose import v_block_offsets
from pipesched.testing import check_strategy

ORDERS = json.loads((Path(__file__).parent / "fixtures" / "v_shape" / "v-shape-orders.json").read_text())
NAMES = {"min": "v-min", "half": "v-half"}


@pytest.mark.parametrize("key", sorted(ORDERS))
def test_the_order_is_the_authors_generators_pass_for_pass(key):
    """Their order for (setting, K, M): K = 1 to 6, M below, at and above K, 3 dividing K or not, K even or odd."""
    memory, devices, microbatches = key.split(",")
    schedule = load_strategy(NAMES[memory]).plan(int(devices), int(microbatches))
    assert [[str(a) for a in row] for row in schedule.actions] == ORDERS[key]


def test_the_building_blocks_are_the_papers_by_hand():
    """Slots of F (chunk 0), F (chunk 1), I (chunk 1), I (chunk 0): V-Min's F one slot apart per device and its
    block ending at 4K - 1 - d (2 later when 3 | K); V-Half's F two slots apart, ending at 6K - 2 - d (3 later
    when K is even)."""
    assert v_block_offsets(4, "min") == [(0, 7, 8, 15), (1, 6, 9, 14), (2, 5, 10, 13), (3, 4, 11, 12)]
    assert v_block_offsets(3, "min") == [(0, 5, 8, 13), (1, 4, 9, 12), (2, 3, 10, 11)]
    assert v_block_offsets(3, "half") == [(0, 7, 8, 16), (2, 6, 10, 15), (4, 5, 12, 14)]
    assert v_block_offsets(2, "half") == [(0, 4, 8, 13), (2, 3, 10, 12)]


@given(devices=st.integers(1, 40), memory=st.sampled_from(["min", "half"]))
def test_the_repeated_blocks_never_collide_and_respect_the_v(devices, memory):
    """Repeated every 6 slots, a device's four passes fall in four different slots of each 6, leaving two
    for its Ws; each pass comes after its input: down the V, back up, and the turns on one device."""
    blocks = v_block_offsets(devices, memory)
    for f0, f1, i1, i0 in blocks:
        assert len({f0 % 6, f1 % 6, i1 % 6, i0 % 6}) == 4
        assert f0 < f1 < i1 < i0
    for d in range(1, devices):
        above, here = blocks[d - 1], blocks[d]
        assert here[0] > above[0] and here[2] > above[2]  # chunk 0's F and chunk 1's I flow down
        assert above[1] > here[1] and above[3] > here[3]  # the others flow back up


@settings(max_examples=30, deadline=None)
@given(memory=st.sampled_from(["min", "half"]), devices=st.integers(1, 7), extra=st.integers(0, 8), data=st.data())
def test_unit_cost_closed_forms(memory, devices, extra, data):
    """The paper's statements under unit cost (F = I = W, free links), held over K and M:

    - memory: the authors' table, (K+4)//3 (V-Min) and (K+2)//2 (V-Half) micro-batches of a 1F1B stage at the
      peak, i.e. twice that in chunk-micro-batches, once M reaches it;
    - bubble: about 2/3 (V-Min) and 1/2 (V-Half) of 1F1B's idle time 3(K-1): within 3/2 (V-Min) and 2
      (V-Half) below it, never above, where the form holds (M from the bound ``formulas`` states);
    - and the exact forms ``formulas`` states (found by simulation), per device, for every M.
    """
    name = NAMES[memory]
    table = (devices + 4) // 3 if memory == "min" else (devices + 2) // 2
    microbatches = data.draw(st.integers(1, table + devices + 2 + extra))
    r = run(
        RunConfig(strategy=name, devices=devices, microbatches=microbatches, cost="unit", compute=False,
                  layers=f"3x{2 * devices + 1}", batch=microbatches, reference=False)
    )  # fmt: skip
    m = r.metrics
    if microbatches >= table:
        assert max(m.peak_inflight_microbatches) == 2 * table
    assert max(m.peak_inflight_microbatches) <= 2 * microbatches
    form = formulas.CLOSED_FORMS[name]
    assert m.peak_inflight_microbatches == form.peak_inflight(devices, microbatches, 2)
    bubble = form.bubble(devices, microbatches, 2)
    assert r.bubble_formula == bubble  # the strategy states the table's form
    if bubble is not None:
        assert m.bubble_fraction == pytest.approx(bubble, abs=1e-12)
        idle = m.makespan - 3 * microbatches
        stated = 3 * (devices - 1) * (2 / 3 if memory == "min" else 1 / 2)
        assert stated - (1.5 if memory == "min" else 2) <= idle <= stated
    if memory == "min":
        bound = (devices + 4) // 3 if devices % 3 else 2 * devices // 3 + 2
    else:
        bound = devices + 2
    assert (bubble is not None) == (microbatches >= bound)  # the form holds from the bound it states


@pytest.mark.parametrize("name", ["v-min", "v-half"])
def test_passes_check_strategy_with_its_formulas(name):
    """Every remat mode, uneven micro-batches, real NumPy and tiny decoders: gradients equal the full-batch pass."""
    form = formulas.CLOSED_FORMS[name]
    check_strategy(name, bubble=True, inflight=form.inflight, chunks=(2,), max_devices=4, max_microbatches=10,
                   max_examples=40)  # fmt: skip


@pytest.mark.parametrize("remat", ["never", "always", "except_last"])
def test_the_steady_state_gives_the_full_batch_gradients(remat):
    for name in NAMES.values():
        result = run(RunConfig(strategy=name, devices=3, microbatches=11, batch=25, layers="8,16x6,4", remat=remat))
        assert result.grad_rel_err is not None and result.grad_rel_err < 1e-10


def test_other_chunk_counts_are_refused_in_one_sentence(capsys):
    assert main(["run", "--strategy", "v-half", "--chunks", "3"]) == 2
    err = capsys.readouterr().err
    assert "v-half places two stages on each device, d and 2K-1-d, so --chunks 3 cannot apply; use --chunks 2" in err
    assert err.count("\n") == 1
