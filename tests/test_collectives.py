"""Collectives against their closed forms: ring all-reduce, reduce-scatter, all-gather, two-level over nodes."""

from dataclasses import dataclass
from typing import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import DeadlockError, Schedule, formulas
from pipesched.compute import ShapeWorkload
from pipesched.cost import FlopsCost
from pipesched.engine import simulate
from pipesched.errors import ConfigError
from pipesched.model import Layer, layers_from_widths
from pipesched.topology import LinkKind, make_topology

INTRA = LinkKind("fast", 1e9, 1e-6)  # bytes per second, seconds
INTER = LinkKind("slow", 1e8, 1e-5)


@dataclass(frozen=True)
class _LinksOnly(FlopsCost):
    """FlopsCost's links and nodes with every computation free, so that only the collectives take time."""

    def compute_time(
        self, op: str, layers: Sequence[Layer], rows: int, stage_units: float, stage: int = 0, device: int = 0
    ) -> float:
        return 0.0


def _replicas(devices: int, width: int, height: int, itemsize: int, state_bytes: int = 0):
    """One stage of one width x height layer on every device (data parallelism), one micro-batch each."""
    schedule = Schedule.parse([f"0F{d} 0B{d}" for d in range(devices)])
    work = ShapeWorkload(layers_from_widths([width, height]), (range(0, 1),), [1] * devices, itemsize, state_bytes)
    return schedule, work, (width + 1) * height * itemsize  # the gradient bytes: weights and biases


def _cost(nodes: int, per_node: int, node_map: str | None = None) -> _LinksOnly:
    topology = make_topology(nodes * per_node, per_node, node_map, INTRA, INTER)
    return _LinksOnly(link_bandwidth=INTRA.bandwidth, link_latency=INTRA.latency, topology=topology)


SIZES = dict(width=st.integers(1, 40), height=st.integers(1, 40), itemsize=st.sampled_from([2, 4, 8]))


class TestRing:
    @settings(max_examples=40, deadline=None)
    @given(devices=st.integers(2, 7), **SIZES)
    def test_allreduce_takes_its_closed_form(self, devices, width, height, itemsize):
        schedule, work, nbytes = _replicas(devices, width, height, itemsize)
        trace = simulate(schedule, work, _LinksOnly(link_bandwidth=INTER.bandwidth, link_latency=INTER.latency))
        expected = formulas.ring_allreduce_time(devices, nbytes, INTER.bandwidth, INTER.latency)
        assert trace.makespan == pytest.approx(expected, rel=1e-12, abs=0)
        chunks = [t for t in trace.transfers if t.op == "allreduce"]
        assert len(chunks) == devices * 2 * (devices - 1)  # each device sends one chunk per step
        assert {t.nbytes for t in chunks} == {-(-nbytes // devices)}

    @settings(max_examples=40, deadline=None)
    @given(devices=st.integers(2, 7), **SIZES)
    def test_sharded_is_a_reduce_scatter_then_an_all_gather(self, devices, width, height, itemsize):
        schedule, work, nbytes = _replicas(devices, width, height, itemsize)
        cost = _LinksOnly(link_bandwidth=INTER.bandwidth, link_latency=INTER.latency)
        trace = simulate(schedule, work, cost, grad_sync="sharded")
        scatter = formulas.ring_reduce_scatter_time(devices, nbytes, INTER.bandwidth, INTER.latency)
        gather = formulas.ring_all_gather_time(devices, nbytes, INTER.bandwidth, INTER.latency)
        rs = [t for t in trace.transfers if t.op == "reduce_scatter"]
        ag = [t for t in trace.transfers if t.op == "all_gather"]
        assert len(rs) == len(ag) == devices * (devices - 1) and len(trace.transfers) == len(rs) + len(ag)
        assert max(t.arrival for t in rs) == pytest.approx(scatter, rel=1e-12, abs=0)
        assert min(t.start for t in ag) == pytest.approx(scatter, rel=1e-12, abs=0)  # the gather follows at once
        assert trace.makespan == pytest.approx(scatter + gather, rel=1e-12, abs=0)
        # the same bytes in the same steps as the all-reduce (ZeRO-1 adds no communication)
        assert trace.makespan == pytest.approx(
            formulas.ring_allreduce_time(devices, nbytes, INTER.bandwidth, INTER.latency), rel=1e-12, abs=0
        )


class TestHierarchical:
    @settings(max_examples=40, deadline=None)
    @given(nodes=st.integers(1, 3), per_node=st.integers(1, 4), kind=st.sampled_from(["allreduce", "sharded"]), **SIZES)
    def test_two_levels_take_their_closed_form(self, nodes, per_node, kind, width, height, itemsize):
        devices = nodes * per_node
        if devices < 2:
            return
        schedule, work, nbytes = _replicas(devices, width, height, itemsize)
        trace = simulate(schedule, work, _cost(nodes, per_node), grad_sync=kind)
        links = (INTRA.bandwidth, INTRA.latency, INTER.bandwidth, INTER.latency)
        if kind == "allreduce":
            expected = formulas.hierarchical_allreduce_time(nodes, per_node, nbytes, *links)
        else:
            scatter = formulas.hierarchical_reduce_scatter_time(nodes, per_node, nbytes, *links)
            expected = scatter + formulas.hierarchical_all_gather_time(nodes, per_node, nbytes, *links)
            rs = [t for t in trace.transfers if t.op == "reduce_scatter"]
            assert max(t.arrival for t in rs) == pytest.approx(scatter, rel=1e-12, abs=0)
        assert trace.makespan == pytest.approx(expected, rel=1e-12, abs=0)
        across = [t for t in trace.transfers if t.src // per_node != t.dst // per_node]
        # across nodes: 2(n-1) steps per device of ceil(ceil(S/p)/n) = ceil(S/R) bytes; the rest stay inside
        assert len(across) == devices * 2 * (nodes - 1)
        assert {t.nbytes for t in across} <= {-(-nbytes // devices)}
        assert len(trace.transfers) - len(across) == devices * 2 * (per_node - 1)
        if nodes == 1:  # one node: the flat ring, as before nodes
            assert trace.makespan == pytest.approx(
                formulas.ring_allreduce_time(devices, nbytes, INTRA.bandwidth, INTRA.latency), rel=1e-12, abs=0
            )

    def test_two_levels_beat_one_flat_ring_across_nodes(self):
        # Two nodes of 4 devices; a 24 x 40 layer in fp64: S = (24 + 1) * 40 * 8 = 8000 bytes of gradients.
        # Two levels: 2*3*(1 µs + 2000 B / 1 GB/s) + 2*1*(10 µs + 1000 B / 100 MB/s) = 18 + 40 = 58 µs.
        # A flat ring sends 2*7 chunks of 1000 B over each link it crosses nodes by: 14 * 10 µs = 140 µs busy at least.
        schedule, work, nbytes = _replicas(8, 24, 40, 8)
        assert nbytes == 8000
        two = simulate(schedule, work, _cost(2, 4)).makespan
        flat = simulate(schedule, work, _cost(2, 4), collective="ring").makespan
        assert two == pytest.approx(58e-6, rel=1e-12)
        assert flat >= 140e-6 + INTER.latency  # the slow link's 14 chunks one after another, then the last lands
        assert simulate(schedule, work, _cost(2, 4), collective="hierarchical").makespan == two

    def test_a_ring_spread_unevenly_over_nodes_runs_flat_or_is_refused(self):
        schedule, work, nbytes = _replicas(4, 8, 8, 8)
        # three on node 0 (of up to 3), one on node 1: no equal shards
        topology = make_topology(4, 3, "0,0,0,1", INTRA, INTER)
        cost = _LinksOnly(link_bandwidth=INTRA.bandwidth, link_latency=INTRA.latency, topology=topology)
        auto = simulate(schedule, work, cost)
        # by hand, the flat ring 0 -> 1 -> 2 -> 3 -> 0: 2 (4 - 1) = 6 steps of one ceil(576 / 4) = 144 B chunk per
        # device, links 2 -> 3 and 3 -> 0 between the nodes. A device sends step k once step k - 1 has reached it,
        # so device d finishes after the 6 hops into it; device 0's (2->3, 3->0, 0->1, 1->2, 2->3, 3->0) cross
        # nodes 4 times, the most: 4 (144 B / 100 MB/s + 10 µs) + 2 (144 B / 1 GB/s + 1 µs) = 48.048 µs
        assert nbytes == 576 and {(t.op, t.nbytes) for t in auto.transfers} == {("allreduce", 144)}
        assert len(auto.transfers) == 4 * 6 and {(t.src, t.dst) for t in auto.transfers} == {
            (0, 1),
            (1, 2),
            (2, 3),
            (3, 0),
        }
        slow, fast = 144 / INTER.bandwidth + INTER.latency, 144 / INTRA.bandwidth + INTRA.latency
        assert auto.makespan == pytest.approx(4 * slow + 2 * fast, rel=1e-12) == pytest.approx(48.048e-6, rel=1e-12)
        with pytest.raises(
            ConfigError,
            match="needs as many of stage 0's replicas on every node, but devices 0, 1, 2, 3 sit 3, 1 to a node",
        ):
            simulate(schedule, work, cost, collective="hierarchical")


def test_sharded_optimizer_state_is_divided_by_the_replicas():
    # Adam in fp64: 16 bytes per parameter (pipesched.optimizer); 3 replicas of a 10 x 7 layer: 77 parameters,
    # 1232 bytes of state, ceil(1232 / 3) = 411 on each device when sharded (Megatron-LM pads to a multiple of d).
    schedule, work, _ = _replicas(3, 10, 7, 8, state_bytes=16)
    whole = simulate(schedule, work, _LinksOnly())
    sharded = simulate(schedule, work, _LinksOnly(), grad_sync="sharded")
    assert {s.optimizer for timeline in whole.memory for s in timeline} == {1232}
    assert {s.optimizer for timeline in sharded.memory for s in timeline} == {411}
    # parameters and gradients stay whole (ZeRO-1 shards only the optimizer state)
    assert [t.column("params")[-1] for t in whole.memory] == [77 * 8] * 3
    assert [t.column("params")[-1] for t in sharded.memory] == [77 * 8] * 3
    assert [t.column("grads")[-1] for t in sharded.memory] == [77 * 8] * 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"grad_sync": "zero"}, "--grad-sync 'zero' is unknown; use one of allreduce, sharded"),
        ({"collective": "tree"}, "--collective 'tree' is unknown; use one of auto, ring, hierarchical"),
    ],
)
def test_unknown_options_are_named(kwargs, message):
    schedule, work, _ = _replicas(2, 2, 2, 8)
    with pytest.raises(ConfigError, match=message):
        simulate(schedule, work, _LinksOnly(), **kwargs)


@dataclass(frozen=True)
class _Timeline:
    """F = 1 and B = 2 per stage; stage boundaries free; a collective's chunk busies its link 1 and lands 0.5 later."""

    name: str = "timeline"
    time_unit: str = "unit"

    def compute_time(
        self, op: str, layers: Sequence[Layer], rows: int, stage_units: float, stage: int = 0, device: int = 0
    ) -> float:
        return {"F": 1.0, "B": 2.0}[op]

    def transfer_times(self, nbytes: int, src: int = 0, dst: int = 1, boundary: int | None = None):
        return (0.0, 0.0) if boundary is not None else (1.0, 0.5)


def test_the_last_stage_reduces_while_the_first_drains():
    # K=2 stages, D=2 replicas: devices 0, 1 run replica A's pipeline (micro-batches 0, 1), devices 2, 3 replica B's
    # (micro-batches 2, 3), each 1F1B; stage 0 is replicated on devices 0 and 2, stage 1 on 1 and 3. By hand:
    #
    #   device 0 (device 2 alike): 0F0 0-1, 0F1 1-2, idle 2-4 (waits for 1B0), 0B0 4-6, idle 6-7, 0B1 7-9
    #   device 1 (device 3 alike): 1F0 1-2, 1B0 2-4, 1F1 4-5, 1B1 5-7, then stage 1's all-reduce
    #   links 1->3 and 3->1, stage 1's ring of 2: step 0 busy 7-8, lands 8.5; step 1 busy 8.5-9.5, lands 10
    #   links 0->2 and 2->0, stage 0's ring of 2: step 0 busy 9-10, lands 10.5; step 1 busy 10.5-11.5, lands 12
    #
    # Stage 1's all-reduce starts when device 1's last action, 1B1, ends (7) and runs while stage 0 drains (0B1, 7-9):
    # done at 10, before stage 0's even starts its second step. The step ends at 12, not at 9 + 3 + 3 = 15 as it
    # would if both all-reduces waited for the whole backward and then ran one after the other.
    schedule = Schedule.parse(["0F0 0F1 0B0 0B1", "1F0 1B0 1F1 1B1", "0F2 0F3 0B2 0B3", "1F2 1B2 1F3 1B3"])
    work = ShapeWorkload(layers_from_widths([4, 4, 4]), (range(0, 1), range(1, 2)), [1] * 4)
    trace = simulate(schedule, work, _Timeline())
    spans = {(s.device, s.name): (s.start, s.end) for s in trace.spans}
    assert [spans[(0, n)] for n in ("0F0", "0F1", "0B0", "0B1")] == [(0, 1), (1, 2), (4, 6), (7, 9)]
    assert [spans[(1, n)] for n in ("1F0", "1B0", "1F1", "1B1")] == [(1, 2), (2, 4), (4, 5), (5, 7)]
    reduce = sorted((t.stage, t.src, t.dst, t.start, t.end, t.arrival) for t in trace.transfers if t.op == "allreduce")
    assert reduce == [
        (0, 0, 2, 9, 10, 10.5),
        (0, 0, 2, 10.5, 11.5, 12),
        (0, 2, 0, 9, 10, 10.5),
        (0, 2, 0, 10.5, 11.5, 12),
        (1, 1, 3, 7, 8, 8.5),
        (1, 1, 3, 8.5, 9.5, 10),
        (1, 3, 1, 7, 8, 8.5),
        (1, 3, 1, 8.5, 9.5, 10),
    ]
    assert trace.makespan == 12


def test_crossed_reductions_deadlock_and_say_which_collective_waits():
    # Both devices hold both stages; device 0 reduces stage 0 first, device 1 stage 1 first: each waits for a chunk
    # of the collective the other has not reached.
    schedule = Schedule.parse(
        ["0F0 1F0 1B0 0B0 0REDUCE_GRAD 1REDUCE_GRAD", "0F1 1F1 1B1 0B1 1REDUCE_GRAD 0REDUCE_GRAD"]
    )
    work = ShapeWorkload(layers_from_widths([4, 4, 4]), (range(0, 1), range(1, 2)), [1, 1])
    with pytest.raises(DeadlockError) as err:
        simulate(schedule, work, _LinksOnly(), grad_sync="sharded")
    message = str(err.value)
    assert "step 0 of the gradient reduce-scatter of stage 0 (from device 1)" in message
    assert "step 0 of the gradient reduce-scatter of stage 1 (from device 0)" in message
