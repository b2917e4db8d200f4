"""Closed forms for pipeline schedules, each with its source, and the one definition of "bubble".

**Bubble fraction** is the idle share of the devices' time: with K devices
busy (computing, recompute included) for ``busy_d`` during a step of length
``makespan``, bubble = 1 - sum(busy_d) / (K * makespan). Megatron-LM (Narayanan
et al., 2021) reports instead the ratio of bubble time to ideal time,
(K-1)/M for GPipe; the two are related by fraction = ratio / (1 + ratio).

**Found by simulation.** Most forms here come from a paper or are derived in
their docstrings. A few were read off the simulator and are not derived: the
interleaved bubble when K does not divide M, interleaved-zb's step, ZB-H2's step
for M <= 2K-2, ZB-V's, V-Min's and V-Half's steps and peaks in flight, DualPipeV's
and DualPipe's steps under either overlap rule, and Chimera's idle time when a
backward and a forward differ in length. Their docstrings say so, their
``CLOSED_FORMS`` labels (which ``pipesched formulas`` prints) say "found by
simulation", and the tests that hold the simulator to them are regression
checks, named in each docstring: they show when the schedule or the engine
changes, not that either is right.

>>> gpipe_bubble(4, 8)
0.2727272727272727
>>> bubble_from_ratio((4 - 1) / 8) == gpipe_bubble(4, 8)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .engine import remat_keeps
from .model import Layer, keeps_output, saved_widths
from .schedule import Item, expand

__all__ = [
    "ClosedForm",
    "CLOSED_FORMS",
    "stage_activation_bytes",
    "stage_input_bytes",
    "peak_activation_bytes",
    "activation_peak",
    "gpipe_bubble",
    "interleaved_bubble",
    "LOOPED",
    "looped_bfs_bubble",
    "interleaved_zb_bubble",
    "interleaved_zb_peak_inflight",
    "looped_bfs_unit_makespan",
    "zb_h1_bubble",
    "zb_h1_unit_makespan",
    "zb_h2_bubble",
    "zb_h2_unit_makespan",
    "zb_v_bubble",
    "zb_v_unit_makespan",
    "zero_bubble_unit_window",
    "zero_bubble_steady_bubble",
    "dualpipev_bubble",
    "dualpipev_unit_makespan",
    "dualpipe_table_bubble",
    "zb_h2_peak_inflight",
    "zb_v_peak_inflight",
    "dualpipev_peak_inflight",
    "v_min_unit_makespan",
    "v_min_bubble",
    "v_min_peak_inflight",
    "v_half_unit_makespan",
    "v_half_bubble",
    "v_half_peak_inflight",
    "data_parallel_bubble",
    "ring_allreduce_time",
    "ring_reduce_scatter_time",
    "ring_all_gather_time",
    "hierarchical_allreduce_time",
    "hierarchical_reduce_scatter_time",
    "hierarchical_all_gather_time",
    "gpipe_peak_inflight",
    "one_f_one_b_peak_inflight",
    "zb_h1_peak_inflight",
    "interleaved_peak_inflight",
    "bubble_from_ratio",
    "pipeline_speedup",
    "flow_shop_makespan",
    "gpipe_unit_makespan",
    "gpipe_unit_bubble",
    "dualpipe_unit_makespan",
    "dualpipe_bubble",
    "dualpipe_peak_inflight",
    "dualpipe_runs",
    "chimera_runs",
    "chimera_paper_bubble",
    "chimera_idle",
    "chimera_unit_makespan",
    "chimera_bubble",
    "chimera_peak_inflight",
]


def gpipe_bubble(devices: int, microbatches: int) -> float:
    """(K-1)/(K-1+M): GPipe F-then-B under equal stage costs, no communication.

    Source: Huang et al., "GPipe", NeurIPS 2019, section 2.3 (bubble overhead
    O((K-1)/(M+K-1))). Holds exactly under unit cost with or without
    re-materialization ``always`` (recompute lengthens every backward alike).
    """
    return (devices - 1) / (devices - 1 + microbatches)


def interleaved_bubble(devices: int, microbatches: int, chunks: int) -> float:
    """(K-1)/(v·M + K-1): interleaved 1F1B with v chunks per device.

    Source: Narayanan et al., SC 2021, section 2.2.2, for M a multiple of K: the
    bubble time shrinks by v while the work stays, ratio (K-1)/(v·M). With
    pipesched's rounds of at least K micro-batches it holds for every M >= K;
    that extension is found by simulation, not derived. Regression check:
    ``tests/test_formulas.py::test_the_table_of_closed_forms_matches_the_simulator``
    (K <= 5, M <= 12, v <= 3).
    """
    return (devices - 1) / (chunks * microbatches + devices - 1)


def looped_bfs_unit_makespan(devices: int, microbatches: int, chunks: int) -> float:
    """3M + 3(K-1)/v + 3(v-1)·max(0, K-M)/v: looped breadth-first's step under unit cost (a stage's F = 1/v,
    B = 2/v, free links).

    Source: Lamy-Poirier, "Breadth-First Pipeline Parallelism", MLSys 2023, in
    PyTorch's ``ScheduleLoopedBFS`` order; derived in ``strategies/looped_bfs.py``.

    >>> looped_bfs_unit_makespan(4, 8, 2), looped_bfs_unit_makespan(4, 2, 2)
    (28.5, 13.5)
    """
    return 3 * microbatches + 3 * (devices - 1) / chunks + 3 * (chunks - 1) * max(0, devices - microbatches) / chunks


def looped_bfs_bubble(devices: int, microbatches: int, chunks: int) -> float:
    """1 - 3M / ``looped_bfs_unit_makespan``: (K-1)/(vM + K-1) for M >= K, interleaved 1F1B's."""
    return 1.0 - 3 * microbatches / looped_bfs_unit_makespan(devices, microbatches, chunks)


def interleaved_zb_bubble(devices: int, microbatches: int, chunks: int) -> float:
    """(K-1)/(3vM + K-1): interleaved zero bubble (PyTorch's ``ScheduleInterleavedZeroBubble``) under unit
    cost, M >= K: ZB-H1's idle K-1 (Qi et al., ICLR 2024) divided by v. Found by simulation; regression check:
    ``tests/test_interleaved_zb.py::test_unit_cost_closed_forms``.
    """
    return (devices - 1) / (3 * chunks * microbatches + devices - 1)


def interleaved_zb_peak_inflight(devices: int, microbatches: int, chunks: int) -> int:
    """min((v-1)·g + K, v·M) on every device, g = M / max(1, M // K) the round: derived in
    ``strategies/interleaved_zb.py``."""
    g = microbatches // max(1, microbatches // devices)
    return min((chunks - 1) * g + devices, chunks * microbatches)


def zb_h1_unit_makespan(devices: int, microbatches: int) -> float:
    """ZB-H1's step length under unit cost with F=I=W=1: 3M + K - 1 for M >= K, else 2(M + K) - 1.

    With M >= K every device is busy 3M and idles K - 1 once, waiting for the
    first gradient (Qi et al. 2024, section 2.1). With M < K the last device is
    the bottleneck: it receives micro-batch m at m + K - 1 and runs F and I
    back to back, so the last I leaves it at 2M + K - 1; that gradient needs
    K - 1 more steps to reach device 0, whose final W adds one.

    >>> zb_h1_unit_makespan(4, 8), zb_h1_unit_makespan(4, 2)
    (27.0, 11.0)
    """
    if microbatches >= devices:
        return 3.0 * microbatches + devices - 1
    return 2.0 * (microbatches + devices) - 1


def zb_h1_bubble(devices: int, microbatches: int) -> float:
    """(K-1)/(3M + K-1) for M >= K: ZB-H1 under unit cost with F=I=W, a third of 1F1B's bubble.

    Source: Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024, section
    2.1: each device idles (K-1)(T_F + T_I - T_W), where the paper's B is
    pipesched's I; with a full backward T_B = T_I + T_W that reads
    (K-1)(T_F + T_B - 2T_W), the form DeepSeek's DualPipe table uses. 1F1B idles
    (K-1)(T_F + T_I + T_W). For M < K, the idle share of ``zb_h1_unit_makespan``.
    """
    return 1.0 - 3.0 * microbatches / zb_h1_unit_makespan(devices, microbatches)


def zb_h2_unit_makespan(devices: int, microbatches: int) -> float:
    """ZB-H2's step under unit cost with F=I=W=1: 3M + K - 1 for M >= 2K - 2, else 2K + 1 + floor(5(M-1)/2).

    With M >= 2K - 1 device d is busy from d to d + 3M without a gap (the
    parallelogram of Qi et al. 2024, figure 3), so the step ends at 3M + K - 1
    on the last device; at M = 2K - 2 the first devices wait once inside the
    step, but the last still ends there. With fewer micro-batches the warm-up
    cannot fill the wait for the gradients. The step at M = 2K - 2 and the
    second form are found by simulation, not derived, and not in the paper.
    Regression checks:
    ``tests/test_frontier.py::test_zb_h2_step_window_and_memory`` (K <= 6,
    M <= 20) and ``test_the_tables_forms_hold_and_the_strategies_state_them``.

    >>> zb_h2_unit_makespan(4, 8), zb_h2_unit_makespan(4, 2)
    (27.0, 11.0)
    """
    return float(max(3 * microbatches + devices - 1, 2 * devices + 1 + 5 * (microbatches - 1) // 2))


def zb_h2_bubble(devices: int, microbatches: int) -> float:
    """ZB-H2's idle share of one step: (K-1)/(3M+K-1) for M >= 2K - 2, as ZB-H1's.

    Its zero is the steady state's (``zero_bubble_steady_bubble``): one step
    alone still spans the K - 1 units by which the last device starts late.
    For M <= 2K - 2 found by simulation (``zb_h2_unit_makespan``).
    """
    return 1.0 - 3.0 * microbatches / zb_h2_unit_makespan(devices, microbatches)


def zb_v_unit_makespan(devices: int, microbatches: int) -> float:
    """ZB-V's step under unit cost (a chunk's F = I = W = 1/2): 3M + max((K-1)/2, 2K-1-M).

    Every device computes for 3M. With enough micro-batches each idles only
    (K-1)/2: the K - 1 chunk forwards the first micro-batch takes to reach the
    bottom of the V. With fewer, the step waits on the first micro-batch's
    round trip. Both found by simulation, not derived; the paper states only
    the zero bubble of the steady state (``zero_bubble_steady_bubble``).
    Regression checks: ``tests/test_frontier.py::test_zb_v_step_window_and_memory``
    (K <= 6, M <= 20) and ``test_the_tables_forms_hold_and_the_strategies_state_them``.

    >>> zb_v_unit_makespan(4, 8), zb_v_unit_makespan(4, 2)
    (25.5, 11.0)
    """
    return 3.0 * microbatches + max((devices - 1) / 2, 2 * devices - 1 - microbatches)


def zb_v_bubble(devices: int, microbatches: int) -> float:
    """ZB-V's idle share of one step: (K-1)/(6M+K-1) once M >= 3K/2; each device idles (K-1)/2, half of ZB-H1's K-1.

    Found by simulation (``zb_v_unit_makespan``).
    """
    return 1.0 - 3.0 * microbatches / zb_v_unit_makespan(devices, microbatches)


def zero_bubble_unit_window(devices: int, microbatches: int) -> float:
    """How long ZB-H2's and ZB-V's busiest device is in use in one step, under unit cost: max(3M, 2M+2K-1).

    Device 0 computes 3M in all. With M >= 2K - 1 it never waits; with fewer,
    it runs out of forwards before the first gradient returns at 2K - 1 (K
    forwards down, K - 1 input-gradients up) and then runs its 2M backward
    passes. This is ``Trace.period``: how far apart steps can start when they
    run back to back.
    """
    return float(max(3 * microbatches, 2 * microbatches + 2 * devices - 1))


def zero_bubble_steady_bubble(devices: int, microbatches: int) -> float:
    """ZB-H2's and ZB-V's idle share when steps run back to back: 0 for M >= 2K - 1 (Qi et al. 2024).

    Needs no synchronising optimizer step between steps (the paper's
    post-validation); see ``Trace.period``.
    """
    return 1.0 - 3.0 * microbatches / zero_bubble_unit_window(devices, microbatches)


def dualpipe_table_bubble(devices: int, forward: float, backward: float, weight: float, pair: float) -> float:
    """DualPipe's bubble per device, (PP/2 - 1)(F&B + B - 3W), ``devices`` = PP/2: DualPipeV's K, or half DualPipe's.

    Source: the DualPipe README's table (DeepSeek-AI, 2025), PP the number of
    stages; F, B, W one chunk's forward, full backward and weight pass, F&B an
    overlapped pair. 1F1B on PP devices idles (PP-1)(F+B), ZB1P (PP-1)(F+B-2W).

    >>> dualpipe_table_bubble(4, forward=0.5, backward=1.0, weight=0.5, pair=1.5)  # unit cost, sum rule
    3.0
    """
    return (devices - 1) * (pair + backward - 3 * weight)


def dualpipe_runs(devices: int, microbatches: int) -> bool:
    """Whether DualPipe runs K devices and M micro-batches: K even, M even and M >= 2K, as DeepSeek's
    ``DualPipe.step`` asserts (``num_ranks % 2 == 0``, ``num_chunks % 2 == 0 and num_chunks >= num_ranks * 2``)."""
    return devices % 2 == 0 and microbatches % 2 == 0 and microbatches >= 2 * devices


def dualpipe_unit_makespan(devices: int, microbatches: int, overlap: str = "sum") -> float:
    """DualPipe's step under unit cost (a stage's F = I = W = 1, B = 2, free links), K and M even, M >= 2K.

    Every device computes M forwards and M backwards, 3M. ``sum`` rule (a
    pair lasts F + B): every device idles K - 2, DeepSeek's table's
    (PP/2-1)(F&B + B - 3W) with PP = K ranks and F&B = 3, so the step is
    3M + K - 2. ``max`` rule (a pair lasts max(F, B) = B): device d idles
    min(r+1, K/2-1), r = min(d, K-1-d), the table's (K/2-1)(B + B - 3W) =
    K/2 - 1 on the middle devices, which run one pair fewer (DeepSeek does
    not overlap their first); the step is 2M + 3K/2. Both are twice
    DualPipeV's (``dualpipev_unit_makespan``) on K/2 devices and M/2
    micro-batches: each half of the devices runs DualPipeV's order with
    stages twice as long, and the two halves mirror each other. Found by
    simulation, not derived; regression checks:
    ``tests/test_dualpipe.py::test_unit_cost_step_idle_and_memory_under_each_overlap_rule`` (K <= 8,
    M <= 2K + 14) and ``test_dualpipe_meets_deepseeks_table_and_figure``.

    >>> dualpipe_unit_makespan(4, 8), dualpipe_unit_makespan(4, 8, "max")
    (26.0, 22.0)
    """
    if overlap == "sum":
        return 3.0 * microbatches + devices - 2
    return 2.0 * microbatches + 1.5 * devices


def dualpipe_bubble(devices: int, microbatches: int, overlap: str = "sum") -> float:
    """DualPipe's idle share under unit cost, K and M even, M >= 2K: (K-2)/(3M+K-2) with the sum rule.

    With the ``max`` rule the devices idle min(r+1, K/2-1) each,
    (K/2-1)(K/2+2) in all, over K(2M + 3K/2). Found by simulation
    (``dualpipe_unit_makespan``). As for DualPipeV, overlap hides only
    communication, which unit cost makes free: the sum rule's K-2 is ZB-H1's
    K-1 on K devices less one, won by feeding the pipeline from both ends.
    """
    if overlap == "sum":
        return (devices - 2) / (3 * microbatches + devices - 2)
    half = devices // 2
    return (half - 1) * (half + 2) / (devices * dualpipe_unit_makespan(devices, microbatches, overlap))


def dualpipev_unit_makespan(devices: int, microbatches: int, overlap: str = "sum") -> float:
    """DualPipeV's step under unit cost (a chunk's F = I = W = 1/2, B = 1) for M >= 2K.

    ``sum`` rule (a pair lasts F + B): every device computes 3M and idles K - 1,
    the table's (K-1)(F&B + B - 3W) with F&B = 3/2: 3M + K - 1. ``max`` rule
    (a pair lasts max(F, B) = B): devices differ in how many pairs they run;
    the last device, which runs one pair fewer (DeepSeek does not overlap its
    first), computes 2M + K + 1/2 and idles the table's (K-1)(B + B - 3W) =
    (K-1)/2, so the step is 2M + 3K/2. DeepSeek's table gives the idle time
    per device; that every device idles exactly that under ``sum``, and both
    steps, are found by simulation, not derived. Regression checks:
    ``tests/test_frontier.py::test_dualpipev_step_under_each_overlap_rule``
    (K <= 6, M <= 2K + 12) and ``test_dualpipev_meets_deepseeks_table_and_figure``.

    >>> dualpipev_unit_makespan(4, 8), dualpipev_unit_makespan(4, 8, "max")
    (27.0, 22.0)
    """
    if overlap == "sum":
        return 3.0 * microbatches + devices - 1
    return 2.0 * microbatches + 1.5 * devices


def dualpipev_bubble(devices: int, microbatches: int, overlap: str = "sum") -> float:
    """DualPipeV's idle share under unit cost, M >= 2K: (K-1)/(3M+K-1) with the sum rule, ZB-H1's figure.

    With the ``max`` rule device d idles min(d+1, K-1)/2, (K-1)(K+2)/4 in all,
    over K(2M + 3K/2). Both found by simulation (``dualpipev_unit_makespan``).
    Under the sum rule overlap hides only communication, which unit cost
    makes free, so DualPipeV wins no time over ZB-H1 here; its activations,
    2K+1 half-stages, are about ZB-H1's K whole stages.
    """
    if overlap == "sum":
        return (devices - 1) / (3 * microbatches + devices - 1)
    return (devices - 1) * (devices + 2) / 4 / (devices * dualpipev_unit_makespan(devices, microbatches, overlap))


def data_parallel_bubble(devices: int, microbatches: int) -> float:
    """1 - M / (K·ceil(M/K)): idle share of data parallelism with free links under unit cost.

    Device d runs ceil or floor of M/K micro-batches; the step lasts as long
    as the busiest device.
    """
    return 1.0 - microbatches / (devices * -(-microbatches // devices))


def ring_allreduce_time(devices: int, nbytes: int, bandwidth: float, latency: float) -> float:
    """2(K-1) · (latency + ceil(bytes/K) / bandwidth): a ring all-reduce over K devices.

    Reduce-scatter then all-gather, K-1 steps each; in every step each device
    sends one chunk of 1/K of the bytes to its neighbour, all links at once
    (Patarasuk and Yuan, 2009). This is 2(K-1)/K · bytes/bandwidth +
    2(K-1) · latency up to the rounding of the chunk to whole bytes.

    >>> round(ring_allreduce_time(4, 4000, bandwidth=1e9, latency=1e-6) * 1e6, 9)  # 6 steps of 1 + 1 µs
    12.0
    """
    if devices == 1:
        return 0.0
    return 2 * (devices - 1) * (latency + -(-nbytes // devices) / bandwidth)


def ring_reduce_scatter_time(devices: int, nbytes: int, bandwidth: float, latency: float) -> float:
    """(K-1) · (latency + ceil(bytes/K) / bandwidth): a ring reduce-scatter over K devices.

    In each of K-1 steps every device sends one chunk of 1/K of the bytes,
    summed with what it received, to its neighbour; after them each device
    holds the full sum of one chunk (Patarasuk and Yuan 2009, the all-reduce's
    first half; Thakur et al. 2005, "Optimization of collective communication
    operations in MPICH", section 4: (p-1)α + (p-1)/p · nβ). The distributed
    optimizer (ZeRO-1) reduces a stage's gradients this way.

    >>> round(ring_reduce_scatter_time(4, 4000, bandwidth=1e9, latency=1e-6) * 1e6, 9)  # 3 steps of 1 + 1 µs
    6.0
    """
    return (devices - 1) * (latency + -(-nbytes // devices) / bandwidth)


def ring_all_gather_time(devices: int, nbytes: int, bandwidth: float, latency: float) -> float:
    """(K-1) · (latency + ceil(bytes/K) / bandwidth): a ring all-gather over K devices.

    Each device starts with one chunk of 1/K of the bytes and passes on the
    chunk it last received, K-1 times, until every device holds all of them
    (Patarasuk and Yuan 2009, the all-reduce's second half; Thakur et al.
    2005, section 3: (p-1)α + (p-1)/p · nβ). The distributed optimizer
    gathers a stage's updated parameters this way.

    >>> ring_all_gather_time(4, 4000, 1e9, 1e-6) == ring_reduce_scatter_time(4, 4000, 1e9, 1e-6)
    True
    """
    return ring_reduce_scatter_time(devices, nbytes, bandwidth, latency)


def hierarchical_allreduce_time(
    nodes: int,
    per_node: int,
    nbytes: int,
    intra_bandwidth: float,
    intra_latency: float,
    inter_bandwidth: float,
    inter_latency: float,
) -> float:
    """2(p-1)·(Lᵢ + ⌈S/p⌉/Bᵢ) + 2(n-1)·(Lₑ + ⌈⌈S/p⌉/n⌉/Bₑ): a two-level all-reduce, n nodes of p devices.

    A ring reduce-scatter of the S bytes inside every node (p-1 steps of
    ⌈S/p⌉ over the intra-node links, bandwidth Bᵢ, latency Lᵢ), a ring
    all-reduce of each device's shard of ⌈S/p⌉ bytes across the nodes (the
    j-th devices of all nodes form one ring of n, all p rings at once over
    the inter-node links Bₑ, Lₑ: 2(n-1) steps of ⌈S/(pn)⌉), and a ring
    all-gather inside every node (p-1 steps of ⌈S/p⌉). It is Thakur et al.
    2005's all-reduce as a reduce-scatter then an all-gather, each split by
    level, with Patarasuk and Yuan 2009's ring at each level; NCCL and
    Horovod's hierarchical all-reduce take this shape. One flat ring over
    all pn devices sends 2(pn-1) chunks of ⌈S/(pn)⌉ over each inter-node
    link it crosses, one after another, so it lasts at least
    2(pn-1)·⌈S/(pn)⌉/Bₑ; two levels send 2(n-1) such chunks per link, about
    p times fewer.

    >>> round(hierarchical_allreduce_time(2, 4, 8000, 1e9, 1e-6, 1e8, 1e-5) * 1e6, 9)  # 6·(1+2) + 2·(10+10) µs
    58.0
    >>> round(2 * 7 * 1000 / 1e8 * 1e6, 9)  # a flat ring over the same 8: 14 chunks of 1000 B on one slow link
    140.0
    """
    shard = -(-nbytes // per_node)
    return ring_allreduce_time(per_node, nbytes, intra_bandwidth, intra_latency) + ring_allreduce_time(
        nodes, shard, inter_bandwidth, inter_latency
    )


def hierarchical_reduce_scatter_time(
    nodes: int,
    per_node: int,
    nbytes: int,
    intra_bandwidth: float,
    intra_latency: float,
    inter_bandwidth: float,
    inter_latency: float,
) -> float:
    """(p-1)·(Lᵢ + ⌈S/p⌉/Bᵢ) + (n-1)·(Lₑ + ⌈⌈S/p⌉/n⌉/Bₑ): a two-level reduce-scatter, n nodes of p devices.

    A ring reduce-scatter inside every node, then one of each device's shard
    across the nodes (``hierarchical_allreduce_time``'s first two levels,
    halved across): every device ends with the sum of its ⌈S/(pn)⌉ bytes.

    >>> round(hierarchical_reduce_scatter_time(2, 4, 8000, 1e9, 1e-6, 1e8, 1e-5) * 1e6, 9)  # 3·(1+2) + (10+10) µs
    29.0
    """
    shard = -(-nbytes // per_node)
    return ring_reduce_scatter_time(per_node, nbytes, intra_bandwidth, intra_latency) + ring_reduce_scatter_time(
        nodes, shard, inter_bandwidth, inter_latency
    )


def hierarchical_all_gather_time(
    nodes: int,
    per_node: int,
    nbytes: int,
    intra_bandwidth: float,
    intra_latency: float,
    inter_bandwidth: float,
    inter_latency: float,
) -> float:
    """(n-1)·(Lₑ + ⌈⌈S/p⌉/n⌉/Bₑ) + (p-1)·(Lᵢ + ⌈S/p⌉/Bᵢ): a two-level all-gather, n nodes of p devices.

    The reduce-scatter's mirror: an all-gather of the shards across the nodes,
    then a ring all-gather inside every node; the same time.

    >>> hierarchical_all_gather_time(2, 4, 8000, 1e9, 1e-6, 1e8, 1e-5) == hierarchical_reduce_scatter_time(
    ...     2, 4, 8000, 1e9, 1e-6, 1e8, 1e-5
    ... )
    True
    """
    return hierarchical_reduce_scatter_time(
        nodes, per_node, nbytes, intra_bandwidth, intra_latency, inter_bandwidth, inter_latency
    )


def gpipe_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """M: GPipe keeps every micro-batch until its backward (Huang et al. 2019)."""
    return microbatches


def one_f_one_b_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """min(K-d, M): 1F1B's warm-up K-1-d forwards plus the one in steady state (Narayanan et al. 2021)."""
    return min(devices - device, microbatches)


def zb_h1_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """min(K, M) on every device: ZB-H1 defers W by d on device d (Qi et al. 2024, section 2.1)."""
    return min(devices, microbatches)


def zb_h2_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """min(2K-1, M) on every device: device 0's 2K-1 warm-up forwards, the last device's 2(K-1) deferred Ws plus one."""
    return min(2 * devices - 1, microbatches)


def zb_v_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """min(M, 2K-1-d) + min(M, d+1) chunk-micro-batches: 2K on every device once M >= 2K - 1.

    Chunk 0 of device d holds at most its 2K-1-d warm-up forwards, chunk 1 at
    most d + 1; each chunk's activations are half a stage's of 1F1B, so 2K of
    them are 1F1B's first-device peak of K (Qi et al. 2024, section 6).
    """
    return min(microbatches, 2 * devices - 1 - device) + min(microbatches, device + 1)


def dualpipev_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """2K + 1 chunk-micro-batches on every device, M >= 2K: the DualPipe table's PP + 1 with PP = 2K."""
    return 2 * devices + 1


def dualpipe_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """K + 1 stage-micro-batches on every device, K and M even, M >= 2K: the DualPipe table's PP + 1, PP = K.

    Found by simulation, as DualPipeV's 2K+1 half-stages (``dualpipev_peak_inflight``), whose
    orders each half of DualPipe's devices runs; regression check:
    ``tests/test_dualpipe.py::test_unit_cost_step_idle_and_memory_under_each_overlap_rule``.
    """
    return devices + 1


def v_min_unit_makespan(devices: int, microbatches: int) -> float | None:
    """V-Min's step under unit cost (a chunk's F = I = W = 1/2, free links): 3M + 2K - 5/2, or 3M + 2K - 7/2
    when 3 divides K (3M for K = 1); ``None`` for M below (K+4)//3, or below 2K/3 + 2 when 3 divides K.

    Qi et al. (NeurIPS 2024) state V-Min's bubble as about 2/3 of 1F1B's
    (the authors' README: "2B/3 + O(n) overhead", B = (K-1)/(M+K-1); their
    table: about 2K/(3M)), that is an idle time of about 2(K-1) against
    1F1B's 3(K-1). The simulated idle time is 1/2 less, 3/2 less when 3
    divides K (the gap of 2 slots the block then needs; ``v_block_offsets``);
    with the authors' 1/1000 cost per send their own generator reports a
    bubble a little above this (0.1870 against 5.5/29.5 = 0.1864 at K=4, M=8).
    Found by simulation over K <= 20, M from the bound to 2K + 8, not
    derived; below the bound the idle time the warm-up's squeeze leaves
    varies irregularly with M, so no form is stated there. Regression check:
    ``tests/test_v_shape.py::test_unit_cost_closed_forms``.

    >>> v_min_unit_makespan(4, 8), v_min_unit_makespan(6, 5)
    (29.5, None)
    """
    if microbatches < ((devices + 4) // 3 if devices % 3 else 2 * devices // 3 + 2):
        return None
    idle = 0.0 if devices == 1 else 2 * devices - (3.5 if devices % 3 == 0 else 2.5)
    return 3.0 * microbatches + idle


def v_min_bubble(devices: int, microbatches: int) -> float | None:
    """1 - 3M / ``v_min_unit_makespan``: about 2/3 of 1F1B's (K-1)/(M+K-1), as the paper states; ``None``
    where the form does not hold (small M). Found by simulation."""
    makespan = v_min_unit_makespan(devices, microbatches)
    return None if makespan is None else 1.0 - 3.0 * microbatches / makespan


def v_half_unit_makespan(devices: int, microbatches: int) -> float | None:
    """V-Half's step under unit cost (a chunk's F = I = W = 1/2, free links): 3M + 3·floor((K-1)/2) - 1/2 for
    K >= 3 (3M + 1/2 for K = 2, 3M for K = 1); ``None`` for M < K + 2.

    Qi et al. (NeurIPS 2024) state V-Half's bubble as about half of 1F1B's
    (the authors' README: B/2; their table: about K/(2M)), an idle time of
    about 3(K-1)/2. The simulated idle time is 1/2 less for odd K and 2 less
    for even K >= 4 (the gap of 3 slots the block then needs;
    ``v_block_offsets``), 1 less for K = 2. Found by simulation over K <= 20,
    M from K + 2 to 2K + 8 (the form holds from M = K + 1 for odd K >= 5 and
    from M <= K + 2 for the others), not derived. Regression check:
    ``tests/test_v_shape.py::test_unit_cost_closed_forms``.

    >>> v_half_unit_makespan(4, 8), v_half_unit_makespan(5, 8)
    (26.5, 29.5)
    """
    if microbatches < devices + 2:
        return None
    idle = {1: 0.0, 2: 0.5}.get(devices, 3 * ((devices - 1) // 2) - 0.5)
    return 3.0 * microbatches + idle


def v_half_bubble(devices: int, microbatches: int) -> float | None:
    """1 - 3M / ``v_half_unit_makespan``: about half of 1F1B's (K-1)/(M+K-1), as the paper states; ``None``
    where the form does not hold (M < K + 2). Found by simulation."""
    makespan = v_half_unit_makespan(devices, microbatches)
    return None if makespan is None else 1.0 - 3.0 * microbatches / makespan


def _v_shape_peak(microbatches: int, device: int, most: int) -> int:
    """min(M + 1 + d, 2M, most): a V-shape device's peak chunk-micro-batches in flight, found by simulation."""
    return min(microbatches + 1 + device, 2 * microbatches, most)


def v_min_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """min(M + 1 + d, 2M, P) chunk-micro-batches on device d, P = 2·((K+4)//3); where K = 2 mod 3, P - 1
    on device 0, and for K >= 5 on device 1 too when M = P - 2 (and on device 2 for K = 5, M = 3).

    The paper's V-Min memory: about 1/3 of 1F1B's, (K+4)//3 micro-batches
    in the authors' table against 1F1B's K. A chunk holds half a 1F1B
    stage's activations, so P chunk-micro-batches are exactly that table's
    (K+4)//3, reached on the busiest device once M >= (K+4)//3. The
    per-device form, its exceptions included (the squeeze of the warm-up
    leaves them one short), is found by simulation over K <= 20, M <= 2K + 8
    (``tests/test_v_shape.py::test_unit_cost_closed_forms``).

    >>> [v_min_peak_inflight(8, 24, d) for d in range(3)], v_min_peak_inflight(8, 2, 5)
    ([7, 8, 8], 4)
    """
    most = 2 * ((devices + 4) // 3)
    if devices % 3 == 2 and (
        device == 0
        or (device == 1 and microbatches == most - 2 and devices > 2)
        or (devices, microbatches, device) == (5, 3, 2)
    ):
        most -= 1
    return _v_shape_peak(microbatches, device, most)


def v_half_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """min(M + 1 + d, 2M, 2·((K+2)//2)) chunk-micro-batches on device d.

    The paper's V-Half memory: about 1/2 of 1F1B's, (K+2)//2 micro-batches in
    the authors' table against 1F1B's K; 2·((K+2)//2) chunk-micro-batches,
    each half a 1F1B stage's, are exactly that, reached on the busiest
    device once M >= (K+2)//2 and on every device once M >= 2·((K+2)//2) - 1.
    The per-device form is found by simulation over K <= 20, M <= 2K + 8
    (``tests/test_v_shape.py::test_unit_cost_closed_forms``).

    >>> [v_half_peak_inflight(4, 8, d) for d in range(4)], v_half_peak_inflight(4, 2, 0)
    ([6, 6, 6, 6], 3)
    """
    return _v_shape_peak(microbatches, device, 2 * ((devices + 2) // 2))


def interleaved_peak_inflight(devices: int, microbatches: int, device: int, chunks: int) -> int:
    """min(w_d + 1, v·M) chunk-micro-batches, w_d = 2(K-1-d) + (v-1)·g Megatron's warm-up count.

    g is the size of the first round of micro-batches: K when K divides M, else
    ceil(M / (M // K)) (pipesched's rounds); with v = 1 the warm-up is 1F1B's
    K-1-d. Source: Megatron-LM, ``forward_backward_pipelining_with_interleaving``.

    Derivation, for every K, M and v: the in-flight count of a device moves
    with its own order alone (each F adds one, each B takes one away), not
    with timing. Device d runs ``compose.one_f_one_b`` with the warm-up w_d
    above, which is what ``Interleaved.plan`` passes: min(w_d, v·M) forwards,
    then one forward and one backward in turn, then the backwards left. After
    the warm-up min(w_d, v·M) are in flight; each later forward adds one that
    the backward after it takes away. So the peak is w_d + 1 if a forward is
    left after the warm-up (w_d < v·M), else v·M: min(w_d + 1, v·M).
    ``Interleaved`` makes max(1, M // K) rounds of sizes within one, larger
    first, so the first has ceil(M / max(1, M // K)) micro-batches: g above.

    >>> interleaved_peak_inflight(4, 8, 0, 2), interleaved_peak_inflight(4, 10, 0, 2)  # g = 4, then g = 5
    (11, 12)
    """
    rounds = max(1, microbatches // devices)
    first_round = -(-microbatches // rounds)
    if chunks == 1:
        warmup = devices - 1 - device
    else:
        warmup = 2 * (devices - 1 - device) + (chunks - 1) * first_round
    return min(warmup + 1, chunks * microbatches)


def bubble_from_ratio(ratio: float) -> float:
    """Megatron's bubble-time / ideal-time ratio as pipesched's idle fraction."""
    return ratio / (1.0 + ratio)


def pipeline_speedup(devices: int, microbatches: int) -> float:
    """K / (1 + (K-1)/M): step-time speedup of a K-stage pipeline over one device, equal stages."""
    return devices / (1.0 + (devices - 1) / microbatches)


def flow_shop_makespan(costs: Sequence[float], devices: int) -> float:
    """sum(c) + (K-1) * max(c): K devices each running jobs of costs ``costs`` in order.

    The proportionate flow shop (every job costs the same on every device): the
    critical path runs the longest job across all K devices and every job once.
    """
    return sum(costs) + (devices - 1) * max(costs)


def _backward_costs(microbatches: int, remat: str) -> list[float]:
    """Unit-cost backward of each micro-batch, in GPipe's order (last micro-batch first)."""
    recompute = {
        "never": [False] * microbatches,
        "always": [True] * microbatches,
        "except_last": [m != microbatches - 1 for m in range(microbatches)],
    }[remat]
    return [2.0 + recompute[m] for m in reversed(range(microbatches))]


def gpipe_unit_makespan(devices: int, microbatches: int, remat: str = "never") -> float:
    """GPipe's step length under unit cost: a forward flow shop, then a backward one.

    Forwards (F=1) finish on the last device at M + K - 1; the backward wave
    (B=2, plus 1 where a micro-batch is recomputed) is a flow shop of its own.

    >>> gpipe_unit_makespan(4, 8), gpipe_unit_makespan(4, 8, "always")
    (33.0, 44.0)
    """
    return flow_shop_makespan([1.0] * microbatches, devices) + flow_shop_makespan(
        _backward_costs(microbatches, remat), devices
    )


def gpipe_unit_bubble(devices: int, microbatches: int, remat: str = "never") -> float:
    """Idle fraction of GPipe under unit cost for any re-materialization mode.

    >>> gpipe_unit_bubble(4, 8, "always") == gpipe_bubble(4, 8)
    True
    """
    busy = microbatches + sum(_backward_costs(microbatches, remat))
    return 1.0 - busy / gpipe_unit_makespan(devices, microbatches, remat)


# -- Chimera: two pipelines in opposite directions ------------------------------------


def chimera_runs(devices: int, microbatches: int) -> bool:
    """Whether ``chimera`` plans (K, M): K even (two pipelines that meet without conflict, Li and Hoefler 2021,
    section 3) and M a multiple of K (whole basic units, as the authors' code asserts)."""
    return devices % 2 == 0 and microbatches >= devices and microbatches % devices == 0


def chimera_paper_bubble(devices: int, microbatches: int) -> float:
    """(D-2)/(2N+D-2): Chimera's bubble ratio in Li and Hoefler's Table 2 (SC 2021), D stages, N micro-batches.

    The paper counts bubbles in pass slots: D - 2 idle slots per worker
    beside its N forward and N backward ones (GPipe's and DAPPLE's 2(D-1)),
    every slot alike, so the ratio is the idle share when a backward takes as
    long as a forward. pipesched's ``chimera`` meets it with F = B
    (``chimera_idle``) wherever it was checked: even K <= 8 and up to three
    units in the tests, K <= 12 and up to five units once by hand.

    >>> chimera_paper_bubble(4, 4)
    0.2
    """
    return (devices - 2) / (2 * microbatches + devices - 2)


def chimera_idle(devices: int, microbatches: int, forward: float, backward: float) -> float:
    """(K/2 - 1)·(F + B + |B - F|·(2M/K - 1)): each device's idle time in a step of ``chimera``, free links.

    F and B are one stage's forward and full backward, alike on every stage;
    M a multiple of K (``chimera_runs``). With F = B it is (K - 2)·F whatever
    M, the paper's D - 2 slots (``chimera_paper_bubble``): direct
    concatenation is seamless, as the paper says of equal passes. With
    B != F the basic unit idles |B - F|·(K/2 - 1) more and every further unit
    adds 2|B - F|·(K/2 - 1), the paper's intermediate bubbles. Every device
    idles alike, since each computes M(F + B). Found by simulation, not
    derived: every device of every even K <= 12, M = K to 5K, F and B whole
    numbers 1 to 6 (1080 cases, checked once by hand). Regression checks:
    ``tests/test_chimera.py::test_idle_time_per_device_over_forward_and_backward_times`` and
    ``test_passes_check_strategy_with_its_formulas``.

    >>> chimera_idle(4, 4, 1, 1), chimera_idle(4, 8, 1, 2)
    (2.0, 6.0)
    """
    return (devices // 2 - 1) * (forward + backward + abs(backward - forward) * (2 * microbatches / devices - 1))


def chimera_unit_makespan(devices: int, microbatches: int) -> float:
    """3M + (K - 2)(M/K + 1): ``chimera``'s step under unit cost (F = 1, B = 2), M a multiple of K.

    ``chimera_idle`` with F = 1, B = 2, found by simulation.

    >>> chimera_unit_makespan(4, 4), chimera_unit_makespan(4, 8)
    (16.0, 30.0)
    """
    return 3.0 * microbatches + chimera_idle(devices, microbatches, 1.0, 2.0)


def chimera_bubble(devices: int, microbatches: int) -> float:
    """(K-2)(M/K+1) / (3M + (K-2)(M/K+1)): ``chimera``'s idle share under unit cost, M a multiple of K.

    Above the paper's (K-2)/(2M+K-2) (``chimera_paper_bubble``), which
    assumes a backward as long as a forward: unit cost's B = 2F leaves more
    idle in the basic unit and intermediate bubbles between units. Found by
    simulation (``chimera_idle``).
    """
    return 1.0 - 3.0 * microbatches / chimera_unit_makespan(devices, microbatches)


def chimera_peak_inflight(devices: int, microbatches: int, device: int) -> int:
    """K/2 + 1 + min(d, K-1-d) stage-micro-batches on device d, M a multiple of K: from K/2 + 1 at the ends
    to K in the middle, the range of activations Li and Hoefler's Table 2 gives, [(D/2+1)M_a, D·M_a].

    Derived: the count moves with the device's own order alone (+1 a forward,
    -1 a backward). With a = K/2 - min(d, K-1-d) and b = K/2 - a as in
    ``strategies/chimera.py``, a unit's first two phases add a + 2b forwards,
    the first forward of phase 3 one more, and from there each forward is
    followed by a backward, while phase 4 only takes away; a unit leaves a
    forwards of its near direction in flight, and the next unit's phase 1
    keeps that at a (one backward, one forward) before the same climb. So the
    peak is a + 2b + 1 = K - a + 1 in every unit.

    >>> [chimera_peak_inflight(6, 6, d) for d in range(6)]
    [4, 5, 6, 6, 5, 4]
    """
    return devices // 2 + 1 + min(device, devices - 1 - device)


# -- the built-in strategies' closed forms, in one table ------------------------------

#: The built-ins that loop v stages over the devices (stage s on device s mod K), whose v ``--chunks`` (a
#: study's ``chunks``) sets; the others take their own default (1, or 2 for the V schedules).
LOOPED: tuple[str, ...] = ("interleaved", "looped-bfs", "interleaved-zb")


@dataclass(frozen=True)
class ClosedForm:
    """A strategy's closed forms: bubble(K, M, v) and peak in-flight(K, M, v, d), with their sources.

    ``steady`` is the bubble with steps back to back (``Trace.period``); ``None``
    where it is the one step's bubble, as for every schedule whose first
    device is busy from the step's start to its end. ``runs`` says whether the
    strategy can run (K, M, v) at all (DualPipeV needs M >= 2K, data
    parallelism M >= K); where it cannot, it has no in-flight counts either.

    >>> CLOSED_FORMS["dp"].peak_inflight(4, 2, 1) is None, CLOSED_FORMS["1f1b"].peak_inflight(4, 2, 1)
    (True, [2, 2, 2, 1])
    """

    bubble: Callable[[int, int, int], float | None]
    bubble_text: str
    inflight: Callable[[int, int, int, int], int]
    inflight_text: str
    source: str
    steady: Callable[[int, int, int], float | None] | None = None
    runs: Callable[[int, int, int], bool] = lambda K, M, v: True

    def steady_bubble(self, devices: int, microbatches: int, chunks: int) -> float | None:
        return (self.steady or self.bubble)(devices, microbatches, chunks)

    def peak_inflight(self, devices: int, microbatches: int, chunks: int) -> list[int] | None:
        """Peak in-flight counts, device 0 first, or ``None`` where the strategy cannot run the configuration."""
        if not self.runs(devices, microbatches, chunks):
            return None
        return [self.inflight(devices, microbatches, chunks, d) for d in range(devices)]


CLOSED_FORMS: dict[str, ClosedForm] = {
    "gpipe": ClosedForm(
        lambda K, M, v: gpipe_bubble(K, M),
        "(K-1)/(K-1+M)",
        lambda K, M, v, d: gpipe_peak_inflight(K, M, d),
        "M",
        "Huang et al., NeurIPS 2019",
    ),
    "1f1b": ClosedForm(
        lambda K, M, v: gpipe_bubble(K, M),
        "(K-1)/(K-1+M)",
        lambda K, M, v, d: one_f_one_b_peak_inflight(K, M, d),
        "min(K-d, M)",
        "Narayanan et al., SC 2021",
    ),
    "interleaved": ClosedForm(
        lambda K, M, v: interleaved_bubble(K, M, v) if M >= K else None,
        "(K-1)/(v*M+K-1), M >= K (K not dividing M: found by simulation)",
        lambda K, M, v, d: interleaved_peak_inflight(K, M, d, v),
        "min(w_d+1, vM), w_d Megatron's warm-up",
        "Narayanan et al., SC 2021; Megatron-LM",
    ),
    "looped-bfs": ClosedForm(
        lambda K, M, v: looped_bfs_bubble(K, M, v),
        "1-3M/(3M+3(K-1)/v+3(v-1)max(0,K-M)/v): (K-1)/(v*M+K-1), M >= K",
        lambda K, M, v, d: v * M,
        "v*M",
        "Lamy-Poirier, MLSys 2023; PyTorch's ScheduleLoopedBFS",
    ),
    "interleaved-zb": ClosedForm(
        lambda K, M, v: interleaved_zb_bubble(K, M, v) if M >= K else None,
        "(K-1)/(3vM+K-1), M >= K (found by simulation)",
        lambda K, M, v, d: interleaved_zb_peak_inflight(K, M, v),
        "min((v-1)g+K, vM), g the round",
        "PyTorch's ScheduleInterleavedZeroBubble; Qi et al., ICLR 2024",
        runs=lambda K, M, v: M % max(1, M // K) == 0,
    ),
    "zb-h1": ClosedForm(
        lambda K, M, v: zb_h1_bubble(K, M),
        "(K-1)/(3M+K-1); M<K: 1-3M/(2(M+K)-1)",
        lambda K, M, v, d: zb_h1_peak_inflight(K, M, d),
        "min(K, M)",
        "Qi et al., ICLR 2024",
    ),
    "zb-h2": ClosedForm(
        lambda K, M, v: zb_h2_bubble(K, M),
        "(K-1)/(3M+K-1), M >= 2K-2 (M <= 2K-2: found by simulation); 0 back to back, M >= 2K-1",
        lambda K, M, v, d: zb_h2_peak_inflight(K, M, d),
        "min(2K-1, M)",
        "Qi et al., ICLR 2024",
        steady=lambda K, M, v: zero_bubble_steady_bubble(K, M),
    ),
    "zb-v": ClosedForm(
        lambda K, M, v: zb_v_bubble(K, M),
        "(K-1)/(6M+K-1), M >= 3K/2 (found by simulation); 0 back to back, M >= 2K-1",
        lambda K, M, v, d: zb_v_peak_inflight(K, M, d),
        "min(M,2K-1-d) + min(M,d+1)",
        "Qi et al., ICLR 2024",
        steady=lambda K, M, v: zero_bubble_steady_bubble(K, M),
    ),
    "v-half": ClosedForm(
        lambda K, M, v: v_half_bubble(K, M),
        "1-3M/(3M+3floor((K-1)/2)-1/2), K >= 3 (idle 1/2 at K = 2): ~1/2 of 1F1B's; M >= K+2 (found by simulation)",
        lambda K, M, v, d: v_half_peak_inflight(K, M, d),
        "min(M+1+d, 2M, 2((K+2)//2)) (found by simulation)",
        "Qi et al., NeurIPS 2024",
    ),
    "v-min": ClosedForm(
        lambda K, M, v: v_min_bubble(K, M),
        "1-3M/(3M+2K-c), c = 5/2 (7/2 where 3 | K): ~2/3 of 1F1B's; M >= (K+4)//3 (2K/3+2 where 3 | K) "
        "(found by simulation)",
        lambda K, M, v, d: v_min_peak_inflight(K, M, d),
        "min(M+1+d, 2M, 2((K+4)//3)), one less on device 0 where K = 2 mod 3, and a few (K, M, d) more "
        "(found by simulation)",
        "Qi et al., NeurIPS 2024",
    ),
    "dualpipev": ClosedForm(
        lambda K, M, v: dualpipev_bubble(K, M) if M >= 2 * K else None,
        "(K-1)/(3M+K-1), --overlap sum, M >= 2K (found by simulation)",
        lambda K, M, v, d: dualpipev_peak_inflight(K, M, d),
        "2K+1",
        "DeepSeek-AI, DualPipe 2025",
        runs=lambda K, M, v: M >= 2 * K,
    ),
    "dualpipe": ClosedForm(
        lambda K, M, v: dualpipe_bubble(K, M) if dualpipe_runs(K, M) else None,
        "(K-2)/(3M+K-2), --overlap sum, K and M even, M >= 2K (found by simulation)",
        lambda K, M, v, d: dualpipe_peak_inflight(K, M, d),
        "K+1",
        "DeepSeek-AI, DualPipe 2025",
        runs=lambda K, M, v: dualpipe_runs(K, M),
    ),
    "chimera": ClosedForm(
        lambda K, M, v: chimera_bubble(K, M) if chimera_runs(K, M) else None,
        "(K-2)(M/K+1)/(3M+(K-2)(M/K+1)), K even, K | M (found by simulation); paper: (K-2)/(2M+K-2) at F=B",
        lambda K, M, v, d: chimera_peak_inflight(K, M, d),
        "K/2+1+min(d, K-1-d)",
        "Li and Hoefler, SC 2021",
        runs=lambda K, M, v: chimera_runs(K, M),
    ),
    "dp": ClosedForm(
        lambda K, M, v: data_parallel_bubble(K, M) if M >= K else None,
        "1-M/(K*ceil(M/K)), M >= K",
        lambda K, M, v, d: 1,
        "1",
        "ring all-reduce: Patarasuk and Yuan 2009",
        runs=lambda K, M, v: M >= K,
    ),
}


# -- activation memory -----------------------------------------------------------------


def stage_activation_bytes(layers: Sequence[Layer], rows: int, last_stage: bool, itemsize: int = 8) -> int:
    """Bytes one micro-batch of ``rows`` keeps for backward in a stage: every layer's input, plus
    the output where the ReLU mask (a stage ending in a ReLU) or the loss (the last stage) needs it.

    >>> stage_activation_bytes([Layer(4, 3, True), Layer(3, 2, False)], rows=5, last_stage=True)
    360
    """
    return rows * saved_widths(layers, keep_output=keeps_output(layers, last_stage)) * itemsize


def stage_input_bytes(layers: Sequence[Layer], rows: int, itemsize: int = 8) -> int:
    """Bytes one micro-batch keeps under re-materialization: the stage input alone."""
    return rows * layers[0].in_features * itemsize


def peak_activation_bytes(inflight: int, full: int, inputs: int, remat: str = "never") -> int:
    """Peak activation bytes of a full-backward schedule with ``inflight`` equal micro-batches.

    ``never``: every micro-batch in flight keeps its activations. ``always``: each
    keeps its input, and the one being recomputed its full activations too
    (torchgpipe's checkpointing; Chen et al. 2016). GPipe: inflight = M; 1F1B:
    min(K-d, M).

    >>> peak_activation_bytes(4, full=100, inputs=10), peak_activation_bytes(4, 100, 10, "always")
    (400, 130)
    """
    if remat == "never":
        return inflight * full
    if remat == "always":
        return inflight * inputs + (full - inputs)
    raise ValueError(f"remat {remat!r} has no closed form here; use activation_peak")


def activation_peak(
    actions: Sequence[Item],
    stage_layers: Callable[[int], Sequence[Layer]],
    rows: Sequence[int],
    num_stages: int,
    remat: str = "never",
    itemsize: int = 8,
) -> int:
    """Peak activation bytes of one device, walking its actions with each state's size.

    The general form behind the closed ones, for any order of F, B, I, W: a
    forward adds the micro-batch's activations (its input alone under
    re-materialization, topped up to the full set by the recompute); a full
    backward frees them at its end; an input-gradient adds the pre-activation
    gradients while it runs and frees the kept output at its end, leaving what
    W needs; W frees that. Assumes no two stages on the device share an array
    (they do only when consecutive stages sit on one device).
    """
    held = peak = 0
    for action in expand(actions):  # an overlapped pair holds its forward's activations and its backward's at once
        stage, op, mb = action
        assert mb is not None  # the actions are F, B, I and W (above), and each names its micro-batch
        layers = stage_layers(stage)
        last = stage == num_stages - 1
        full = stage_activation_bytes(layers, rows[mb], last, itemsize)
        inputs = stage_input_bytes(layers, rows[mb], itemsize)
        kept = remat_keeps(remat, mb, len(rows))
        gradients = rows[mb] * sum(layer.out_features for layer in layers) * itemsize  # one per layer output
        weights_need = rows[mb] * sum(layer.in_features for layer in layers) * itemsize + gradients
        if op == "F":
            held += full if kept else inputs
        elif op in "BI":
            if not kept:
                held += full - inputs  # the recompute
            peak = max(peak, held + (gradients if op == "I" else 0))
            held += weights_need - full if op == "I" else -full
        else:  # W
            held -= weights_need
        peak = max(peak, held)
    return peak
