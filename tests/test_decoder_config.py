"""Decoder configs from Hugging Face-style files and presets, and every bad input by its message."""

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched.decoder.config import DecoderConfig, load_config, preset, preset_names, preset_source
from pipesched.errors import ConfigError

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 172,
    "vocab_size": 100,
    "max_position_embeddings": 32,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
GPT2 = {"n_embd": 48, "n_layer": 3, "n_head": 6, "n_positions": 16, "vocab_size": 50}


def _write(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_a_llama_config_reads_every_key_and_the_family_defaults():
    c = DecoderConfig.from_dict(LLAMA)
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads) == (64, 2, 4, 2)
    assert (c.intermediate_size, c.vocab_size, c.max_positions) == (172, 100, 32)
    assert (c.head_dim, c.kv_size) == (16, 32)
    assert (c.activation, c.position, c.norm, c.bias, c.tie_embeddings) == ("silu", "rotary", "rmsnorm", False, False)


def test_gpt2_keys_read_with_gpt2_defaults():
    c = DecoderConfig.from_dict(GPT2)
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.max_positions) == (48, 3, 6, 6, 16)
    assert c.intermediate_size == 4 * 48  # n_inner defaults to 4 n_embd
    assert (c.activation, c.position, c.norm, c.bias, c.tie_embeddings) == ("gelu", "learned", "layernorm", True, True)


def test_the_same_numbers_under_either_spelling_give_the_same_config():
    hf = {"model_type": "gpt2", "hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 6}
    hf.update({"max_position_embeddings": 16, "vocab_size": 50})
    assert DecoderConfig.from_dict(hf, name="x") == DecoderConfig.from_dict(GPT2, name="x")


def test_every_preset_reads_back_from_a_file_unchanged(tmp_path):
    from pipesched.decoder.config import _presets

    for name in preset_names():
        path = _write(tmp_path, _presets()[name]["config"], f"{name}.json")
        assert DecoderConfig.from_file(path) == DecoderConfig.from_dict(_presets()[name]["config"], name=f"{name}")
        assert load_config(path).hidden_size == preset(name).hidden_size
        assert preset_source(name)
    assert load_config("llama2-70b") == preset("llama2-70b")
    assert preset("llama2-70b").num_kv_heads == 8 and preset("gpt3-175b").tie_embeddings


def test_check_sequence_takes_up_to_the_positions_the_model_has():
    c = DecoderConfig.from_dict(LLAMA, name="small")
    c.check_sequence(32)
    with pytest.raises(ConfigError) as err:
        c.check_sequence(33)
    assert str(err.value) == (
        "sequence length 33 is longer than the 32 positions of small (max_position_embeddings); use at most 32 tokens"
    )
    with pytest.raises(ConfigError, match="sequence length 0 is not a whole number of at least 1"):
        c.check_sequence(0)


def _error(data, **kwargs):
    with pytest.raises(ConfigError) as err:
        DecoderConfig.from_dict(data, **kwargs)
    return str(err.value)


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"num_hidden_layers": None},
            "model config: no 'num_hidden_layers' (or GPT-2's 'n_layer'); add the number of decoder blocks, "
            'e.g. "num_hidden_layers": 32',
        ),
        (
            {"intermediate_size": None},
            "model config: no 'intermediate_size'; add the width of the MLP, e.g. \"intermediate_size\": 11008",
        ),
        (
            {"num_attention_heads": 5},
            "model config: num_attention_heads: 5 does not divide hidden_size 64; "
            "use a number of heads that divides 64",
        ),
        (
            {"num_key_value_heads": 3},
            "model config: num_key_value_heads: 3 does not divide num_attention_heads 4; "
            "use a divisor of 4 (1, 2 or 4)",
        ),
        ({"vocab_size": 0}, "model config: vocab_size: 0 is not a whole number of at least 1"),
        ({"hidden_size": "64"}, 'model config: hidden_size: "64" is not a whole number of at least 1'),
        ({"max_position_embeddings": True}, "model config: max_position_embeddings: true is not a whole number"),
        (
            {"hidden_act": "relu"},
            'model config: hidden_act: "relu" is not an activation pipesched models; '
            "use gelu (or GPT-2's gelu_new) for a GELU MLP, or silu for SwiGLU",
        ),
        (
            {"tie_word_embeddings": "yes"},
            'model config: tie_word_embeddings: "yes" is not true or false; write one of them',
        ),
        (
            {"model_type": "qwen2"},
            'model config: model_type: "qwen2" is not a decoder pipesched models; use one of gpt2, llama, mistral, '
            "or drop model_type to take the defaults of the keys' family",
        ),
        (
            {"n_embd": 32},
            "model config: hidden_size 64 and n_embd 32 disagree; keep one of the two keys",
        ),
        (
            {"head_dim": 8},
            "model config: head_dim: 8 differs from hidden_size / num_attention_heads = 16; pipesched's decoder "
            "has heads of hidden_size / num_attention_heads, so drop head_dim or make it agree",
        ),
        (
            {"attention_bias": True, "mlp_bias": False},
            'model config: attention_bias and mlp_bias are {"attention_bias": true, "mlp_bias": false}; '
            "pipesched's decoder has biases on every linear map or on none, so set both to true or both to false",
        ),
        (
            {"num_attention_heads": 64, "num_key_value_heads": 64},
            "model config: num_attention_heads: 64 heads make heads of odd width 1, which rotary embeddings "
            "cannot rotate in pairs; use a head count that leaves an even width",
        ),
        ({"rms_norm_eps": -1}, "model config: rms_norm_eps: -1 is not a positive finite number"),
    ],
)
def test_bad_values_name_their_key_and_the_fix(change, message):
    data = {k: v for k, v in {**LLAMA, **change}.items() if v is not None}
    assert _error(data).startswith(message)


def test_a_gpt2_config_names_the_gpt2_key():
    assert _error({**GPT2, "n_head": 5}, where="gpt2.json") == (
        "gpt2.json: n_head: 5 does not divide n_embd 48; use a number of heads that divides 48"
    )
    assert _error({k: v for k, v in GPT2.items() if k != "n_positions"}) == (
        "model config: no 'max_position_embeddings' (or GPT-2's 'n_positions'); add the longest sequence the "
        'model takes, e.g. "max_position_embeddings": 4096'
    )


def test_a_bad_width_is_named_before_the_mlp_width_it_would_imply():
    assert _error({**GPT2, "n_embd": "48"}) == 'model config: n_embd: "48" is not a whole number of at least 1'


def test_the_embedding_refuses_a_sequence_longer_than_its_positions():
    from pipesched.decoder.layers import Embedding

    layer = Embedding(DecoderConfig.from_dict(GPT2, name="gpt"))
    with pytest.raises(ConfigError, match="sequence length 17 is longer than the 16 positions of gpt"):
        layer.forward(layer.init(np.random.default_rng(0)), [[0] * 17])


def test_a_missing_file_a_folder_bad_json_and_a_json_list_are_refused(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert str(err.value) == (
        f"model config file {missing!r} does not exist; give the path to a config.json or a preset name "
        "(bloom-176b, gpt3-175b, llama2-70b, llama2-7b, llama3-8b, tiny-gpt)"
    )
    with pytest.raises(ConfigError, match=r"is a folder; give the path to its config.json"):
        DecoderConfig.from_file(str(tmp_path))
    broken = _write(tmp_path, '{"hidden_size": 64,')
    with pytest.raises(ConfigError, match=re.escape(f"{broken}: not valid JSON (") + r".*\); fix the syntax"):
        load_config(broken)
    listed = _write(tmp_path, "[1, 2]", "list.json")
    with pytest.raises(ConfigError) as err:
        load_config(listed)
    assert str(err.value) == (
        f'{listed}: holds a JSON array, not an object of config keys; write {{"hidden_size": ..., ...}} '
        "as in a Hugging Face config.json"
    )


def test_an_unknown_preset_lists_the_known_ones():
    for ask in (lambda: preset("gpt4"), lambda: load_config("gpt4")):
        with pytest.raises(ConfigError) as err:
            ask()
        assert str(err.value) == (
            "unknown model preset 'gpt4'; use one of bloom-176b, gpt3-175b, llama2-70b, llama2-7b, llama3-8b, "
            "tiny-gpt, or the path to a config.json"
        )


def test_a_config_built_in_python_is_checked_by_its_field_names():
    with pytest.raises(ConfigError) as err:
        DecoderConfig(64, 2, 4, 3, 128, 100, 32, False, name="mine")
    assert str(err.value) == (
        "DecoderConfig 'mine': num_kv_heads: 3 does not divide num_heads 4; use a divisor of 4 (1, 2 or 4)"
    )
    with pytest.raises(
        ConfigError, match="DecoderConfig 'decoder': norm: \"batchnorm\" is not one of layernorm, rmsnorm"
    ):
        DecoderConfig(64, 2, 4, 4, 128, 100, 32, False, norm="batchnorm")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 96), st.integers(1, 16), st.integers(1, 16))
def test_heads_are_accepted_exactly_when_they_divide(hidden, heads, kv_heads):
    """The invariant: a config reads iff heads divide hidden and kv heads divide heads (learned positions)."""
    data = {**GPT2, "n_embd": hidden, "n_head": heads, "num_key_value_heads": kv_heads}
    if hidden % heads == 0 and heads % kv_heads == 0:
        c = DecoderConfig.from_dict(data)
        assert c.head_dim * c.num_heads == hidden and c.kv_size * (heads // kv_heads) == hidden
    else:
        key = "n_head" if hidden % heads else "num_key_value_heads"
        assert _error(data).startswith(f"model config: {key}: ")


def test_keys_pipesched_does_not_model_are_ignored_and_null_means_the_default():
    """GPT-2's own config.json writes n_inner null and carries dropout, task and tokenizer keys."""
    data = {**GPT2, "n_inner": None, "resid_pdrop": 0.1, "architectures": ["GPT2LMHeadModel"]}
    data["task_specific_params"] = {"text-generation": {"do_sample": True, "max_length": 50}}
    c = DecoderConfig.from_dict(data)
    assert (c.intermediate_size, c.norm_eps, c.activation) == (4 * 48, 1e-5, "gelu")


def test_hugging_face_activation_names_are_for_files_only():
    assert DecoderConfig.from_dict({**LLAMA, "hidden_act": "swish"}).activation == "silu"
    with pytest.raises(ConfigError) as err:
        DecoderConfig(64, 2, 4, 4, 128, 100, 32, False, activation="gelu_new")
    assert str(err.value) == "DecoderConfig 'decoder': activation: \"gelu_new\" is not one of gelu, silu"
