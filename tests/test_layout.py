"""The layout step (pipesched.layout): D pipeline replicas side by side, and --data-parallel end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipesched.cli import main
from pipesched.compute import ShapeWorkload
from pipesched.cost import OP_WEIGHT, UnitCost
from pipesched.engine import simulate
from pipesched.errors import ConfigError
from pipesched.formulas import CLOSED_FORMS, ring_allreduce_time
from pipesched.layout import device_of, replicate
from pipesched.model import layers_from_widths
from pipesched.partition import parse_partition
from pipesched.pipeline import BUILT_INS, RunConfig, run
from pipesched.schedule import Action, Schedule, expand, validate
from pipesched.strategy import load_strategy, make_plan


@dataclass(frozen=True)
class RingCost:
    """Unit compute (F=1, B=2 per stage of a K-stage pipeline), free pipeline sends, collectives over a link.

    A collective's chunk (no stage boundary) keeps its link busy ``bytes / bandwidth`` and lands
    ``latency`` later: the link ``ring_allreduce_time`` assumes.
    """

    bandwidth: float
    latency: float = 0.0
    name: str = "unit"
    time_unit: str = "unit"

    def compute_time(self, op, layers, rows, stage_units, stage=0, device=0):  # type: ignore[no-untyped-def]
        return OP_WEIGHT[op] * stage_units

    def transfer_times(self, nbytes, src=0, dst=1, boundary=None):  # type: ignore[no-untyped-def]
        return (0.0, 0.0) if boundary is not None else (nbytes / self.bandwidth, self.latency)


def _strip(action: Action, microbatches: int) -> Action:
    """The strategy's own action back from a replica's (micro-batch r·M + m -> m)."""
    return action if action.microbatch is None else action._replace(microbatch=action.microbatch % microbatches)


class TestReplicate:
    @settings(max_examples=25, deadline=None)
    @given(
        strategy=st.sampled_from(BUILT_INS),
        devices=st.integers(1, 3),
        extra=st.integers(0, 3),
        data_parallel=st.integers(1, 3),
    )
    def test_each_replica_runs_the_strategys_order(self, strategy, devices, extra, data_parallel):
        plug = load_strategy(strategy)
        chunks = getattr(plug, "default_chunks", 1)
        microbatches = 2 * devices + extra  # every strategy here plans 2K micro-batches or more
        assume(CLOSED_FORMS[strategy].runs(devices, microbatches, chunks))  # DualPipe, Chimera: K even; rounds
        one = make_plan(plug, devices, microbatches, chunks)
        laid = replicate(one, data_parallel, microbatches)
        validate(laid, devices * data_parallel, data_parallel * microbatches)
        assert laid.devices == devices * data_parallel and laid.replicas == data_parallel
        for d in range(devices):
            for r in range(data_parallel):
                mine = laid.actions[d * data_parallel + r]  # Megatron-LM's order: data-parallel inside pipeline
                own = list(expand(mine))
                assert [_strip(a, microbatches) for a in own] == list(expand(one.actions[d]))
                # replica r's micro-batches are r·M .. r·M + M-1, and no other replica's
                assert {a.microbatch // microbatches for a in own} == {r}
        # every stage of the pipeline is on the D devices of its pipeline device: its gradient ring
        for stage, where in one.placement().items():
            assert laid.placement()[stage] == tuple(
                device_of(r, d, data_parallel) for d in where for r in range(data_parallel)
            )

    def test_one_replica_is_the_plan_itself(self):
        one = Schedule.parse(["0F0 0B0", "1F0 1B0"])
        assert replicate(one, 1, 1) is one


class TestGradients:
    """The D replicas' summed gradient is the full-batch gradient: they computed different rows."""

    @pytest.mark.parametrize("strategy", ["gpipe", "1f1b", "zb-h1", "interleaved"])
    @pytest.mark.parametrize("batch", [8, 11])  # 11 rows in 2 x 2 micro-batches: 3, 3, 3, 2
    def test_mlp(self, strategy, batch):
        result = run(
            RunConfig(
                layers="6,8x3,3",
                batch=batch,
                devices=2,
                microbatches=2,
                data_parallel=2,
                strategy=strategy,
                cost="unit",
            )
        )
        assert result.schedule.devices == 4
        assert result.grad_rel_err is not None and result.grad_rel_err < 1e-12

    @pytest.mark.parametrize("batch", [4, 5])
    def test_tiny_gpt(self, batch):
        result = run(
            RunConfig(
                model="tiny-gpt", seq_len=8, batch=batch, devices=2, microbatches=2, data_parallel=2, strategy="1f1b"
            )
        )
        assert result.schedule.devices == 4
        assert result.grad_rel_err is not None and result.grad_rel_err < 1e-10

    def test_same_rows_twice_would_fail(self):
        """The check above can fail: replica 1 rerunning replica 0's rows is far from the full batch."""
        config = RunConfig(layers="6,8x3,3", batch=8, devices=2, microbatches=2, data_parallel=2, cost="unit")
        good = run(config)
        assert good.grads is not None
        one = run(RunConfig(layers="6,8x3,3", batch=4, devices=2, microbatches=2, cost="unit"))  # the first 4 rows
        assert one.grads is not None
        doubled = [(2 * w, 2 * b) for w, b in one.grads]  # what two copies of those rows (same 1/8 scale) sum to
        gap = max(abs(a[0] - 0.5 * b[0]).max() for a, b in zip(good.grads, doubled))
        assert gap > 1e-6


class TestTimeline:
    def test_allreduce_after_last_backward_overlaps_the_drain(self):
        """K=2, D=2, M=2, 1F1B; layers 4 -> 4 (stage 0, 20 parameters, 160 B) and 4 -> 8 (stage 1, 40, 320 B).

        By hand, one replica (F=1, B=2, free sends):

            pipeline device 0 (stage 0): F0 [0,1]  F1 [1,2]  B0 [4,6]  B1 [7,9]
            pipeline device 1 (stage 1): F0 [1,2]  B0 [2,4]  F1 [4,5]  B1 [5,7]

        Stage 1's replicas (devices 2 and 3) finish at 7 and all-reduce 320 B over a 2-ring at 160 B per
        unit: 2 steps of one 160 B chunk, [7,8] and [8,9], during stage 0's B1 [7,9]; stage 0's replicas
        (devices 0 and 1) finish at 9 and all-reduce 160 B: 2 steps of 80 B, [9,9.5] and [9.5,10].
        Makespan 10 = 9 + stage 0's all-reduce, the only exposed one.
        """
        widths = [4, 4, 8]
        layers = layers_from_widths(widths)
        partition = parse_partition("uniform", 2, 2)
        laid = replicate(make_plan(load_strategy("1f1b"), 2, 2, 1), 2, 2)
        work = ShapeWorkload(layers, partition, rows=[1] * 4)
        trace = simulate(laid, work, RingCost(bandwidth=160.0))
        steps = sorted(
            (t.src, t.dst, t.stage, t.start, t.end) for t in trace.transfers if t.op == "allreduce"
        )  # fmt: skip
        assert steps == [
            (0, 1, 0, 9.0, 9.5), (0, 1, 0, 9.5, 10.0), (1, 0, 0, 9.0, 9.5), (1, 0, 0, 9.5, 10.0),
            (2, 3, 1, 7.0, 8.0), (2, 3, 1, 8.0, 9.0), (3, 2, 1, 7.0, 8.0), (3, 2, 1, 8.0, 9.0),
        ]  # fmt: skip
        # stage 0's last backward on devices 0 and 1 runs [7,9], beside stage 1's all-reduce
        assert sorted((s.device, s.start, s.end) for s in trace.spans if (s.stage, s.op, s.microbatch) in
                      {(0, "B", 1), (0, "B", 3)}) == [(0, 7.0, 9.0), (1, 7.0, 9.0)]  # fmt: skip
        assert trace.makespan == 10.0 == 9 + ring_allreduce_time(2, 160, 160.0, 0.0)

    @settings(max_examples=20, deadline=None)
    @given(
        strategy=st.sampled_from(["gpipe", "1f1b", "zb-h1", "interleaved"]),
        devices=st.integers(1, 3),
        extra=st.integers(0, 2),
        data_parallel=st.integers(2, 3),
        bandwidth=st.sampled_from([7.0, 50.0, 1000.0]),
        latency=st.sampled_from([0.0, 0.25]),
    )
    def test_makespan_is_one_replicas_plus_exposed_allreduce(
        self, strategy, devices, extra, data_parallel, bandwidth, latency
    ):
        """Each device finishes its replica's work as alone, then runs its stages' rings one after another.

        So the makespan is max over pipeline devices d of (d's finish alone + Σ over its stages of
        ring_allreduce_time(D, stage bytes)), at least the single replica's: the closed form with free sends.
        """
        plug = load_strategy(strategy)
        chunks = getattr(plug, "default_chunks", 1)
        microbatches = 2 * devices + extra
        one = make_plan(plug, devices, microbatches, chunks)
        layers = layers_from_widths([3] + [5] * (one.num_stages * 2))
        partition = parse_partition("uniform", len(layers), one.num_stages)
        cost = RingCost(bandwidth, latency)
        alone = simulate(one, ShapeWorkload(layers, partition, rows=[2] * microbatches), cost)
        laid = replicate(one, data_parallel, microbatches)
        work = ShapeWorkload(layers, partition, rows=[2] * (data_parallel * microbatches))
        trace = simulate(laid, work, cost)
        finish = [max(s.end for s in alone.spans if s.device == d) for d in range(devices)]
        hosted = [sorted({a.stage for a in expand(actions)}) for actions in one.actions]
        ring = [
            ring_allreduce_time(data_parallel, work.param_bytes(s), bandwidth, latency) for s in range(one.num_stages)
        ]
        expected = max(finish[d] + sum(ring[s] for s in hosted[d]) for d in range(devices))
        assert trace.makespan == pytest.approx(expected, rel=1e-12)
        assert trace.makespan >= alone.makespan


class TestRun:
    def test_unit_makespan_and_bubble_are_one_replicas(self):
        """Under --cost unit the links are free: D replicas take exactly one replica's time and bubble."""
        config = RunConfig(layers="6,8x3,3", batch=12, devices=3, microbatches=4, strategy="1f1b", cost="unit")
        one, many = run(config), run(RunConfig(**{**config.__dict__, "data_parallel": 3}))
        assert many.metrics.makespan == one.metrics.makespan == (4 + 3 - 1) * 3
        assert many.metrics.bubble_fraction == one.metrics.bubble_fraction == pytest.approx(2 / 6)
        assert many.to_dict()["data_parallel"] == 3 and len(many.metrics.busy) == 9

    def test_topology_covers_every_device(self):
        """8 devices of 2 replicas x 4 stages on nodes of 4: stage rings {0,1}, {2,3}, ... stay in a node."""
        result = run(RunConfig(devices=4, data_parallel=2, batch=16, microbatches=4, compute=False, devices_per_node=4))
        rings = {(t.src, t.dst) for t in result.trace.transfers if t.op == "allreduce"}
        assert rings == {(0, 1), (1, 0), (2, 3), (3, 2), (4, 5), (5, 4), (6, 7), (7, 6)}
        assert not any(result.trace.links[pair][1] for pair in rings)  # none leaves its node
        assert result.trace.links[(2, 4)][1]  # the pipeline's send from stage 1 to 2 does

    @pytest.mark.parametrize(
        "flags, message",
        [
            (["--data-parallel", "0"], "--data-parallel 0 is not allowed; use 1"),
            (
                ["--data-parallel", "2", "--devices", "3", "--devices-per-node", "4"],
                "--devices 3 x --data-parallel 2 = 6 devices span more than one node of 4 but do not fill whole",
            ),
            (["--data-parallel", "2", "--devices", "2", "--node-map", "0,0,1"], "names 3 devices but the run has 4"),
            (  # 3 x 1000 x 1000 x 2 x 1 = 6,000,000 actions: one replica (3,000,000) would fit
                ["--data-parallel", "2", "--devices", "1000", "--microbatches", "1000", "--batch", "2000"],
                "--devices x --data-parallel 2000 x --microbatches 1000 x --chunks 1 makes a schedule of up to "
                "6,000,000 actions",
            ),
            (
                ["--data-parallel", "2", "--microbatches", "4", "--batch", "7"],
                "--batch 7 cannot be split over --data-parallel 2 x --microbatches 4 = 8 micro-batches",
            ),
        ],
    )
    def test_bad_input(self, capsys, flags, message):
        assert main(["run", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1

    def test_config_refuses_a_non_number(self):
        with pytest.raises(ConfigError, match="--data-parallel 1.5 is not a whole number"):
            run(RunConfig(data_parallel=1.5))  # type: ignore[arg-type]

    def test_cli_json(self, capsys):
        assert main(["run", "--data-parallel", "2", "--devices", "2", "--batch", "8", "--microbatches", "2",
                     "--layers", "6,8x3,3", "--json"]) == 0  # fmt: skip
        data = json.loads(capsys.readouterr().out)
        assert data["data_parallel"] == 2 and data["devices"] == 2 and len(data["busy"]) == 4
        assert data["grad_rel_err"] < 1e-12


def test_unit_stage_cost_is_one_pipelines():
    """A stage of a K-stage pipeline costs F=1 under unit cost whatever D (Schedule.replicas)."""
    laid = replicate(Schedule.parse(["0F0 0B0", "1F0 1B0"]), 2, 1)
    work = ShapeWorkload(layers_from_widths([2, 2, 2]), parse_partition("uniform", 2, 2), rows=[1, 1])
    trace = simulate(laid, work, UnitCost())
    assert sorted((s.device, s.op, s.end - s.start) for s in trace.spans) == [
        (0, "B", 2.0), (0, "F", 1.0), (1, "B", 2.0), (1, "F", 1.0), (2, "B", 2.0), (2, "F", 1.0), (3, "B", 2.0),
        (3, "F", 1.0),
    ]  # fmt: skip


@pytest.mark.parametrize("remat", ["never", "always", "except_last"])
def test_each_replica_holds_what_one_pipeline_holds(remat):
    """D replicas of micro-batches of the same rows: each device's peak activations are its pipeline device's alone.

    The reference is the single pipeline on a batch D times smaller (the same rows per micro-batch);
    under ``except_last`` each replica keeps its own last micro-batch, as one pipeline does.
    """
    base = RunConfig(layers="6,8x3,3", batch=8, devices=2, microbatches=4, strategy="gpipe", remat=remat, cost="unit")
    one = run(base)
    many = run(RunConfig(**{**base.__dict__, "batch": 16, "data_parallel": 2}))
    assert many.metrics.peak_activation_bytes == [b for b in one.metrics.peak_activation_bytes for _ in range(2)]
    # and recomputes what it recomputes: busy time counts each recompute forward
    assert many.metrics.busy == [b for b in one.metrics.busy for _ in range(2)]


def test_balance_places_one_pipeline(capsys):
    """`balance --data-parallel 2` balances one replica: its micro-batches of batch / (D x M) rows, by hand.

    Layers 16 -> 32 -> 32 -> 32 -> 4 (ReLU after all but the last), --batch 8 over D = 2 replicas of M = 2
    micro-batches: rows = 8 / (2 x 2) = 2. A layer's forward is 2·rows·in·out FLOPs (pipesched.model) and
    its backward twice that (OP_WEIGHT), at the cpu preset's 73.6 GFLOP/s x 0.5 (README's table). One
    pipeline on the whole batch would have micro-batches of 4 rows: twice each cost below.
    """
    flags = ["--devices", "2", "--layers", "16,32x3,4", "--microbatches", "2", "--strategy", "gpipe", "--json"]
    assert main(["balance", *flags, "--batch", "8", "--data-parallel", "2"]) == 0
    many = json.loads(capsys.readouterr().out)
    rows, rate = 2, 73.6e9 * 0.5
    forward = [2 * rows * i * o for i, o in ((16, 32), (32, 32), (32, 32), (32, 4))]
    costs = [3 * sum(forward[:2]) / rate, 3 * sum(forward[2:]) / rate]  # the even split: two layers each
    assert many["sizes"] == [2, 2] and many["stage_costs"] == pytest.approx(costs, rel=1e-12)
    assert many["bottleneck"] == pytest.approx(max(costs), rel=1e-12)
    # each boundary carries one micro-batch's 2 rows x 32 wide in fp64 over the cpu preset's 5.12 GB/s
    assert [link["load"] for link in many["link_loads"]] == pytest.approx([2 * 32 * 8 / 5.12e9] * 2, rel=1e-12)
    # memory: fp64 parameters and gradients (16 B per parameter), and for each of the M = 2 micro-batches
    # GPipe keeps in flight the stage's input and each layer's output (a ReLU's mask, the loss's logits)
    params = [(16 + 1) * 32 + (32 + 1) * 32, (32 + 1) * 32 + (32 + 1) * 4]
    kept = [rows * 8 * (16 + 32 + 32), rows * 8 * (32 + 32 + 4)]
    assert many["stage_memory"] == [16 * p + 2 * k for p, k in zip(params, kept)]


def test_a_sharded_optimizer_divides_each_replicas_state_and_moves_the_same_bytes(capsys):
    # ZeRO-1 through the CLI: D = 2 replicas of Adam (fp64 state, 16 bytes per parameter) hold half the optimizer
    # state each (ceil(state / 2)), and reduce-scatter + all-gather move what the all-reduce moved
    flags = ["run", "--data-parallel", "2", "--devices", "2", "--microbatches", "2", "--batch", "8",
             "--layers", "6x5", "--optimizer", "adam", "--no-compute", "--json"]  # fmt: skip
    assert main(flags) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main([*flags, "--grad-sync", "sharded"]) == 0
    sharded = json.loads(capsys.readouterr().out)
    assert sharded["grad_sync"] == "sharded" and whole["grad_sync"] == "allreduce"
    state = [roles["optimizer"] for roles in whole["memory_by_role"]]
    assert [roles["optimizer"] for roles in sharded["memory_by_role"]] == [-(-s // 2) for s in state]
    assert sharded["makespan"] == pytest.approx(whole["makespan"], rel=1e-12)


@pytest.mark.parametrize(
    "flag, message",
    [
        (["--grad-sync", "zero"], "--grad-sync 'zero' is unknown; use one of allreduce, sharded"),
        (["--collective", "tree"], "--collective 'tree' is unknown; use one of auto, ring, hierarchical"),
    ],
)
def test_bad_gradient_sync_flags_exit_2(flag, message, capsys):
    assert main(["run", "--data-parallel", "2", "--no-compute", *flag]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
