"""The balancer against brute force, the seed's 2,2,2,5, a skip-connection graph, and memory caps."""

import itertools
import json
import math

import networkx as nx
import pytest
from hypothesis import given, strategies as st

from pipesched import ConfigError, RunConfig, run
from pipesched.balance import balance, chain_graph, evaluate, layer_graph, profile_layers
from pipesched.cli import main
from pipesched.model import Model, layers_from_widths, parse_layers
from pipesched.partition import uniform


def compositions(n, parts):
    """Every way to cut n layers into ``parts`` non-empty contiguous stages."""
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = (0,) + cuts + (n,)
        yield [b - a for a, b in zip(bounds, bounds[1:])]


def stated_devices(name, devices, microbatches, stages):
    """Per stage, {device: share of its micro-batches}, as each strategy's docstring and the README state it."""
    if name == "interleaved":
        return [{s % devices: 1.0} for s in range(stages)]
    if name in ("zb-v", "dualpipev"):
        return [{s if s < devices else 2 * devices - 1 - s: 1.0} for s in range(stages)]
    if name == "dp":  # device d runs micro-batches d, d+K, d+2K, ...
        return [{d: len(range(d, microbatches, devices)) / microbatches for d in range(devices)}]
    return [{s: 1.0} for s in range(stages)]


def brute_objective(graph, order, sizes, devices, placed, bandwidth):
    """The busiest device or link per micro-batch, straight from the definition, for the brute force.

    ``placed`` is ``stated_devices``'s list; each edge crossing a boundary is
    charged on the link between the boundary's two devices, both ways.
    """
    bounds = list(itertools.accumulate([0] + list(sizes)))
    stage_of = {v: s for s, (a, b) in enumerate(zip(bounds, bounds[1:])) for v in order[a:b]}
    device = [0.0] * devices
    for v in order:
        for d, share in placed[stage_of[v]].items():
            device[d] += share * graph.nodes[v].get("cost", 0.0)
    links = {}
    for boundary in range(len(sizes) - 1):
        (src, _), = placed[boundary].items()
        (dst, _), = placed[boundary + 1].items()
        if src == dst:
            continue
        for u, v, data in graph.edges(data=True):
            if stage_of[u] <= boundary < stage_of[v]:
                for link in ((src, dst), (dst, src)):
                    links[link] = links.get(link, 0.0) + data.get("bytes", 0) / bandwidth
    return max(device + list(links.values()))


def brute_memory(graph, order, start, stop):
    """A stage's memory straight from the definition: its nodes', plus outputs it sends on."""
    inside, after = set(order[start:stop]), set(order[stop:])
    memory = sum(graph.nodes[v].get("memory", 0.0) for v in inside)
    return memory + sum(graph.nodes[u].get("output_bytes", 0.0) for u in inside
                        if any(v in after for v in graph.successors(u)))


def brute_force(graph, parts, bandwidth=math.inf, cap=None, devices=None, placed=None):
    """The least objective over every partition whose stages fit ``cap`` (one stage per device by default)."""
    order = list(nx.lexicographical_topological_sort(graph, key=str))
    devices = devices or parts
    placed = placed or [{s: 1.0} for s in range(parts)]
    best = math.inf
    for sizes in compositions(len(order), parts):
        bounds = list(itertools.accumulate([0] + sizes))
        if cap is not None and any(brute_memory(graph, order, a, b) > cap for a, b in zip(bounds, bounds[1:])):
            continue
        best = min(best, brute_objective(graph, order, sizes, devices, placed, bandwidth))
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
        forward = [sum(2 * 4 * layers[i].in_features * layers[i].out_features for i in stage) / 1e9
                   for stage in result.partition]
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
    for stage, estimate, peak in zip(result.partition, result.balance.stage_memory,
                                     result.metrics.peak_activation_bytes):
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
    result = run(RunConfig(layers="16,64,64,64,4", batch=8, devices=2, microbatches=2,
                           partition="balanced", balance_by="measured"))
    assert sum(len(s) for s in result.partition) == 4 and result.grad_rel_err < 1e-12


def test_compare_balances_each_strategy_for_its_own_stages(capsys):
    assert main(["compare", "--strategies", "gpipe,interleaved", "--partition", "balanced", "--layers", "8x13",
                 "--cost", "unit", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [len(r["partition"]) for r in rows] == [4, 8] and all(r["balance"] for r in rows)
