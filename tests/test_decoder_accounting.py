"""The decoder's closed forms against the layers' own counts, published totals, and a hand-worked example."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched.decoder import accounting as acc
from pipesched.decoder.config import DecoderConfig, preset
from pipesched.decoder.layers import Block, Embedding, FinalNorm, Output, cross_entropy
from pipesched.decoder.model import DecoderModel, backward_input, forward, make_tokens
from pipesched.decoder.ops import flop_counter
from pipesched.errors import ConfigError

# -- presets against their published totals ----------------------------------------------


@pytest.mark.parametrize(
    "name,published,shown",
    [
        # meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters (Hugging Face's model.num_parameters(), and
        # KerasHub's llama2_7b_en preset metadata); shown as 6.74B
        ("llama2-7b", 6_738_415_616, 6.74),
        # meta-llama/Llama-2-70b-hf: 68,976,648,192 (model.num_parameters()); shown as 68.98B, "70B" by name
        ("llama2-70b", 68_976_648_192, 68.98),
        # meta-llama/Meta-Llama-3-8B: 8,030,261,248 (model.num_parameters(), and KerasHub's llama3_8b_en); 8.03B
        ("llama3-8b", 8_030_261_248, 8.03),
    ],
)
def test_llama_presets_have_their_published_parameter_counts(name, published, shown):
    count = acc.total_parameters(preset(name))
    assert count == published
    assert abs(count / 1e9 - shown) <= 0.005  # the rounded figure, within its rounding


def test_bloom_preset_count_against_the_model_cards_176_billion():
    """bigscience/bloom: 176,247,271,424 parameters (its model card). BLOOM's own count, by hand from
    train/tr11-176B-ml/README.md (h = 14336, 70 layers, vocabulary padded to 250880, ALiBi, tied):
      blocks     70 x (12 h^2 + 13 h) = 70 x 2,466,437,120 = 172,650,598,400
      tokens     250880 x 14336                              =   3,596,615,680
      two LayerNorms, after the embedding and at the end, 2 x 2h =        57,344
    pipesched reads the preset as GPT-2 keys: a learned position table (2048 x h = 29,360,128) in place
    of ALiBi's none, and no LayerNorm after the embedding (-2h = -28,672).
    """
    h = 14336
    bloom = 70 * (12 * h * h + 13 * h) + 250880 * h + 2 * 2 * h
    assert bloom == 176_247_271_424
    assert acc.total_parameters(preset("bloom-176b")) == bloom + 2048 * h - 2 * h


def test_gpt3_preset_count_and_the_published_175_billion():
    """Brown et al. 2020, Table 2.1: GPT-3 175B, n_params 175.0B, 96 layers, d_model 12288, 96 heads of 128.

    The standard count from the table's own shapes (section 2.1: d_ff = 4 d_model, context 2048,
    GPT-2's 50257-token vocabulary, tied embeddings, biases and LayerNorm):
      blocks    96 x (12 x 12288^2 + 13 x 12288) = 96 x 1,812,099,072 = 173,961,510,912
      tokens    50257 x 12288                                              =     617,558,016
      positions 2048 x 12288                                               =      25,165,824
      final LN  2 x 12288                                                  =          24,576
      total                                                                = 174,604,259,328
    That is 174.6B: the table's "175.0B" is 0.23% more than its shapes give, wider than its printed
    rounding (0.05B), so the test holds the count to the hand total above and to the model's name,
    175B to the nearest billion (Narayanan et al. 2021 give P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12 l h)),
    the same 174.6B).
    """
    count = acc.total_parameters(preset("gpt3-175b"))
    assert count == 174_604_259_328
    L, h, V, s = 96, 12288, 50257, 2048
    assert count == round(12 * L * h * h * (1 + 13 / (12 * h) + (V + s) / (12 * L * h))) + 2 * h
    assert round(count / 1e9) == 175


def test_tiny_gpt_parameter_count_by_hand():
    # 8 blocks of width 64, MLP 256, vocabulary 256, 128 positions, tied, biases, LayerNorm:
    #   a block: q, k, v, o 4 x (64 x 64 + 64) = 16,640; up 64 x 256 + 256 = 16,640;
    #            down 256 x 64 + 64 = 16,448; two LayerNorms 2 x 128 = 256     -> 49,984
    #   8 blocks 399,872 + tokens 256 x 64 = 16,384 + positions 128 x 64 = 8,192 + final LayerNorm 128
    assert acc.total_parameters(preset("tiny-gpt")) == 399_872 + 16_384 + 8_192 + 128 == 424_576


# -- the closed forms against what the layers hold and execute ----------------------------

configs = st.builds(
    lambda kv_heads, group, d, f, vocab, activation, position, norm, bias, tie: DecoderConfig(
        hidden_size=kv_heads * group * d,
        num_layers=2,
        num_heads=kv_heads * group,
        num_kv_heads=kv_heads,
        intermediate_size=f,
        vocab_size=vocab,
        max_positions=9,
        tie_embeddings=tie,
        activation=activation,
        position=position,
        norm=norm,
        bias=bias,
    ),
    st.integers(1, 2),
    st.integers(1, 3),
    st.sampled_from([2, 4]),
    st.integers(1, 12),
    st.integers(2, 17),
    st.sampled_from(["gelu", "silu"]),
    st.sampled_from(["learned", "rotary"]),
    st.sampled_from(["layernorm", "rmsnorm"]),
    st.booleans(),
    st.booleans(),
)


def _counted(layer, params, x, recompute="none"):
    """FLOPs each pass executes, and the bytes it keeps, by the layers' own arrays."""
    with flop_counter() as fwd:
        y, kept = layer.forward(params, x, recompute)
    dy = np.ones_like(y)
    with flop_counter() as bwd_i:
        _, deferred = layer.backward_input(params, kept, dy)
    grads = layer.zeros()
    with flop_counter() as bwd_w:
        layer.backward_weight(params, deferred, grads)
    kept_bytes = sum(a.nbytes for a in kept.values())
    deferred_bytes = sum(a.nbytes for a in deferred.values())
    return acc.PassFlops(fwd.flops, bwd_i.flops, bwd_w.flops), kept_bytes, deferred_bytes, y


@settings(max_examples=25, deadline=None)
@given(configs, st.integers(1, 3), st.integers(1, 9), st.sampled_from(["none", "selective"]))
def test_layer_counts_equal_the_closed_forms(config, batch, seq_len, recompute):
    model = DecoderModel.from_config(config, seed=0)
    # parameters: the arrays the layers hold, each array once
    distinct = {id(a): a.size for params in model.params for a in params.values()}
    assert sum(distinct.values()) == acc.total_parameters(config)
    emb, block, norm, out = model.layers[0], model.layers[1], model.layers[-2], model.layers[-1]
    sizes = [sum(a.size for a in p.values()) for p in model.params]
    assert sizes[0] == acc.embedding_parameters(config)
    assert sizes[1] == sizes[2] == acc.block_parameters(config)
    assert sizes[-2] == acc.final_norm_parameters(config)
    assert sizes[-1] == acc.output_parameters(config) == out.param_count
    # FLOPs and bytes, layer by layer, along one real pass
    ids, _ = make_tokens(config, batch, seq_len)
    x = ids
    for layer, params in zip(
        (emb, block, norm, out), (model.params[0], model.params[1], model.params[-2], model.params[-1])
    ):
        flops, kept, deferred, x = _counted(layer, params, x, recompute)
        assert flops == layer.flops(batch, seq_len, recompute), str(layer)
        assert kept == layer.kept_bytes(batch, seq_len, 8, recompute), str(layer)
        assert deferred == layer.deferred_bytes(batch, seq_len, 8), str(layer)
    assert x.nbytes == acc.loss_kept_bytes(config, batch, seq_len, 8)  # the logits the loss's backward needs
    # full recompute keeps the block's input alone
    assert acc.block_kept_bytes(config, batch, seq_len, 8, "full") == batch * seq_len * config.hidden_size * 8


def test_backward_is_twice_the_forward_split_as_the_layers_split_it():
    config = preset("llama3-8b")
    for flops in (acc.block_flops(config, 2, 128), acc.output_flops(config, 2, 128)):
        assert flops.backward == 2 * flops.forward
    t, s, h = 2 * 128, 128, 4096
    block = acc.block_flops(config, 2, 128)
    assert block.backward_input - block.backward_weight == 2 * 4 * t * s * h  # the core's backward is all I


def test_model_flops_match_narayanan_et_al_for_gpt():
    """72 B s l h^2 (1 + s/(6h) + V/(12 l h)) for the three passes, Narayanan et al. 2021, section 5.1."""
    c = preset("gpt3-175b")
    B, s, L, h, V = 1, 2048, 96, 12288, 50257
    assert acc.model_flops(c, B, s).forward * 3 == 72 * B * s * L * h * h + 12 * B * s * s * L * h + 6 * B * s * h * V
    total = sum(acc.model_flops(c, B, s))
    assert total == pytest.approx(72 * B * s * L * h * h * (1 + s / (6 * h) + V / (12 * L * h)), rel=1e-12)


def test_kept_activations_against_korthikanti_et_al_table_2():
    """GPT block, 16-bit: Korthikanti's 34 sbh + 5 a s^2 b counts dropout, which pipesched's layers do not have."""
    c = preset("gpt3-175b")
    s, b, h, a = 2048, 1, 12288, 96
    # Table 2 for GPT-3 at one sequence: 34 x 2048 x 12288 + 5 x 96 x 2048^2 = 855,638,016 + 2,013,265,920
    assert acc.korthikanti_block_bytes(s, b, h, a) == 2_868_903_936
    assert acc.korthikanti_block_bytes(s, b, h, a, "selective") == 855_638_016
    assert acc.korthikanti_block_bytes(s, b, h, a, "full") == 2 * s * b * h
    # pipesched: no dropout masks (1 byte each after attention and after the MLP: 2 sbh), no softmax dropout
    # (its 1-byte mask and 2-byte output: 3 a s^2 b); the rest is tensor for tensor the same
    assert (
        acc.block_kept_bytes(c, b, s, 2) == acc.korthikanti_block_bytes(s, b, h, a) - 2 * s * b * h - 3 * a * s * s * b
    )
    assert acc.block_kept_bytes(c, b, s, 2, "selective") == 32 * s * b * h
    assert acc.block_kept_bytes(c, b, s, 2, "full") == acc.korthikanti_block_bytes(s, b, h, a, "full")


def test_adam_bytes_per_parameter():
    # ZeRO (Rajbhandari et al. 2020) section 3.1: 2 (fp16 weights) + 2 (fp16 gradients) + 12 (fp32 master
    # weights, momentum, variance) = 16 bytes per parameter with mixed-precision Adam
    assert acc.adam_bytes_per_parameter("bf16") == acc.ParameterBytes(2, 2, 12)
    assert acc.adam_bytes_per_parameter("fp16").total == 16
    assert acc.adam_bytes_per_parameter("fp32") == acc.ParameterBytes(4, 4, 8)  # no master copy
    # LLaMA-2 7B trained in bf16 holds 16 x 6,738,415,616 = 107,814,649,856 bytes of weights and optimizer
    assert acc.adam_bytes_per_parameter("bf16").total * acc.total_parameters(preset("llama2-7b")) == 107_814_649_856
    with pytest.raises(ConfigError, match="dtype 'int8' is not one of bf16, fp16, fp32, fp64"):
        acc.adam_bytes_per_parameter("int8")
    with pytest.raises(ConfigError, match="recompute 'some' is not one of none, selective, full"):
        acc.block_kept_bytes(preset("tiny-gpt"), 1, 4, 2, "some")


# -- a literal hand-worked example ---------------------------------------------------------

HAND = DecoderConfig(
    hidden_size=8,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    intermediate_size=32,
    vocab_size=10,
    max_positions=6,
    tie_embeddings=True,
    activation="gelu",
    position="learned",
    norm="layernorm",
    bias=True,
)


def test_a_two_block_decoder_worked_by_hand():
    """h 8, 2 heads, f 32, V 10, 6 positions, tied, GPT-style; micro-batches of b 1 sequence of s 4 (t 4).

    Parameters:
      embedding   tokens 10 x 8 = 80, positions 6 x 8 = 48                               -> 128
      a block     LayerNorm 16; q, k, v 8 x 24 + 24 = 216; o 8 x 8 + 8 = 72;
                  LayerNorm 16; up 8 x 32 + 32 = 288; down 32 x 8 + 8 = 264            -> 872
      final norm  16;  output 10 x 8 = 80, the embedding's matrix (tied)
      total       128 + 2 x 872 + 16 = 1,888 (the tied matrix once)
    Two stages, [embedding, block 0] and [block 1, final norm, output]:
      parameters held   1,000 and 968 (the last stage holds its copy of the 80 tied)
      bf16 Adam, 16 B   16,000 and 15,488 bytes
    Activations kept per micro-batch, bf16 (2 bytes; token ids 8 bytes):
      embedding   ids 4 x 8                                               =    32 bytes
      a block     t (6h + 2h + 2f) = 4 x 128 = 512 elements + b a s^2 = 32  = 1,088 bytes
      final norm  t h = 32 elements = 64 bytes;  output t h = 64 bytes;  loss t V = 40 elements = 80 bytes
      stage 0     32 + 1,088 = 1,120 bytes;  stage 1  1,088 + 64 + 64 + 80 = 1,296 bytes
    Forward FLOPs: a block 24 t h^2 + 4 t s h = 6,144 + 512 = 6,656; output 2 t h V = 640.
    """
    assert acc.total_parameters(HAND) == 1_888
    model = DecoderModel.from_config(HAND)
    stages = [model.layers[:2], model.layers[2:]]
    held = [sum(layer.param_count for layer in stage) for stage in stages]
    assert held == [1_000, 968]
    assert [n * acc.adam_bytes_per_parameter("bf16").total for n in held] == [16_000, 15_488]
    b, s, bf16 = 1, 4, 2
    kept = [sum(layer.kept_bytes(b, s, bf16) for layer in stage) for stage in stages]
    kept[1] += acc.loss_kept_bytes(HAND, b, s, bf16)
    assert kept == [1_120, 1_296]
    assert acc.block_flops(HAND, b, s).forward == 6_656 and acc.output_flops(HAND, b, s).forward == 640
    # the real float64 arrays: the same elements at 8 bytes (ids stay 8): 32 + 544 x 8; (544 + 32 + 32 + 40) x 8
    ids, labels = make_tokens(HAND, b, s)
    real = []
    x = ids
    for stage, params in ((stages[0], model.params[:2]), (stages[1], model.params[2:])):
        total = 0
        for layer, p in zip(stage, params):
            x, k = layer.forward(p, x)
            total += sum(a.nbytes for a in k.values())
        real.append(total)
    real[1] += x.nbytes  # the logits
    assert real == [32 + 544 * 8, 648 * 8]
    assert cross_entropy(x, labels, 1 / 4)[0] > 0


def test_layer_names_read_as_the_architecture():
    gpt, llama = preset("tiny-gpt"), preset("llama2-70b")
    assert str(Embedding(gpt)) == "Embedding(256x64, learned positions)"
    assert str(Block(llama, index=3)) == "Block 3(8192, 64 heads GQA 8 kv, silu)"
    assert str(FinalNorm(llama)) == "FinalNorm(rmsnorm)"
    assert str(Output(gpt)) == "Output(64->256, tied)"
    assert str(Output(replace(gpt, tie_embeddings=False))) == "Output(64->256)"


@pytest.mark.parametrize("name", ["tiny-gpt", "llama3-8b"])
def test_along_the_whole_chain_no_kept_array_is_counted_twice(name):
    """Layers hand arrays on (a block keeps its input, the previous layer's output): summing the layers'
    closed forms is right only if no array is kept, or left for W, by two layers at once."""
    small = dict(hidden_size=32, num_heads=4, num_kv_heads=min(4, preset(name).num_kv_heads), intermediate_size=48)
    config = replace(preset(name), num_layers=3, vocab_size=40, **small)
    model = DecoderModel.from_config(config)
    b, s = 2, 6
    ids, labels = make_tokens(config, b, s)
    logits, kept = forward(model.layers, model.params, ids)
    distinct = {id(a): a.nbytes for k in kept for a in k.values()}
    assert sum(distinct.values()) == sum(layer.kept_bytes(b, s, 8) for layer in model.layers)
    _, dlogits = cross_entropy(logits, labels, 1 / labels.size)
    _, deferred = backward_input(model.layers, model.params, kept, dlogits)
    distinct = {id(a): a.nbytes for d in deferred for a in d.values()}
    assert sum(distinct.values()) == sum(layer.deferred_bytes(b, s, 8) for layer in model.layers)
