"""``--partition balanced`` and ``pipesched balance`` on a decoder: the layer graph of its chain against brute
force, the simulation, and a case whose partition is worked out by hand from the FLOPs."""

import json
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, run
from pipesched.balance import Placement, balance, evaluate
from pipesched.cli import main
from pipesched.decoder.assemble import chain, resolve
from pipesched.pipeline import model_graph
from test_balance import BIDIRECTIONAL, BUILT_IN, COSTS, brute_force, compositions, plan, stated_devices

#: A GPT-2-shaped decoder: h 16, 2 heads, f = 4h, 8 positions; blocks and vocabulary set per test.
SMALL = {"model_type": "gpt2", "n_embd": 16, "n_head": 2, "n_inner": 64, "n_positions": 8,
         "activation_function": "gelu_new", "tie_word_embeddings": True}  # fmt: skip


def decoder_file(tmp_path, blocks, vocab):
    path = tmp_path / f"decoder-{blocks}-{vocab}.json"
    path.write_text(json.dumps({**SMALL, "n_layer": blocks, "vocab_size": vocab}))
    return str(path)


@pytest.mark.parametrize("cost", sorted(COSTS))
@pytest.mark.parametrize("name", [n for n in BUILT_IN if n != "dp"])  # dp has one stage: nothing to balance
@settings(max_examples=4, deadline=None)
@given(blocks=st.integers(2, 4), vocab=st.sampled_from([16, 512, 4096]), devices=st.integers(2, 3))
def test_the_decoder_objective_is_the_brute_force_minimum(tmp_path_factory, name, cost, blocks, vocab, devices):
    # from a vocabulary smaller than the width to one whose output layer outweighs every block together
    devices = 2 if name in BIDIRECTIONAL else devices  # K even
    path = decoder_file(tmp_path_factory.mktemp("decoder"), blocks, vocab)
    schedule = plan(name, devices, 2 * devices)
    assume(schedule.num_stages <= blocks + 3)  # embedding, blocks, final norm, output: a layer a stage at least
    config = RunConfig(model=path, seq_len=8, batch=8, devices=devices, microbatches=2 * devices, strategy=name,
                       compute=False, **COSTS[cost])  # fmt: skip
    graph, bandwidth = model_graph(config)
    assert graph.number_of_nodes() == blocks + 3
    result = balance(graph, Placement.of(schedule), link_bandwidth=bandwidth)
    placed = stated_devices(name, devices, 2 * devices, schedule.num_stages)
    two_ways = name in BIDIRECTIONAL
    stages = schedule.num_stages
    expected = brute_force(graph, stages, bandwidth, devices=devices, placed=placed, bidirectional=two_ways)
    assert result.bottleneck == pytest.approx(expected, rel=1e-12)


def test_the_decoder_graph_holds_the_closed_forms_and_the_simulated_gpipe_memory(tmp_path):
    # h 16, f 64, s 8, V 520, micro-batches of 2 sequences (t = 16 tokens), 100 TFLOP/s, fp32 with Adam:
    # a block's forward is 24 t h^2 + 4 t s h = 16 (6144 + 512) FLOPs and its backward twice that;
    # the output layer's 2 t h V = 16 * 16640; the embedding and the final norm compute no matrix product.
    path = decoder_file(tmp_path, 5, 520)
    config = RunConfig(model=path, seq_len=8, batch=8, microbatches=4, devices=2, dtype="fp32", optimizer="adam",
                       compute=False, partition="5,3")  # fmt: skip
    graph, _ = model_graph(config)
    costs = [graph.nodes[i]["cost"] for i in range(8)]
    assert costs == pytest.approx([0] + [3 * 16 * 6656 / 1e14] * 5 + [0, 3 * 16 * 16640 / 1e14], rel=1e-12)
    assert all(graph.edges[i, i + 1]["bytes"] == 16 * 16 * 4 for i in range(7))  # t h fp32 activations
    # memory: 4 + 4 bytes of weights and gradients and 8 of Adam's moments per parameter, plus GPipe's
    # activations of the whole batch, which the simulation holds at its peak
    result = run(config)
    layers = chain(resolve(path, 8))
    for stage, peak, roles in zip(
        result.partition, result.metrics.peak_activation_bytes, result.metrics.memory_by_role
    ):
        memory = sum(graph.nodes[i]["memory"] for i in stage)
        assert memory == roles["parameters"] + roles["gradients"] + roles["optimizer"] + peak
        assert roles["parameters"] == 4 * sum(layers[i].param_count for i in stage)


@pytest.mark.parametrize("cost", sorted(COSTS))
@pytest.mark.parametrize("name", ["gpipe", "1f1b", "interleaved", "zb-v"])
def test_balanced_decoder_is_the_fastest_partition_in_simulation(tmp_path, name, cost):
    config = RunConfig(model=decoder_file(tmp_path, 3, 2048), seq_len=8, batch=8, devices=2, microbatches=4,
                       strategy=name, compute=False, reference=False, **COSTS[cost])  # fmt: skip
    stages = plan(name, 2, 4).num_stages
    every = {
        tuple(sizes): run(replace(config, partition=",".join(map(str, sizes)))).metrics.makespan
        for sizes in compositions(6, stages)
    }
    balanced = run(replace(config, partition="balanced"))
    assert balanced.metrics.makespan <= run(config).metrics.makespan  # uniform
    assert balanced.metrics.makespan == pytest.approx(min(every.values()), rel=1e-10)


def test_a_large_vocabulary_leaves_the_last_stage_fewer_blocks_than_uniform(tmp_path):
    # 5 blocks of h 16 (f 64, 2 heads) at s 8: a block's forward is 24 h^2 + 4 s h = 6144 + 512 = 6656 FLOPs
    # per token; the output layer's is 2 h V = 32 V, so V = 520 makes it 16640 = 2.5 blocks.
    # In blocks, the chain costs 0 (embedding), 1, 1, 1, 1, 1, 0 (final norm), 2.5 (output).
    # Uniform on 2 stages is 4,4: embedding + 3 blocks = 3 | 2 blocks + norm + output = 4.5.
    # Cutting after k blocks gives max(k, 5 - k + 2.5): k = 3 -> 4.5, k = 4 -> 4, k = 5 -> 5,
    # so the balanced partition is 5,3: embedding + 4 blocks | 1 block + norm + output.
    # On a device of 1 MFLOP/s with free links GPipe's step is a flow shop of identical micro-batches,
    # 3 (sum F + (M - 1) max F): the same sum, so the smaller max wins there too (4 against 4.5 blocks).
    config = RunConfig(model=decoder_file(tmp_path, 5, 520), seq_len=8, batch=8, devices=2, microbatches=4,
                       compute=False, partition="balanced", device_flops=1e6, link_latency=0.0,
                       link_bandwidth=1e18)  # fmt: skip
    result = run(config)
    assert [len(stage) for stage in result.partition] == [5, 3]
    block = 3 * 16 * 6656 / 1e6  # forward and backward of one micro-batch of 2 sequences (t = 16 tokens)
    assert result.balance.stage_costs == pytest.approx([4 * block, 3.5 * block])
    uniform = evaluate(model_graph(config)[0], [4, 4])
    assert uniform.bottleneck == pytest.approx(4.5 * block)
    forward = block / 3
    assert result.metrics.makespan == pytest.approx(3 * (7.5 * forward + 3 * 4 * forward))
    assert result.balance.simulated.uniform_makespan == pytest.approx(3 * (7.5 * forward + 3 * 4.5 * forward))


def test_balance_cli_names_what_each_stage_of_a_decoder_holds(tmp_path, capsys):
    assert main(["balance", "--model", decoder_file(tmp_path, 5, 520), "--seq-len", "8", "--batch", "8",
                 "--devices", "2", "--microbatches", "4"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "embedding, blocks 0-3 (4)" in out and "block 4, final norm, output" in out
    assert "output layer" in out and "2.50" in out  # 2 h V against a block's 24 h^2 + 4 s h, by hand above
