"""Synthesised schedules through ``pipesched.testing``, as a plug-in author's strategy would go (the issue's
"tested with pipesched.testing"): ``Searched`` plans with the search for every drawn K, M and placement."""

from __future__ import annotations

import pytest

from pipesched import RunConfig, run
from pipesched.search import Fixed
from pipesched.search.strategy import Searched
from pipesched.testing import check_strategy


def _bubble(devices: int, microbatches: int, chunks: int) -> float | None:
    """Unit cost, 1F1B's memory: ZB-H1's optimum 3M + K - 1 for M >= K (Qi et al. 2024, section 3.1), and on
    a V ZB-V's 3M + (K-1)/2 for M >= 3K/2 (section 6); each device computes 3M, so the bubble is the rest."""
    if chunks == 1 and microbatches >= devices:
        return (devices - 1) / (3 * microbatches + devices - 1)
    if chunks == 2 and 2 * microbatches >= 3 * devices:
        return (devices - 1) / 2 / (3 * microbatches + (devices - 1) / 2)
    return None


def test_searched_schedules_pass_check_strategy_on_one_stage_per_device_and_on_a_v():
    """Valid, deadlock-free, gradients equal to one full-batch pass under every remat mode and uneven
    micro-batches, the measured-times timeline explained, decoders too; and the closed forms above."""
    check_strategy(Searched(), bubble=_bubble, chunks=(1, 2), max_examples=12)


@pytest.mark.parametrize("devices, microbatches, chunks", [(3, 5, 1), (4, 8, 1), (2, 4, 2), (3, 6, 2)])
def test_a_smaller_limit_holds_in_the_engine_with_exact_gradients(devices, microbatches, chunks):
    """At most 2 micro-batches of a stage per device: the engine's peak in flight stays within 2 (4
    stage-micro-batches on a V's device, its half-stages counting as halves), gradients exact."""
    schedule = Searched(inflight=2).plan(devices, microbatches, chunks)
    result = run(RunConfig(strategy=Fixed(schedule), devices=devices, microbatches=microbatches,
                           batch=2 * microbatches, layers=f"6x{devices * chunks + 1}", chunks=chunks))  # fmt: skip
    assert max(result.metrics.peak_inflight_microbatches) <= 2 * chunks
    assert result.grad_rel_err is not None and result.grad_rel_err < 1e-12
