"""Tensor parallelism (``--tensor-parallel``, ``--sequence-parallel``): memory, time and nodes held to hand counts."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched.cli import main
from pipesched.cost import FlopsCost
from pipesched.decoder.config import DecoderConfig
from pipesched.decoder.model import decoder_layers
from pipesched.decoder.tensor import Split, TensorParallelCost, korthikanti_tp_block_bytes
from pipesched.decoder.workload import CostedLayer, DecoderShapeWorkload
from pipesched.hardware import cost_model
from pipesched.pipeline import RunConfig

# A 2-block GPT-style decoder small enough to count by hand: h 8, 2 heads (MHA), MLP width f 32, vocabulary
# V 16, 8 learned positions, LayerNorm, biases, tied embeddings.
SMALL = {"n_embd": 8, "n_layer": 2, "n_head": 2, "n_inner": 32, "n_positions": 8, "vocab_size": 16}
H, A, F, V, P = 8, 2, 32, 16, 8


def _json(capsys, *argv):
    assert main(["run", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    return str(path)


def test_weights_and_adam_state_of_one_device_of_two_by_hand(capsys, small):
    # T = 2, one stage holding the whole model. Megatron-LM splits every matrix over T (the token table and the
    # output matrix by vocabulary: V/2 = 8 rows each) and the column-parallel biases (q, k, v: 3h; MLP up: f);
    # it keeps the row-parallel biases (attention out, MLP down: 2h) and the norms (2 x 2h) whole, and the
    # learned positions (8 x h) too.
    embedding = (V // 2) * H + P * H  # 64 + 64
    block = (4 * H * H + 2 * H * F) // 2 + (3 * H + F) // 2 + 2 * H + 4 * H  # 384 + 28 + 16 + 32 = 460
    final_norm, output = 2 * H, (V // 2) * H  # the output layer's copy of the tied matrix, as at T = 1
    count = embedding + 2 * block + final_norm + output
    assert count == 1128
    for flags in ([], ["--sequence-parallel"]):  # sequence parallelism splits activations, not weights
        data = _json(capsys, "--model", small, "--devices", "1", "--microbatches", "1", "--batch", "2",
                     "--seq-len", "4", "--tensor-parallel", "2", "--no-compute", *flags)  # fmt: skip
        roles = data["memory_by_role"][0]
        assert roles["parameters"] == roles["gradients"] == 2 * count  # bf16
        assert roles["optimizer"] == 12 * count  # fp32 master weights, momentum, variance
        assert (data["tensor_parallel"], data["sequence_parallel"]) == (2, bool(flags))


@pytest.mark.parametrize("sequence", [False, True])
def test_activations_of_one_device_of_two_against_korthikanti_and_by_hand(small, sequence):
    # b = 2 sequences of s = 4 tokens, t = 8 tokens, bf16 (2 bytes), T = 2.
    from pipesched.decoder.config import load_config

    config = load_config(small)
    b, s, t, T = 2, 4, 8, 2
    # Korthikanti et al. 2022, Table 2, per block in bytes:
    #   no SP: s b h (10 + 24/T + 5 a s / (h T)) = 64 (10 + 12 + 2.5) = 1568
    #   SP:    s b h / T (34 + 5 a s / h)        = 32 (34 + 5)        = 1248
    korthikanti = 1248 if sequence else 1568
    assert korthikanti_tp_block_bytes(s, b, H, A, T, sequence) == korthikanti
    # pipesched keeps no dropout: less the two 1-byte masks of s b h (over T with SP: 128 or 64) and 3 a s^2 b / T
    # bytes of the softmax dropout's mask and output (3 x 2 x 16 x 2 / 2 = 96). Its own tensors: 4 t h elements
    # whole without SP (block input, two norms' inputs and outputs: 256) and t (2h + 2h + 2f) + b a s^2 = 768 + 64
    # over T (q, k, v, context, the MLP's two inner tensors, the softmax): 256 + 416 = 672 elements = 1344 bytes;
    # with SP (256 + 832) / 2 = 544 elements = 1088 bytes.
    block = 1088 if sequence else 1344
    assert block == korthikanti - (64 if sequence else 128) - 96
    split = Split(T, sequence)
    layers = decoder_layers(config)
    assert split.kept_bytes(layers[1], b, s, 2) == block
    # The whole model on one stage after its forward: the token ids (t x 8 bytes, whole), 2 blocks, the final
    # norm's and the output layer's inputs (t h each, over T with SP: 128 or 64 bytes each) and the logits
    # (vocabulary parallel: t V / T = 64 elements, 128 bytes).
    hidden = 64 if sequence else 128
    expected = 8 * t + 2 * block + 2 * hidden + 128
    assert expected == (2496 if sequence else 3136)
    work = DecoderShapeWorkload(layers, (range(len(layers)),), [b], s, 2, 12, split)
    _, held = work.forward(0, 0, None, keep=True)
    assert sum(a.nbytes for a in held.acts) == expected
    # and T = 1 is the undivided count of pipesched.decoder.accounting, unchanged
    # by hand: every tensor whole, 4 t h + t (2h + 2h + 2f) + b a s^2 = 1088 elements (2176 bytes) a block, the
    # final norm's and the output layer's inputs t h each (128 bytes), the logits t V (256 bytes), the ids 64
    whole = DecoderShapeWorkload(layers, (range(len(layers)),), [b], s, 2, 12)
    _, held = whole.forward(0, 0, None, keep=True)
    assert sum(a.nbytes for a in held.acts) == 8 * t + 2 * 2176 + 2 * 128 + t * V * 2 == 4928


def test_a_block_costs_its_flops_over_t_plus_two_collectives_per_pass_by_hand():
    config = DecoderConfig.from_dict(SMALL)
    block = CostedLayer(decoder_layers(config)[1], 4)
    # forward FLOPs of a block on t = 8 tokens (b 2, s 4): 2 t h (h + 2h) + 2 t h^2 + 4 t h f + 4 t s h
    flops = 2 * 8 * H * 3 * H + 2 * 8 * H * H + 4 * 8 * H * F + 4 * 8 * 4 * H
    assert flops == 13312
    base = FlopsCost(device_flops=1e12, link_bandwidth=1e9, link_latency=1e-6)
    # each collective: the activation, 2 x 4 x 8 x 2 bytes = 128, over T = 2; a ring all-reduce is 2 (T-1) steps
    # of latency + 64 bytes / bandwidth, a reduce-scatter or an all-gather (T-1) steps
    allreduce = 2 * (1e-6 + 64 / 1e9)
    half = 1e-6 + 64 / 1e9
    for sequence, collectives in ((False, 2 * allreduce), (True, 2 * (half + half))):
        cost = TensorParallelCost(base, 2, sequence, itemsize=2, bandwidth=1e9, latency=1e-6)
        assert cost.compute_time("F", [block], 2, 1.0) == pytest.approx(flops / 1e12 / 2 + collectives, rel=1e-12)
        assert cost.compute_time("B", [block], 2, 1.0) == pytest.approx(2 * flops / 1e12 / 2 + collectives, rel=1e-12)
        assert cost.compute_time("W", [block], 2, 1.0) == pytest.approx(flops / 1e12 / 2, rel=1e-12)


def test_the_gradient_check_is_unchanged_and_real_memory_is_the_shape_only_count(capsys):
    base = ["--model", "tiny-gpt", "--seq-len", "16", "--batch", "8", "--devices", "2", "--microbatches", "4"]
    whole = _json(capsys, *base)
    for flags in (["--tensor-parallel", "2"], ["--tensor-parallel", "4", "--sequence-parallel", "--strategy", "zb-h1"]):
        real = _json(capsys, *base, *flags)
        shape = _json(capsys, *base, *flags, "--no-compute")
        # NumPy still computes each stage whole: the same gradients, so the same error to the last bit
        assert real["grad_rel_err"] == whole["grad_rel_err"] < 1e-10
        assert real["memory_by_role"] == shape["memory_by_role"] and real["makespan"] == shape["makespan"]
        # and each device holds its share of the weights, by hand: tiny-gpt (h 64, MLP 256, vocabulary 256,
        # 128 learned positions) split 6, 5: the embedding and blocks 0-4, then blocks 5-7, the final norm and
        # the output layer; matrices and column-parallel biases over T, the rest whole (as in the test above)
        t, h, inner, vocab = int(flags[1]), 64, 256, 256
        block = (4 * h * h + 2 * h * inner + 3 * h + inner) // t + 2 * h + 4 * h
        stages = (vocab * h // t + 128 * h + 5 * block, 3 * block + 2 * h + vocab * h // t)
        assert [(m["parameters"], m["optimizer"]) for m in real["memory_by_role"]] == [(2 * p, 12 * p) for p in stages]


def test_representatives_are_global_ranks_d_D_plus_r_times_t_on_nodes_of_8():
    # h100-sxm: 8 GPUs a node. K = 2, D = 2, T = 4: simulated device i = d D + r is global rank 4 i, so node
    # i // 2: devices 0, 1 (pipeline device 0's replicas) on node 0, devices 2, 3 on node 1.
    config = RunConfig(model="tiny-gpt", hardware="h100-sxm", devices=2, data_parallel=2, tensor_parallel=4)
    cost = cost_model(config, "bf16")
    assert not cost.crosses_nodes(0, 1) and not cost.crosses_nodes(2, 3)  # a stage's gradient ring
    assert cost.crosses_nodes(0, 2) and cost.crosses_nodes(1, 3)  # the pipeline's sends


def test_a_run_header_names_the_groups(capsys):
    assert main(["run", "--model", "tiny-gpt", "--seq-len", "16", "--batch", "4", "--devices", "2",
                 "--microbatches", "2", "--tensor-parallel", "2", "--no-compute"]) == 0  # fmt: skip
    assert "each a tensor-parallel group of 2 (4 GPUs in all" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "tiny-gpt", "--tensor-parallel", "0"], "--tensor-parallel 0 is not allowed; use 1"),
        (["--model", "tiny-gpt", "--tensor-parallel", "3"], "--tensor-parallel 3 does not divide --model tiny-gpt's 4"),
        (["--tensor-parallel", "2"], "the seed MLP has no heads to split"),
        (["--model", "tiny-gpt", "--sequence-parallel"], "--sequence-parallel splits activations over a tensor"),
        (
            ["--model", "tiny-gpt", "--seq-len", "15", "--tensor-parallel", "2", "--sequence-parallel"],
            "which does not divide them",
        ),
        (
            ["--model", "llama2-7b", "--no-compute", "--hardware", "h100-sxm", "--tensor-parallel", "16"],
            "--tensor-parallel 16 does not divide the 8 devices of a node",
        ),
        (
            [
                "--model",
                "tiny-gpt",
                "--no-compute",
                "--hardware",
                "h100-sxm",
                "--devices",
                "3",
                "--tensor-parallel",
                "4",
            ],
            "--devices 3 x --data-parallel 1 x --tensor-parallel 4 = 12 devices span more than one node of 8",
        ),
    ],
)
def test_bad_tensor_parallel_runs_are_one_sentence(capsys, argv, message):
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@settings(max_examples=12, deadline=None)
@given(
    strategy=st.sampled_from(["gpipe", "1f1b", "interleaved", "zb-h1"]),
    tensor=st.sampled_from([2, 4]),
    microbatches=st.integers(2, 4),
    sequence=st.booleans(),
)
def test_with_free_links_tensor_parallelism_is_compute_over_t(strategy, tensor, microbatches, sequence):
    # bandwidth 1e30 and latency 0: every collective and send is free, so the makespan under T is the makespan
    # of T = 1 on devices T times as fast
    from pipesched.pipeline import run

    free = RunConfig(model="tiny-gpt", seq_len=16, batch=2 * microbatches, microbatches=microbatches, devices=2,
                     strategy=strategy, compute=False, cost="flops", link_bandwidth=1e30, link_latency=0.0)  # fmt: skip
    split = run(RunConfig(**{**free.__dict__, "tensor_parallel": tensor, "sequence_parallel": sequence,
                             "device_flops": 1e12}))  # fmt: skip
    fast = run(RunConfig(**{**free.__dict__, "device_flops": 1e12 * tensor}))
    assert split.metrics.makespan == pytest.approx(fast.metrics.makespan, rel=1e-9)


LLAMA_GQA = {"model_type": "llama", "hidden_act": "silu", "hidden_size": 8, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 24, "vocab_size": 16,
             "max_position_embeddings": 8}  # fmt: skip


@pytest.mark.parametrize("spec", [SMALL, LLAMA_GQA])
def test_whole_plus_divided_parts_are_the_undivided_accounting(spec):
    # the rule's two parts, each taken at T = 1, add up to pipesched.decoder.accounting's own count of every
    # layer (GPT-style and LLaMA-style with GQA), so no tensor is lost or counted twice by the division
    config = DecoderConfig.from_dict(spec)
    one = Split(1)
    for layer in decoder_layers(config):
        for which, want in (
            ("kept", layer.kept_bytes(2, 4, 2)),
            ("deferred", layer.deferred_bytes(2, 4, 2)),
            ("reused", layer.reused_bytes(2, 4, 2)),
        ):
            assert one._bytes(layer, 2, 4, 2, which) == want, (layer, which)
