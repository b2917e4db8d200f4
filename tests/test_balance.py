"""The balancer against brute force (its objective, and the simulation over every partition), the issue-14
example, the seed's 2,2,2,5, a skip-connection graph, and memory caps."""

import itertools
import json
import math
from dataclasses import replace

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import ConfigError, RunConfig, pipeline, run
from pipesched.balance import (
    Placement,
    balance,
    bottleneck,
    chain_graph,
    evaluate,
    fastest,
    layer_graph,
    profile_layers,
)
from pipesched.cli import main
from pipesched.model import Model, layers_from_widths, parse_layers
from pipesched.partition import uniform
from pipesched.pipeline import BUILT_INS as BUILT_IN
from pipesched.pipeline import model_graph
from pipesched.strategy import load_strategy, make_plan


def compositions(n, parts):
    """Every way to cut n layers into ``parts`` non-empty contiguous stages."""
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = (0,) + cuts + (n,)
        yield [b - a for a, b in zip(bounds, bounds[1:])]


def stated_devices(name, devices, microbatches, stages):
    """Per stage, {device: share of its micro-batches}, as each strategy's docstring and the README state it."""
    if name in ("interleaved", "looped-bfs", "interleaved-zb"):  # looped: stage s on device s mod K
        return [{s % devices: 1.0} for s in range(stages)]
    if name in ("zb-v", "v-half", "v-min", "dualpipev"):  # a V
        return [{s if s < devices else 2 * devices - 1 - s: 1.0} for s in range(stages)]
    if name in BIDIRECTIONAL:  # half the micro-batches down (stage s on device s), half up (on K-1-s)
        return [{s: 0.5, devices - 1 - s: 0.5} for s in range(stages)]
    if name == "dp":  # device d runs micro-batches d, d+K, d+2K, ...
        return [{d: len(range(d, microbatches, devices)) / microbatches for d in range(devices)}]
    return [{s: 1.0} for s in range(stages)]


def stated_traffic(placed, bidirectional=False):
    """Per boundary, (src, dst, share of micro-batches) crossing a link: each stage on one device, or the two
    directions of a bidirectional pipeline, whose down half goes s -> s+1 and up half K-1-s -> K-2-s."""
    devices = 1 + max(d for row in placed for d in row)
    traffic = []
    for b in range(len(placed) - 1):
        if bidirectional:
            pairs = [(b, b + 1, 0.5), (devices - 1 - b, devices - 2 - b, 0.5)]
        else:
            ((src, _),) = placed[b].items()
            ((dst, _),) = placed[b + 1].items()
            pairs = [(src, dst, 1.0)]
        traffic.append(tuple(p for p in pairs if p[0] != p[1]))
    return traffic


def brute_objective(graph, order, sizes, devices, placed, bandwidth, bidirectional=False):
    """The busiest device or link per micro-batch, straight from the definition, for the brute force.

    ``placed`` is ``stated_devices``'s list; each edge crossing a boundary is
    charged on the links ``stated_traffic`` names, both ways, by their share.
    """
    bounds = list(itertools.accumulate([0] + list(sizes)))
    stage_of = {v: s for s, (a, b) in enumerate(zip(bounds, bounds[1:])) for v in order[a:b]}
    device = [0.0] * devices
    for v in order:
        for d, share in placed[stage_of[v]].items():
            device[d] += share * graph.nodes[v].get("cost", 0.0)
    links = {}
    for boundary, pairs in enumerate(stated_traffic(placed, bidirectional)):
        for src, dst, share in pairs:
            for u, v, data in graph.edges(data=True):
                if stage_of[u] <= boundary < stage_of[v]:
                    for link in ((src, dst), (dst, src)):
                        links[link] = links.get(link, 0.0) + share * data.get("bytes", 0) / bandwidth
    return max(device + list(links.values()))


def brute_memory(graph, order, start, stop):
    """A stage's memory straight from the definition: its nodes', plus outputs it sends on."""
    inside, after = set(order[start:stop]), set(order[stop:])
    memory = sum(graph.nodes[v].get("memory", 0.0) for v in inside)
    return memory + sum(
        graph.nodes[u].get("output_bytes", 0.0) for u in inside if any(v in after for v in graph.successors(u))
    )


def brute_force(graph, parts, bandwidth=math.inf, cap=None, devices=None, placed=None, bidirectional=False):
    """The least objective over every partition whose stages fit ``cap`` (one stage per device by default)."""
    order = list(nx.lexicographical_topological_sort(graph, key=str))
    devices = devices or parts
    placed = placed or [{s: 1.0} for s in range(parts)]
    best = math.inf
    for sizes in compositions(len(order), parts):
        bounds = list(itertools.accumulate([0] + sizes))
        if cap is not None and any(brute_memory(graph, order, a, b) > cap for a, b in zip(bounds, bounds[1:])):
            continue
        best = min(best, brute_objective(graph, order, sizes, devices, placed, bandwidth, bidirectional))
    return best


costs = st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=12)


@given(costs=costs, data=st.data())
def test_bottleneck_is_the_brute_force_optimum_and_never_worse_than_uniform(costs, data):
    parts = data.draw(st.integers(1, min(5, len(costs))))
    result = balance(chain_graph(costs), parts)
    assert result.bottleneck == pytest.approx(brute_force(chain_graph(costs), parts), abs=1e-9)
    assert sum(result.sizes) == len(costs) and len(result.sizes) == parts and min(result.sizes) >= 1
    assert result.bottleneck == max(result.stage_costs)
    uniform_sizes = [len(r) for r in uniform(len(costs), parts)]
    assert result.bottleneck <= evaluate(chain_graph(costs), uniform_sizes).bottleneck + 1e-9


@given(
    costs=st.lists(st.floats(0, 10, allow_nan=False), min_size=2, max_size=9),
    sizes=st.lists(st.integers(0, 50), min_size=9, max_size=9),
    memory=st.lists(st.integers(0, 30), min_size=9, max_size=9),
    data=st.data(),
)
def test_communication_and_memory_aware_optimum_matches_brute_force(costs, sizes, memory, data):
    graph = chain_graph(costs)
    for i in graph.nodes:
        graph.nodes[i]["memory"] = memory[i]
        graph.nodes[i]["output_bytes"] = sizes[i] % 7
    for i, (u, v) in enumerate(graph.edges):
        graph.edges[u, v]["bytes"] = sizes[i]
    parts = data.draw(st.integers(1, min(4, len(costs))))
    cap = data.draw(st.none() | st.integers(0, 80))
    expected = brute_force(graph, parts, bandwidth=10.0, cap=cap)
    if math.isinf(expected):
        with pytest.raises(ConfigError, match=r"no partition into \d+ stages? fits"):
            balance(graph, parts, link_bandwidth=10.0, memory_cap=cap)
        return
    result = balance(graph, parts, link_bandwidth=10.0, memory_cap=cap)
    assert result.bottleneck == pytest.approx(expected, abs=1e-9)
    assert cap is None or max(result.stage_memory) <= cap


@given(st.data())
def test_dag_optimum_matches_brute_force_over_the_same_order(data):
    """Random DAGs (edges only forward in node order, so skips of any length) against brute force."""
    n = data.draw(st.integers(2, 8))
    graph = chain_graph(data.draw(st.lists(st.floats(0, 10), min_size=n, max_size=n)))
    nx.set_edge_attributes(graph, 1, "bytes")
    for u in range(n):
        for v in range(u + 2, n):
            if data.draw(st.booleans()):
                graph.add_edge(u, v, bytes=data.draw(st.integers(0, 20)))
    parts = data.draw(st.integers(1, min(4, n)))
    result = balance(graph, parts, link_bandwidth=4.0)
    assert result.bottleneck == pytest.approx(brute_force(graph, parts, bandwidth=4.0), abs=1e-9)


def test_among_optimal_partitions_the_evenest_is_chosen():
    # [5 | 1 1 1 | 1 1 1 | 5] and [5 | 1 | 1 1 1 1 1 | 5] share bottleneck 5; the first is evener.
    costs = [5, 1, 1, 1, 1, 1, 1, 5]
    evenest = min(
        (sizes for sizes in compositions(8, 4) if evaluate(chain_graph(costs), sizes).bottleneck == 5),
        key=lambda sizes: sum(c * c for c in evaluate(chain_graph(costs), sizes).stage_costs),
    )
    assert balance(chain_graph(costs), 4).sizes == evenest == [1, 3, 3, 1]


def test_a_misnamed_weight_is_an_error_not_a_free_model():
    with pytest.raises(ConfigError, match=r"no layer has the attribute 'costt'"):
        balance(chain_graph([1, 2, 3]), 2, weight="costt")


def test_the_seed_model_balances_better_than_2_2_2_5_and_runs_faster():
    layers = layers_from_widths(parse_layers("128,256x10,10"))
    graph = layer_graph(layers, rows=4, rows_held=32)
    seed = evaluate(graph, [2, 2, 2, 5])
    best = balance(graph, 4)
    assert best.bottleneck < seed.bottleneck
    # A slow device and free links make compute the whole story: GPipe's step is
    # then a flow shop of identical micro-batches, 3 * (sum(F) + (M-1) * max(F)).
    common = dict(devices=4, microbatches=8, batch=32, device_flops=1e9, link_bandwidth=1e30, link_latency=0.0)
    slow = run(RunConfig(partition="2,2,2,5", **common))
    fast = run(RunConfig(partition="balanced", **common))
    assert fast.metrics.makespan < slow.metrics.makespan
    for result in (slow, fast):
        forward = [
            sum(2 * 4 * layers[i].in_features * layers[i].out_features for i in stage) / 1e9
            for stage in result.partition
        ]
        expected = 3 * (sum(forward) + 7 * max(forward))
        assert result.metrics.makespan == pytest.approx(expected, rel=1e-9)
    assert fast.grad_rel_err < 1e-12


def test_skip_connections_are_charged_on_every_boundary_they_cross():
    # 0 -> 1 -> 2 -> 3 -> 4 with a skip 0 -> 3 carrying 100 bytes (a residual).
    graph = chain_graph([1, 1, 1, 1, 1])
    nx.set_edge_attributes(graph, 1, "bytes")
    graph.add_edge(0, 3, bytes=100)
    # Two stages: cutting after 0, 1 or 2 makes the skip cross (101 on the link
    # each way); cutting after 3 keeps it inside, so that cut wins despite 4 vs 1 compute.
    result = balance(graph, 2, link_bandwidth=1.0)
    assert result.sizes == [4, 1] and result.device_loads == [4.0, 1.0]
    assert result.link_loads == {(0, 1): 1.0, (1, 0): 1.0} and result.bottleneck == 4.0
    # Three stages [0 | 1 2 | 3 4]: the skip crosses both boundaries and is relayed over both links.
    relayed = evaluate(graph, [1, 2, 2], link_bandwidth=1.0)
    assert relayed.stage_costs == [1.0, 2.0, 2.0]
    assert relayed.link_loads == {(0, 1): 101.0, (1, 0): 101.0, (1, 2): 101.0, (2, 1): 101.0}


def test_a_memory_cap_moves_the_cut_to_the_best_partition_that_fits():
    graph = chain_graph([1, 1, 1, 1, 8])
    nx.set_node_attributes(graph, {0: 10, 1: 10, 2: 10, 3: 10, 4: 1}, "memory")
    free = balance(graph, 2)
    assert free.sizes == [4, 1] and free.stage_memory == [40.0, 1.0]
    capped = balance(graph, 2, memory_cap=30)
    assert capped.sizes == [3, 2] and max(capped.stage_memory) <= 30
    assert capped.bottleneck == brute_force(graph, 2, cap=30) == 9.0
    # smallest cap: [10, 10 | 10, 10, 1] holds at most 21
    with pytest.raises(ConfigError, match=r"fits a device memory of 19 B; the smallest that fits is 21 B"):
        balance(graph, 2, memory_cap=19)


def test_the_memory_estimate_matches_the_simulated_gpipe_peak():
    widths = parse_layers("32,64x6,8")
    config = RunConfig(layers="32,64x6,8", batch=16, devices=3, microbatches=4, partition="balanced", cost="unit")
    result = run(config)
    model = Model.from_sizes(widths)
    for stage, estimate, peak in zip(
        result.partition, result.balance.stage_memory, result.metrics.peak_activation_bytes
    ):
        params = sum(model.layers[i].param_count for i in stage) * 8
        assert estimate - 2 * params == peak  # activations: GPipe's whole batch, as simulated


@pytest.mark.parametrize(
    "graph, parts, message",
    [
        (chain_graph([1, 2]), 3, r"cannot split 2 layers into 3 stages"),
        (chain_graph([1, -2, 3]), 2, r"layer 1 has cost -2; give every layer a finite cost of 0 or more"),
        (chain_graph([1, float("nan")]), 1, r"layer 1 has cost nan"),
        (nx.DiGraph([(0, 1), (1, 2), (2, 0)]), 2, r"the layer graph has a cycle \(0 -> 1 -> 2\)"),
    ],
)
def test_bad_graphs_are_named(graph, parts, message):
    with pytest.raises(ConfigError, match=message):
        balance(graph, parts)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--costs", "1,2", "--devices", "3"], "cannot split 2 layers into 3 stages"),
        (["--costs", "1,-1", "--devices", "2"], "layer 1 has cost -1"),
        (["--costs", "1,x", "--devices", "2"], "--costs '1,x' is not a list of numbers"),
        (["--device-memory", "2MB", "--cost", "unit"], "no partition into 4 stages fits a device memory of 1.91 MiB"),
        (["--device-memory", "lots"], "--device-memory 'lots' is not a size"),
        (["--balance-by", "vibes"], "--balance-by 'vibes' is unknown; use one of flops, measured"),
    ],
)
def test_balance_cli_errors(capsys, argv, message):
    assert main(["balance", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_balance_cli_json(capsys):
    assert main(["balance", "--costs", "5,1,1,1,1,1,1,5", "--devices", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sizes"] == [1, 3, 3, 1] and data["stage_costs"] == [5, 3, 3, 5] and data["bottleneck"] == 5
    assert data["device_loads"] == [5, 3, 3, 5] and data["status"] == "optimal"
    links = {(x["from"], x["to"]): x["load"] for x in data["link_loads"]}  # --costs has no bytes: free links
    assert links == {(0, 1): 0, (1, 0): 0, (1, 2): 0, (2, 1): 0, (2, 3): 0, (3, 2): 0}
    assert data["uniform"]["bottleneck"] == 6 and data["simulated"] is None


def test_measured_costs_balance_a_real_run():
    model = Model.from_sizes([16, 64, 64, 4])
    times = profile_layers(model, rows=8, repeats=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    result = run(
        RunConfig(
            layers="16,64,64,64,4", batch=8, devices=2, microbatches=2, partition="balanced", balance_by="measured"
        )
    )
    assert sum(len(s) for s in result.partition) == 4 and result.grad_rel_err < 1e-12


def test_compare_balances_each_strategy_for_its_own_stages(capsys):
    assert (
        main(
            [
                "compare",
                "--strategies",
                "gpipe,interleaved",
                "--partition",
                "balanced",
                "--layers",
                "8x13",
                "--cost",
                "unit",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [len(r["partition"]) for r in rows] == [4, 8] and all(r["balance"] for r in rows)


BIDIRECTIONAL = ("dualpipe", "chimera")  # each stage on two devices, half its micro-batches on each
#: The two cost models; under flops a slow device and links slow enough to matter.
COSTS = {
    "unit": dict(cost="unit"),
    "flops": dict(cost="flops", device_flops=1e9, link_bandwidth=1e9, link_latency=1e-6),
}


def plan(name, devices, microbatches):
    strategy = load_strategy(name)
    return make_plan(strategy, devices, microbatches, getattr(strategy, "default_chunks", 1))


def simulate_every_partition(config, layers, stages):
    """The brute-force reference: one ordinary shape-only run per composition of the layers into stages."""
    return {
        tuple(sizes): run(replace(config, partition=",".join(map(str, sizes)))).metrics.makespan
        for sizes in compositions(layers, stages)
    }


@st.composite
def small_models(draw, stages):
    """Widths of a model of 4 to 7 layers, at least one per stage."""
    n = draw(st.integers(max(4, stages), 7))
    return ",".join(map(str, draw(st.lists(st.sampled_from([2, 8, 32, 96]), min_size=n + 1, max_size=n + 1))))


@pytest.mark.parametrize("devices", [2, 3])
@pytest.mark.parametrize("name", BUILT_IN)
def test_the_placement_read_off_a_plan_is_the_strategys_stated_one(name, devices):
    microbatches = 2 * devices + 1  # dp's devices then run unequal shares
    if name in BIDIRECTIONAL:  # K even, M a multiple of 2K: DualPipe and Chimera both plan it
        devices = 2 * devices - 2
        microbatches = 2 * devices
    elif name == "interleaved-zb":  # rounds of equal size
        microbatches = 2 * devices
    schedule = plan(name, devices, microbatches)
    placement = Placement.of(schedule)
    stated = stated_devices(name, devices, microbatches, schedule.num_stages)
    assert [{d: x for d, x in enumerate(row) if x} for row in placement.shares] == stated
    # a boundary crosses a link unless both stages share a device
    assert list(placement.traffic) == [tuple(sorted(p)) for p in stated_traffic(stated, name in BIDIRECTIONAL)]


@pytest.mark.parametrize("cost", sorted(COSTS))
@pytest.mark.parametrize("name", BUILT_IN)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_the_objectives_optimum_is_the_brute_force_minimum_for_every_strategy(name, cost, data):
    devices = 2 if name in BIDIRECTIONAL else data.draw(st.integers(2, 3))  # K even
    schedule = plan(name, devices, 2 * devices)
    layers = data.draw(small_models(schedule.num_stages))
    config = RunConfig(layers=layers, batch=8, devices=devices, microbatches=2 * devices, strategy=name, **COSTS[cost])
    graph, bandwidth = model_graph(config)
    result = balance(graph, Placement.of(schedule), link_bandwidth=bandwidth)
    placed = stated_devices(name, devices, 2 * devices, schedule.num_stages)
    two_ways = name in BIDIRECTIONAL
    expected = brute_force(
        graph, schedule.num_stages, bandwidth, devices=devices, placed=placed, bidirectional=two_ways
    )
    assert result.bottleneck == pytest.approx(expected, rel=1e-12)
    order = list(graph.nodes)
    assert result.bottleneck == pytest.approx(
        brute_objective(graph, order, result.sizes, devices, placed, bandwidth, two_ways), rel=1e-12
    )


@pytest.mark.parametrize("cost", sorted(COSTS))
@pytest.mark.parametrize("name", BUILT_IN)
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_balanced_is_the_fastest_partition_in_simulation_so_never_slower_than_uniform(name, cost, data):
    devices = 2 if name in BIDIRECTIONAL else data.draw(st.integers(2, 3))  # K even
    schedule = plan(name, devices, 2 * devices)
    layers = data.draw(small_models(schedule.num_stages))
    config = RunConfig(
        layers=layers,
        batch=12,
        devices=devices,
        microbatches=2 * devices,
        strategy=name,
        compute=False,
        reference=False,
        **COSTS[cost],
    )
    every = simulate_every_partition(config, len(parse_layers(layers)) - 1, schedule.num_stages)
    if cost == "flops":  # the objective's claim: M equal micro-batches keep the busiest resource busy M times it
        graph, bandwidth = model_graph(config)
        for sizes, makespan in every.items():
            objective = evaluate(graph, list(sizes), Placement.of(schedule), link_bandwidth=bandwidth).bottleneck
            assert 2 * devices * objective <= makespan * (1 + 1e-12)
    balanced = run(replace(config, partition="balanced"))
    assert balanced.metrics.makespan <= run(config).metrics.makespan  # uniform
    # few partitions: every one was simulated (equal to ten digits: round-off does not pick)
    assert balanced.metrics.makespan == pytest.approx(min(every.values()), rel=1e-10)


ISSUE_14 = RunConfig(
    strategy="interleaved",
    chunks=2,
    devices=2,
    microbatches=8,
    layers="64,64,16,256,4,256,4",
    batch=64,
    device_flops=1e9,
    link_latency=0.0,
    link_bandwidth=1e18,
    compute=False,
    reference=False,
)


def test_issue_14_interleaved_balanced_is_the_fastest_partition_not_the_slowest_stage():
    every = simulate_every_partition(ISSUE_14, 6, 4)
    # The issue's figures: the old stage-bottleneck optimum 1,1,1,3 at 3162 µs, uniform 2,2,1,1 at 2998,
    # 1,2,2,1 at 2851.
    assert [round(every[sizes] * 1e6) for sizes in [(1, 1, 1, 3), (2, 2, 1, 1), (1, 2, 2, 1)]] == [3162, 2998, 2851]
    balanced = run(replace(ISSUE_14, partition="balanced"))
    assert balanced.metrics.makespan == pytest.approx(min(every.values()), rel=1e-10)
    assert balanced.metrics.makespan < every[(1, 2, 2, 1)]
    # The objective: with rows 8 a layer's forward is 2·8·in·out / 1e9 s, F + B three times that; the
    # 6 layers sum to 3 · 196.608 µs and split perfectly over 2 devices, 294.912 µs each.
    assert balanced.balance.simulated.optimum != [1, 1, 1, 3]
    optimum = evaluate(model_graph(ISSUE_14)[0], balanced.balance.simulated.optimum, Placement.of(balanced.schedule))
    assert optimum.bottleneck == pytest.approx(294.912e-6, rel=1e-12)
    old = evaluate(model_graph(ISSUE_14)[0], [1, 1, 1, 3], Placement.of(balanced.schedule))
    assert old.device_loads == pytest.approx([393.216e-6, 196.608e-6], rel=1e-12)


@pytest.mark.parametrize("name", ["zb-v", "dualpipev"])
def test_issue_14_v_schedules_balanced_is_the_fastest_partition(name):
    config = replace(ISSUE_14, strategy=name, chunks=None)
    every = simulate_every_partition(config, 6, 4)
    balanced = run(replace(config, partition="balanced"))
    assert balanced.metrics.makespan == pytest.approx(min(every.values()), rel=1e-10)
    assert balanced.metrics.makespan <= run(config).metrics.makespan


def test_with_few_runs_the_search_still_beats_uniform_and_the_optimum(monkeypatch):
    """Past the budget for every partition: the optimum, uniform, then one-cut moves while runs remain."""
    config = RunConfig(
        strategy="zb-v",
        devices=4,
        microbatches=8,
        layers="64,16,256x6,4,64,256,4,16,64,32,8",
        batch=64,
        device_flops=1e9,
        link_bandwidth=1e9,
        link_latency=1e-6,
        compute=False,
        reference=False,
    )
    actions = sum(len(device) for device in plan("zb-v", 4, 8).actions)
    monkeypatch.setattr(pipeline, "SEARCH_ACTIONS", 12 * actions)
    result = run(replace(config, partition="balanced"))
    sims = result.balance.simulated
    assert not sims.exhaustive and sims.candidates <= 12
    uniform_run = run(config)
    optimum_run = run(replace(config, partition=",".join(map(str, sims.optimum))))
    assert result.metrics.makespan == sims.makespan <= min(uniform_run.metrics.makespan, optimum_run.metrics.makespan)
    assert sims.uniform_makespan == uniform_run.metrics.makespan


def test_the_hill_climb_moves_one_cut_at_a_time_while_that_helps():
    # A stand-in step time: the L1 distance of the sizes from 1,1,3,3; from 2,2,2,2 each move can take off 2.
    graph = chain_graph([1] * 8)
    seen = []

    def step(sizes):
        seen.append(sizes)
        return False, float(sum(abs(a - b) for a, b in zip(sizes, [1, 1, 3, 3])))

    result = fastest(graph, Placement.one_per_device(4), balance(graph, 4), step, runs=30)
    assert result.sizes == [1, 1, 3, 3] and result.simulated.makespan == 0.0
    assert not result.simulated.exhaustive and len(seen) == result.simulated.candidates <= 30
    assert seen[:1] == [[2, 2, 2, 2]]  # the optimum is uniform here: simulated once


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_the_milp_finds_the_brute_force_optimum(data):
    """Forced past enumeration: HiGHS on interleaved and V placements, with and without a memory cap."""
    name = data.draw(st.sampled_from(["interleaved", "zb-v", "dualpipev"]))
    devices = data.draw(st.integers(2, 3))
    schedule = plan(name, devices, 2 * devices)
    n = data.draw(st.integers(schedule.num_stages, 8))
    graph = chain_graph(data.draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)))
    for u, v in graph.edges:
        graph.edges[u, v]["bytes"] = data.draw(st.integers(0, 30))
    for i in graph.nodes:
        graph.nodes[i]["memory"] = data.draw(st.integers(0, 10))
        graph.nodes[i]["output_bytes"] = data.draw(st.integers(0, 4))
    cap = data.draw(st.none() | st.integers(10, 40))
    placed = stated_devices(name, devices, 2 * devices, schedule.num_stages)
    expected = brute_force(graph, schedule.num_stages, bandwidth=4.0, cap=cap, devices=devices, placed=placed)
    limit = bottleneck.ENUMERATE_LIMIT
    bottleneck.ENUMERATE_LIMIT = 0
    try:
        if math.isinf(expected):
            with pytest.raises(ConfigError, match="fits a device memory"):
                balance(graph, Placement.of(schedule), link_bandwidth=4.0, memory_cap=cap)
            return
        result = balance(graph, Placement.of(schedule), link_bandwidth=4.0, memory_cap=cap)
    finally:
        bottleneck.ENUMERATE_LIMIT = limit
    assert result.status == "optimal"
    assert result.bottleneck == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert cap is None or max(result.stage_memory) <= cap


def test_a_node_limit_that_stops_highs_is_reported_with_its_gap():
    widths = [
        64,
        64,
        256,
        1024,
        64,
        64,
        1024,
        64,
        1024,
        512,
        512,
        1024,
        512,
        256,
        1024,
        512,
        1024,
        256,
        256,
        1024,
        64,
        256,
        1024,
        64,
        1024,
        512,
        64,
        64,
        1024,
        256,
        256,
        256,
        64,
    ]  # 32 layers, 8 stages: 2.6 million ways
    graph = layer_graph(layers_from_widths(widths), rows=8, rows_held=64)
    result = balance(graph, Placement.of(plan("interleaved", 4, 8)), link_bandwidth=1e11, node_limit=1)
    assert result.status.startswith("the best HiGHS found within 1 node or") and "of optimal" in result.status


def test_balance_cli_shows_the_simulated_step_of_balanced_against_uniform(capsys):
    argv = [
        "balance",
        "--strategy",
        "interleaved",
        "--chunks",
        "2",
        "--devices",
        "2",
        "--microbatches",
        "8",
        "--layers",
        "64,64,16,256,4,256,4",
        "--batch",
        "64",
        "--device-flops",
        "1e9",
        "--link-latency",
        "0",
        "--link-bandwidth",
        "1e18",
    ]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    every = simulate_every_partition(ISSUE_14, 6, 4)
    sims = data["simulated"]
    assert sims["makespan"] == pytest.approx(min(every.values()), rel=1e-10)
    assert sims["uniform_makespan"] == every[(2, 2, 1, 1)]
    assert sims["exhaustive"] and sims["candidates"] == 10
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "simulated step of interleaved (8 micro-batches, cost flops): 2.75 ms balanced, 3.00 ms uniform" in out


@pytest.mark.parametrize(
    "steps, chosen",
    [
        # equal to ten digits: the objective decides (1,3 has bottleneck 3, uniform 2,2 has 4), not round-off
        ({(1, 3): 1.0, (2, 2): 1.0, (3, 1): 1.0 - 2e-16}, [1, 3]),
        # but never slower than uniform, not even by round-off
        ({(1, 3): 1.0 + 2e-16, (2, 2): 1.0, (3, 1): 2.0}, [2, 2]),
        # running out of memory counts as slower than any time
        ({(1, 3): 0.5, (2, 2): 1.0, (3, 1): 2.0}, [2, 2]),
    ],
)
def test_round_off_never_picks_and_uniform_is_never_beaten_by_a_slower_one(steps, chosen):
    graph = chain_graph([3, 1, 1, 1])

    def step(sizes):
        return (tuple(sizes) == (1, 3) and steps[(1, 3)] == 0.5), steps[tuple(sizes)]

    result = fastest(graph, Placement.one_per_device(2), balance(graph, 2), step, runs=10)
    assert result.sizes == chosen and result.simulated.exhaustive and result.simulated.optimum == [1, 3]


def test_candidates_that_run_out_of_memory_in_simulation_rank_last():
    # Interleaved holds two stages per device, so the stage cap does not apply; the simulation's memory check decides.
    config = RunConfig(
        strategy="interleaved",
        layers="32,64x6,8",
        batch=16,
        devices=2,
        microbatches=4,
        device_flops=1e9,
        compute=False,
        reference=False,
    )
    every = {
        sizes: run(replace(config, partition=",".join(map(str, sizes)))) for sizes in map(tuple, compositions(7, 4))
    }
    cap = 230_000  # below uniform's peak and the fastest partition's, above the leanest one's
    fitting = [r.metrics.makespan for r in every.values() if max(r.metrics.peak_memory_bytes) <= cap]
    assert max(every[(2, 2, 2, 1)].metrics.peak_memory_bytes) > cap and fitting
    assert min(fitting) > min(r.metrics.makespan for r in every.values())
    balanced = run(replace(config, partition="balanced", device_memory=cap))  # would raise if it ran out
    assert max(balanced.metrics.peak_memory_bytes) <= cap
    assert balanced.metrics.makespan == pytest.approx(min(fitting), rel=1e-10)
