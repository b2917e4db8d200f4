"""A hybrid layout with real numerics: data x tensor x pipeline together keeps the full-batch gradient check.

The reference is one unpartitioned full-batch pass of the same model (``grad_rel_err``); the layout is the
planner's kind: D replicas of K pipeline devices, each stage over T tensor-parallel devices, with the sharded
optimizer and sequence parallelism, a tied embedding and output all-reduced per pipeline.
"""

import pytest

from pipesched import RunConfig, run


@pytest.mark.parametrize(
    "strategy, chunks",
    [("1f1b", None), ("interleaved", 2), ("zb-v", 2)],
)
def test_data_tensor_and_pipeline_together_keep_the_gradient_check(strategy, chunks):
    config = RunConfig(
        model="tiny-gpt", seq_len=16, batch=8, data_parallel=2, tensor_parallel=2, sequence_parallel=True,
        devices=2, microbatches=2, strategy=strategy, chunks=chunks, grad_sync="sharded", devices_per_node=4,
    )  # fmt: skip
    result = run(config)
    assert result.grad_rel_err is not None and result.grad_rel_err < 1e-10
    # every replica's devices ran (no mirroring with real numerics) and the collectives moved: the sharded
    # optimizer's reduce-scatter and all-gather between replicas, and each pipeline's tie where it is split
    ops = {t.op for t in result.trace.transfers}
    assert result.trace.devices == 4 and {"reduce_scatter", "all_gather"} <= ops
    assert ("tie" in ops) == (strategy != "zb-v")  # ZB-V holds the embedding and the output on one device
