"""Training precision and optimizer state: every counted byte scales with the dtype, the optimizer's state
is its closed form, the real-array and shape-only counts agree in every dtype, and bad values are one sentence."""

import json
import pathlib
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, available_strategies, run
from pipesched.cli import main
from pipesched.errors import ConfigError, OutOfMemoryError
from pipesched.formulas import CLOSED_FORMS
from pipesched.report.study import load_study
from pipesched.sweep import parse_sweep, run_point
from pipesched.trace import to_chrome
from pipesched.units import format_bytes

# Bytes per element, by the formats' definitions: bfloat16 and IEEE 754 binary16, binary32, binary64.
SIZES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}
# Optimizer state per parameter. SGD keeps none. Adam keeps two moments (Kingma and Ba 2015); with 16-bit
# weights, mixed precision adds an fp32 master copy and keeps the moments in fp32: 4 + 4 + 4 = 12 bytes
# (Rajbhandari et al. 2020, ZeRO, section 3.1); with fp32 or fp64 weights, two moments of that size.
STATE = {
    ("sgd", "bf16"): 0,
    ("sgd", "fp16"): 0,
    ("sgd", "fp32"): 0,
    ("sgd", "fp64"): 0,
    ("adam", "bf16"): 12,
    ("adam", "fp16"): 12,
    ("adam", "fp32"): 8,
    ("adam", "fp64"): 16,
}
PIPELINES = sorted(set(available_strategies()) - {"dp"})  # every built-in pipeline
DTYPE = st.sampled_from(sorted(SIZES))
OPTIMIZER = st.sampled_from(["sgd", "adam"])


def _parameters(widths):
    """Per layer, its weights and biases: (in + 1) x out."""
    return [(w_in + 1) * w_out for w_in, w_out in zip(widths, widths[1:])]


def _device_parameters(result, widths):
    """Per device, the parameters of every stage it runs (a replica holds its own)."""
    per_layer = _parameters(widths)
    placement = result.schedule.placement()
    return [
        sum(sum(per_layer[i] for i in result.partition[s]) for s, ds in placement.items() if d in ds)
        for d in range(result.config.devices)
    ]


@settings(max_examples=25)
@given(
    strategy=st.sampled_from(PIPELINES),
    widths=st.lists(st.integers(1, 9), min_size=5, max_size=7),
    devices=st.integers(1, 2),
    dtype=DTYPE,
    remat=st.sampled_from(["never", "always"]),
)
def test_every_byte_of_a_timeline_is_the_fp64_runs_scaled_by_the_dtype(strategy, widths, devices, dtype, remat):
    # Under unit cost the times do not depend on bytes, so the two timelines are sample for sample the same
    # instants, and every role's bytes are elements x 8 in one and elements x size in the other.
    fewest = 2 * devices if strategy in ("dualpipev", "dualpipe", "chimera") else 1
    microbatches = max(fewest, 3)
    assume(CLOSED_FORMS[strategy].runs(devices, microbatches, 1))  # DualPipe, Chimera: K even
    config = RunConfig(
        strategy=strategy,
        layers=",".join(map(str, widths)),
        batch=6,
        devices=devices,
        microbatches=microbatches,
        cost="unit",
        remat=remat,
        compute=False,
    )
    wide, narrow = run(config), run(replace(config, dtype=dtype))
    size = SIZES[dtype]
    for a, b in zip(wide.trace.memory, narrow.trace.memory, strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.time == y.time
            assert [v * size for v in x[1:]] == [v * 8 for v in y[1:]]
    assert [p * size for p in wide.metrics.peak_activation_bytes] == [
        p * 8 for p in narrow.metrics.peak_activation_bytes
    ]
    assert [p * size for p in wide.metrics.peak_memory_bytes] == [p * 8 for p in narrow.metrics.peak_memory_bytes]
    assert [t.nbytes * size for t in wide.trace.transfers] == [t.nbytes * 8 for t in narrow.trace.transfers]
    assert wide.metrics.makespan == narrow.metrics.makespan


@pytest.mark.parametrize("dtype", sorted(SIZES))
def test_link_bytes_and_their_times_under_the_flops_model(dtype):
    # Each boundary of the seed model sends rows x 256 activations forward and as many gradients back:
    # 4 rows (32 / 8 micro-batches) x 256 x size bytes, each busy on its link for bytes / bandwidth.
    bandwidth = 1e9
    config = RunConfig(strategy="1f1b", compute=False, link_bandwidth=bandwidth, link_latency=1e-6, dtype=dtype)
    result = run(config)
    fp64 = {
        (t.src, t.dst, t.stage, t.op, t.microbatch): t.nbytes
        for t in run(replace(config, dtype="fp64")).trace.transfers
    }
    assert len(result.trace.transfers) == len(fp64) == 2 * 3 * 8
    for t in result.trace.transfers:
        assert t.nbytes == 4 * 256 * SIZES[dtype]
        assert t.nbytes * 8 == fp64[(t.src, t.dst, t.stage, t.op, t.microbatch)] * SIZES[dtype]
        assert t.end - t.start == pytest.approx(t.nbytes / bandwidth, rel=1e-9)
        assert t.arrival - t.end == pytest.approx(1e-6, rel=1e-9)


@pytest.mark.parametrize("dtype", sorted(SIZES))
def test_an_all_reduce_chunk_is_a_share_of_the_gradient_bytes_in_the_dtype(dtype):
    widths = [128] + [256] * 10 + [10]  # the seed model on K=4 replicas: 627,722 parameters, 4 does not divide
    result = run(RunConfig(strategy="dp", compute=False, dtype=dtype))
    total = sum(_parameters(widths))
    chunks = {t.nbytes for t in result.trace.transfers if t.op == "allreduce"}
    assert chunks == {-(-total * SIZES[dtype] // 4)}  # 1/R of the bytes, rounded up to a byte


@pytest.mark.parametrize("strategy", ["gpipe", "interleaved", "zb-v", "dp"])
@pytest.mark.parametrize("dtype", sorted(SIZES))
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_state_is_its_closed_form_on_every_device_all_step(strategy, dtype, optimizer):
    widths = [16, 24, 24, 24, 24, 24, 24, 24, 8]
    result = run(
        RunConfig(
            strategy=strategy,
            layers=",".join(map(str, widths)),
            batch=8,
            devices=2,
            microbatches=4,
            compute=False,
            dtype=dtype,
            optimizer=optimizer,
        )
    )
    counts = _device_parameters(result, widths)
    state = STATE[(optimizer, dtype)]
    for d, samples in enumerate(result.trace.memory):
        assert {s.optimizer for s in samples} == {state * counts[d]}  # from the step's start to its end
        assert {s.params for s in samples} == {SIZES[dtype] * counts[d]}
    for d, roles in enumerate(result.metrics.memory_by_role):
        assert roles["optimizer"] == state * counts[d] and roles["parameters"] == SIZES[dtype] * counts[d]
        assert sum(roles.values()) == result.metrics.peak_memory_bytes[d]
    if strategy == "dp":  # every replica holds the whole model and its state
        assert counts == [sum(_parameters(widths))] * 2


@settings(max_examples=30)
@given(
    strategy=st.sampled_from([*PIPELINES, "dp"]),
    widths=st.lists(st.integers(1, 9), min_size=7, max_size=8),
    devices=st.integers(1, 2),
    batch=st.integers(4, 8),
    dtype=DTYPE,
    optimizer=OPTIMIZER,
    data=st.data(),
)
def test_real_arrays_and_shapes_count_the_same_bytes_in_every_dtype(
    strategy, widths, devices, batch, dtype, optimizer, data
):
    fewest = {"dp": devices, "dualpipev": 2 * devices, "dualpipe": 2 * devices}.get(strategy, 1)
    microbatches = data.draw(st.integers(fewest, max(fewest, batch)))
    assume(CLOSED_FORMS[strategy].runs(devices, microbatches, 1))  # DualPipe, Chimera: K even; rounds
    base = RunConfig(
        strategy=strategy,
        devices=devices,
        microbatches=microbatches,
        batch=batch,
        layers=",".join(map(str, widths)),
        remat=data.draw(st.sampled_from(["never", "always", "except_last"])),
        link_bandwidth=data.draw(st.sampled_from([1e3, 1e9])),  # slow links: bytes move the times too
        dtype=dtype,
        optimizer=optimizer,
    )
    real, shapes = run(base), run(replace(base, compute=False))
    assert real.trace.memory == shapes.trace.memory
    assert real.trace.transfers == shapes.trace.transfers
    assert real.metrics.memory_by_role == shapes.metrics.memory_by_role
    assert real.metrics.peak_memory_bytes == shapes.metrics.peak_memory_bytes
    assert real.grad_rel_err < 1e-10  # the dtype changes what is counted, never what NumPy computes


@pytest.mark.parametrize("strategy", ["gpipe", "zb-h1", "dp"])
def test_memory_by_role_sums_to_each_devices_peak_and_is_a_state_it_held(capsys, strategy):
    status = main(["run", "--strategy", strategy, "--dtype", "bf16", "--optimizer", "adam", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert status == 0
    assert (data["dtype"], data["optimizer"], data["parameters"]) == (
        "bf16",
        "adam",
        sum(_parameters([128] + [256] * 10 + [10])),
    )
    assert len(data["memory_by_role"]) == data["devices"]
    for roles, peak in zip(data["memory_by_role"], data["peak_memory_bytes"]):
        assert list(roles) == ["parameters", "gradients", "optimizer", "activations", "deferred", "buffers"]
        assert sum(roles.values()) == peak
        assert roles["optimizer"] == 6 * roles["parameters"]  # 12 bytes of state per 2-byte parameter


def test_the_default_is_the_mlps_own_fp64_and_sgd_and_changes_no_number():
    default = run(RunConfig())
    explicit = run(RunConfig(dtype="fp64", optimizer="sgd"))
    assert default.to_dict() == explicit.to_dict()
    data = default.to_dict()
    assert (data["dtype"], data["optimizer"]) == ("fp64", "sgd")
    assert all(roles["optimizer"] == 0 for roles in data["memory_by_role"])
    # the bytes every earlier version counted: float64 elements, 8 bytes each (peak of the first device:
    # parameters and gradients of layers 0-2, 8 micro-batches of 4 rows keeping 128 + 256 + 256 inputs
    # and the 256 outputs of layer 2 for its ReLU mask, and one arrived 4 x 256 gradient)
    weights = sum(_parameters([128, 256, 256, 256])) * 8
    assert data["memory_by_role"][0] == {
        "parameters": weights,
        "gradients": weights,
        "optimizer": 0,
        "activations": 8 * 4 * (128 + 256 + 256 + 256) * 8,
        "deferred": 0,
        "buffers": 4 * 256 * 8,
    }


def test_the_role_shows_in_the_trace_counters_and_the_oom_sentence():
    config = RunConfig(strategy="1f1b", compute=False, dtype="fp32", optimizer="adam")
    result = run(config)
    counters = [e for e in to_chrome(result.trace)["traceEvents"] if e["ph"] == "C" and e["tid"] == 1]
    weights = sum(_parameters([256] * 4))  # device 1 runs layers 3-5
    assert {e["args"]["optimizer"] for e in counters} == {8 * weights}
    cap = result.metrics.peak_memory_bytes[1] - 1
    with pytest.raises(OutOfMemoryError) as caught:
        run(replace(config, device_memory=cap))
    assert f"optimizer state {format_bytes(8 * weights)}" in str(caught.value)
    with pytest.raises(OutOfMemoryError, match="the weights and their optimizer state alone do not fit"):
        run(replace(config, device_memory=12 * weights - 1))  # 4 + 8 bytes per parameter from the start


def test_train_json_and_balance_take_the_flags(capsys):
    assert main(["train", "--steps", "2", "--optimizer", "adam", "--lr", "0.001", "--dtype", "bf16", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)
    assert [s["optimizer"] for s in steps] == ["adam", "adam"] and steps[1]["loss"] < steps[0]["loss"]
    # the balancer's stage memory is in the run's precision, optimizer state included; on GPU-class devices
    # and links (the flops model's own defaults, given as flags: the MLP's default machine is CPU-class)
    gpu = ["--device-flops", "1e14", "--link-bandwidth", "1e11", "--link-latency", "5e-6"]
    assert main(["balance", "--dtype", "bf16", "--optimizer", "adam", "--json", *gpu]) == 0
    bf16 = json.loads(capsys.readouterr().out)
    assert main(["balance", "--json", *gpu]) == 0
    fp64 = json.loads(capsys.readouterr().out)
    assert bf16["sizes"] == fp64["sizes"] == [3, 2, 3, 3]
    per_layer = _parameters([128] + [256] * 10 + [10])
    stage_parameters = [sum(per_layer[0:3]), sum(per_layer[3:5]), sum(per_layer[5:8]), sum(per_layer[8:11])]
    for narrow, wide, params in zip(bf16["stage_memory"], fp64["stage_memory"], stage_parameters, strict=True):
        # fp64: 8 bytes of weights and 8 of gradients per parameter, the rest activations; bf16 with Adam:
        # a quarter of each, and 12 bytes of state per parameter
        assert narrow == (wide - 16 * params) // 4 + (2 + 2 + 12) * params


DTYPE_ERROR = "--dtype {!r} is unknown; use one of bf16, fp16, fp32, fp64"
OPTIMIZER_ERROR = "--optimizer {!r} is unknown; use one of sgd, adam"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--dtype", "int8"], DTYPE_ERROR.format("int8")),
        (["run", "--optimizer", "lion"], OPTIMIZER_ERROR.format("lion")),
        (["compare", "--dtype", "fp8"], DTYPE_ERROR.format("fp8")),  # once, not once per strategy
        (["train", "--optimizer", "lion"], OPTIMIZER_ERROR.format("lion")),
        (["balance", "--dtype", "int8"], DTYPE_ERROR.format("int8")),
        (["balance", "--costs", "1,2", "--optimizer", "lion"], OPTIMIZER_ERROR.format("lion")),
    ],
)
def test_a_bad_dtype_or_optimizer_is_one_sentence_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert capsys.readouterr() == ("", f"pipesched: error: {message}\n")


def test_a_study_and_a_sweep_take_the_dtype(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('[model]\ndtype = "bf16"\noptimizer = "adam"\n')
    config = load_study(str(study)).run_config()
    assert (config.dtype, config.optimizer) == ("bf16", "adam")
    study.write_text('[model]\ndtype = "int8"\n')
    with pytest.raises(ConfigError, match=r"\[model\]\.dtype: \"int8\" is not one of bf16, fp16, fp32, fp64"):
        load_study(str(study))
    sweep = parse_sweep({"model": {"layers": "8x5"}, "axes": {"dtype": ["fp64", "bf16"], "devices": [2]}}, "w.toml")
    points = [run_point(p) for p in sweep.points()]
    assert [p["point"]["dtype"] for p in points] == ["fp64", "bf16"]
    assert points[0]["peak_memory_bytes"] == 4 * points[1]["peak_memory_bytes"]
    with pytest.raises(ConfigError, match=r"w\.toml: \[axes\]\.dtype: 'int8' is unknown; use one of"):
        parse_sweep({"axes": {"dtype": ["int8"]}}, "w.toml")
    with pytest.raises(ConfigError, match=r"w\.toml: \[axes\]\.optimizer: 'lion' is unknown; use one of sgd, adam"):
        parse_sweep({"axes": {"optimizer": ["lion"]}}, "w.toml")


def test_the_readmes_split_of_a_bf16_adam_peak_is_the_closed_form():
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    claim = readme[readme.index("(`--json` splits device 0's") :].split(")", 1)[0]
    # 1F1B's device 0 runs layers 0-2 and at its peak holds K = 4 micro-batches of 32 / 8 = 4 rows, each
    # keeping the inputs of its three layers and the ReLU output that leaves the stage, plus one arrived
    # 4 x 256 gradient; bf16 is 2 bytes an element, mixed-precision Adam 12 bytes a parameter.
    params = sum(_parameters([128, 256, 256, 256]))
    expected = {
        "parameters": 2 * params,
        "gradients": 2 * params,
        "optimizer": 12 * params,
        "activations": 4 * 4 * (128 + 256 + 256 + 256) * 2,
        "deferred": 0,
        "buffers": 4 * 256 * 2,
    }
    for role, value in expected.items():
        assert value == 0 or f"`{role}` {value:,}" in claim, role
    result = run(RunConfig(strategy="1f1b", dtype="bf16", optimizer="adam", compute=False))
    assert result.metrics.memory_by_role[0] == expected
