"""Replica symmetry: one replica simulated and mirrored gives the full simulation's step, or is not used.

The reference is the engine's full simulation of every replica (``mirror_replicas=False``), run on the
same configuration; nothing of ``pipesched.symmetry`` takes part in it.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, run
from pipesched.errors import PipeschedError

STRATEGIES = [("gpipe", None), ("1f1b", None), ("interleaved", 2), ("zb-h1", None), ("zb-v", 2), ("dualpipev", 2)]


def _pair(**kw):
    full = run(RunConfig(compute=False, reference=False, allow_oom=True, **kw))
    mirrored = run(RunConfig(compute=False, reference=False, allow_oom=True, mirror_replicas=True, **kw))
    return full, mirrored


def _assert_same_step(full, mirrored, replicas):
    a, b = full.metrics, mirrored.metrics
    assert b.makespan == a.makespan and b.period == a.period
    assert b.bubble_fraction == pytest.approx(a.bubble_fraction, rel=1e-12, abs=1e-15)
    # replica 0's devices, d·D in the full run, are the mirrored run's d
    assert b.busy == pytest.approx(a.busy[::replicas], rel=1e-12)
    assert b.peak_memory_bytes == a.peak_memory_bytes[::replicas]
    assert b.peak_activation_bytes == a.peak_activation_bytes[::replicas]
    assert b.memory_by_role == a.memory_by_role[::replicas]
    assert max(b.peak_memory_bytes) == max(a.peak_memory_bytes)  # every replica's device peaks alike


@settings(max_examples=40, deadline=None)
@given(
    devices=st.integers(1, 4),
    replicas=st.integers(2, 4),
    microbatches=st.integers(1, 6),
    strategy=st.sampled_from(STRATEGIES),
    remat=st.sampled_from(["never", "always"]),
    grad_sync=st.sampled_from(["allreduce", "sharded"]),
    collective=st.sampled_from(["auto", "ring"]),
    per_node=st.sampled_from([None, 2, 4]),
)
def test_one_replica_mirrored_is_the_full_step(
    devices, replicas, microbatches, strategy, remat, grad_sync, collective, per_node
):
    """The MLP on the cpu preset's links, over nodes or not, flat rings or two levels: where the engine mirrors,
    every metric is the full simulation's; where a ring mixes links it simulates everything."""
    name, chunks = strategy
    kw = dict(
        devices=devices, data_parallel=replicas, microbatches=microbatches, batch=replicas * microbatches * 2,
        strategy=name, chunks=chunks, remat=remat, grad_sync=grad_sync, collective=collective,
        devices_per_node=per_node, layers="16,32x5,8",
    )  # fmt: skip
    try:
        full, mirrored = _pair(**kw)
    except PipeschedError:  # a strategy refusing these sizes (too few micro-batches, too many stages)
        return
    if mirrored.trace.devices == devices:
        _assert_same_step(full, mirrored, replicas)
    else:  # not provably alike: the full simulation, unchanged
        assert mirrored.trace.devices == devices * replicas and mirrored.metrics == full.metrics
    # one node, or nodes each holding whole rings: every ring edge is the same link, so it mirrors
    if per_node is None:
        assert mirrored.trace.devices == devices


def test_a_decoder_with_tensor_parallelism_mirrors_exactly():
    """LLaMA-2-7B on H100 nodes: D = 4 replicas of T = 2, K = 2; rings inside a node."""
    kw = dict(model="llama2-7b", hardware="h100-sxm", seq_len=512, data_parallel=4, tensor_parallel=2, devices=2,
              microbatches=4, batch=16, strategy="1f1b", grad_sync="sharded")  # fmt: skip
    full, mirrored = _pair(**kw)
    assert mirrored.trace.devices == 2
    _assert_same_step(full, mirrored, 4)


def test_a_ring_over_nodes_of_both_links_is_simulated_in_full():
    """A flat ring over two nodes mixes intra- and inter-node edges: the replicas' steps differ, so no mirror."""
    full, mirrored = _pair(devices=2, data_parallel=4, microbatches=2, batch=16, devices_per_node=2,
                           collective="ring", hardware="a100-80gb", layers="16,32x5,8")  # fmt: skip
    assert mirrored.trace.devices == 8 and mirrored.metrics == full.metrics


def test_unequal_device_speeds_are_simulated_in_full():
    full, mirrored = _pair(devices=2, data_parallel=2, microbatches=2, batch=8, device_speed="1=0.5")
    assert mirrored.trace.devices == 4 and mirrored.metrics == full.metrics


def test_real_numerics_never_mirror():
    """Real NumPy must compute every replica's gradients: a computing run ignores the request."""
    result = run(RunConfig(devices=2, data_parallel=2, microbatches=2, batch=8, mirror_replicas=True))
    assert result.trace.devices == 4 and result.grad_rel_err is not None and result.grad_rel_err < 1e-12


@pytest.mark.parametrize("grad_sync", ["allreduce", "sharded"])
def test_a_tied_decoder_mirrors_with_each_pipelines_own_tie(grad_sync):
    """tiny-gpt ties its embedding and output: each replica sums them between its own first and last device
    (Megatron-LM's embedding group), inside the replica, so replica 0's tie runs as it is."""
    kw = dict(model="tiny-gpt", seq_len=16, data_parallel=2, devices=2, microbatches=2, batch=8,
              strategy="1f1b", devices_per_node=2, grad_sync=grad_sync)  # fmt: skip
    full, mirrored = _pair(**kw)
    ties = [t for t in full.trace.transfers if t.op == "tie"]
    # device d·D + r: replica 0's pair is (0, 2), replica 1's (1, 3); two sends each way per pair
    assert sorted({(t.src, t.dst) for t in ties}) == [(0, 2), (1, 3), (2, 0), (3, 1)]
    assert mirrored.trace.devices == 2 and any(t.op == "tie" for t in mirrored.trace.transfers)
    _assert_same_step(full, mirrored, 2)


@pytest.mark.parametrize(
    "extra",
    [
        dict(cost="unit"),  # free transfers land at once
        dict(link_latency=0.0),  # a chunk lands the instant the next one leaves
    ],
)
def test_collectives_without_latency_are_simulated_in_full(extra):
    """Which of two chunks a device holds first at one instant then depends on other replicas' events: the
    full runs below peak on replica 1's device (found by a second reader), which one replica cannot show."""
    kw = dict(layers="16,32x5,8", devices=2, data_parallel=2, microbatches=4, batch=64, strategy="1f1b", **extra)
    full, mirrored = _pair(**kw)
    assert mirrored.trace.devices == 4 and mirrored.metrics == full.metrics
