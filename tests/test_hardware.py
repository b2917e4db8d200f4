"""Hardware presets, nodes and their links, and devices of unequal speed (pipesched.hardware, .topology, .cost)."""

import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, run
from pipesched.cli import main
from pipesched.errors import ConfigError, OutOfMemoryError
from pipesched.hardware import DEFAULT_EFFICIENCY, load_hardware, preset_names
from pipesched.report.study import load_study

# Typed from the vendors' datasheets (not read from pipesched/hardware.toml): dense peak TFLOP/s in bf16,
# fp16, fp32 (full precision: the CUDA cores' FP32 on NVIDIA, as PyTorch leaves TF32 off; FP32 Matrix on AMD)
# and fp64 (Tensor Core / matrix); memory in GB; NVLink/Infinity Fabric GB/s of both directions; the NIC in Gb/s.
# NVIDIA H100/H200 print BF16 and FP16 "with sparsity" only: 1,979 -> dense half.
DATASHEETS = {
    #             bf16     fp16     fp32    fp64   GB   link both ways  NIC Gb/s
    "a100-40gb": (312, 312, 19.5, 19.5, 40, 600, 200),
    "a100-80gb": (312, 312, 19.5, 19.5, 80, 600, 200),
    "h100-sxm": (1979 / 2, 1979 / 2, 67, 67, 80, 900, 400),
    "h200": (1979 / 2, 1979 / 2, 67, 67, 141, 900, 400),
    "mi300x": (1307.4, 1307.4, 163.4, 163.4, 192, 128, 400),
}


@pytest.mark.parametrize("name", sorted(DATASHEETS))
def test_presets_hold_their_datasheet_numbers(name):
    bf16, fp16, fp32, fp64, memory_gb, link_both_ways, nic_gbit = DATASHEETS[name]
    h = load_hardware(name)
    peak = h.peak_flops
    assert (peak.bf16, peak.fp16, peak.fp32, peak.fp64) == pytest.approx(
        (bf16 * 1e12, fp16 * 1e12, fp32 * 1e12, fp64 * 1e12), rel=1e-12
    )
    assert h.memory == memory_gb * 1e9
    assert h.intra_node.bandwidth == pytest.approx(link_both_ways * 1e9 / 2)  # per direction
    assert h.inter_node.bandwidth == pytest.approx(nic_gbit * 1e9 / 8)  # bits to bytes
    assert h.devices_per_node == 8


def test_the_cpu_preset_is_one_core_derived_from_its_clock_and_vector_width():
    # Xeon Platinum 8380: 2.3 GHz base, 2 AVX-512 FMA units, 8 fp64 / 16 fp32 lanes, 2 FLOP per FMA
    cpu = load_hardware("cpu")
    assert cpu.peak_flops.fp64 == pytest.approx(2.3e9 * 2 * 8 * 2)
    assert cpu.peak_flops.fp32 == pytest.approx(2.3e9 * 2 * 16 * 2)
    assert cpu.intra_node.bandwidth == pytest.approx(8 * 3200e6 * 8 / 40)  # 8 DDR4-3200 channels over 40 cores
    assert set(preset_names()) >= {"a100-40gb", "a100-80gb", "h100-sxm", "h200", "mi300x", "cpu"}
    assert DEFAULT_EFFICIENCY == 0.5  # Megatron-LM (SC21) Table 1: 44% to 52% of A100 peak


def test_the_package_presets_pass_the_user_files_check_and_read_the_same_without_it():
    # a run reads the presets without pydantic (issue 20: start-up); here the package's file meets the same
    # pydantic model as a user's file, and every preset's every key must equal what the run reads
    import dataclasses
    from importlib import resources

    from pipesched import hardware
    from pipesched.files import read_toml
    from pipesched.hardware_file import PresetFile
    from pipesched.schema import validate

    path = str(resources.files("pipesched").joinpath("hardware.toml"))
    checked = validate(PresetFile, read_toml(path, "hardware"), "pipesched/hardware.toml")
    assert (checked.efficiency, checked.efficiency_source) == (DEFAULT_EFFICIENCY, hardware.EFFICIENCY_SOURCE)
    assert list(checked.preset) == preset_names()
    for name, model in checked.preset.items():
        assert dataclasses.asdict(load_hardware(name)) == {**model.model_dump(), "name": name}


_RATES = st.floats(1, 1e18)
_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8)  # printable: JSON's is TOML's
_LINKS = st.fixed_dictionaries(
    {"name": _TEXT, "bandwidth": _RATES, "latency": st.floats(0, 1)}, optional={"source": _TEXT}
)


@settings(max_examples=30, deadline=None)
@given(
    keys=st.fixed_dictionaries(
        {
            "peak_flops": st.fixed_dictionaries({d: _RATES for d in ("bf16", "fp16", "fp32", "fp64")}),
            "memory": st.floats(1, 1e15),
            "devices_per_node": st.integers(1, 1024),
            "intra_node": _LINKS,
            "inter_node": _LINKS,
        },
        optional={k: _TEXT for k in ("description", "source", "fp32_kind")},
    )
)
def test_a_users_hardware_file_reads_back_as_written(tmp_path_factory, keys):
    # a user's file is checked by its pydantic model, then held by the run's plain Hardware: every key as written
    import dataclasses
    import json

    def tables(table: dict, prefix: str = "") -> str:  # JSON's strings and numbers are TOML's too
        head = f"[{prefix[:-1]}]\n" if prefix else ""
        plain = "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items() if not isinstance(v, dict))
        return head + plain + "".join(tables(v, f"{prefix}{k}.") for k, v in table.items() if isinstance(v, dict))

    path = _write(tmp_path_factory.mktemp("hw"), tables(keys))
    expected = {"description": "", "source": "", "fp32_kind": "", **keys, "name": path}
    for link in ("intra_node", "inter_node"):
        expected[link] = {"source": "", **keys[link]}
    assert dataclasses.asdict(load_hardware(path)) == expected


def test_the_seed_mlp_runs_on_the_cpu_preset_by_default():
    result = run(RunConfig(compute=False))
    # stage 0 is layers 128->256, 256->256, 256->256 on micro-batches of 4 rows, at 73.6 GFLOP/s x 0.5
    flops = 2 * 4 * (128 * 256 + 256 * 256 + 256 * 256)
    first = next(s for s in result.trace.spans if s.name == "0F0")
    assert first.end - first.start == pytest.approx(flops / (73.6e9 * 0.5), rel=1e-12)
    assert result.config.device_memory is None  # no memory limit unless a preset is named
    assert 0.27 < result.metrics.bubble_fraction < 0.5  # compute-bound: near the textbook 3/11, not 0.99


MINE = """\
description = "a made-up machine whose times come out round"
memory = 1e9
devices_per_node = 2
[peak_flops]
bf16 = 64
fp16 = 64
fp32 = 64
fp64 = 64
[intra_node]
name = "fast"
bandwidth = 32
latency = 0.5
[inter_node]
name = "slow"
bandwidth = 16
latency = 1
"""


def _write(tmp_path, text, name="mine.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_sends_inside_a_node_and_across_nodes_take_their_links_times(tmp_path):
    # K=4 stages of one 4x4 layer, GPipe, one micro-batch of one row, devices 0,1 on node 0 and 2,3 on node 1.
    # F = 2*1*4*4 = 32 FLOP at 64 x 0.5 = 32 FLOP/s: 1 s; B = 2 s. A message is 1 x 4 float64 = 32 bytes:
    # inside a node 32/32 = 1 s busy + 0.5 s latency; across nodes 32/16 = 2 s busy + 1 s latency.
    # d0 F 0-1; 0->1 1-2, lands 2.5; d1 F 2.5-3.5; 1->2 3.5-5.5, lands 6.5; d2 F 6.5-7.5; 2->3 7.5-8.5, lands 9;
    # d3 F 9-10, B 10-12; 3->2 12-13, lands 13.5; d2 B 13.5-15.5; 2->1 15.5-17.5, lands 18.5;
    # d1 B 18.5-20.5; 1->0 20.5-21.5, lands 22; d0 B 22-24.
    config = RunConfig(
        layers="4,4,4,4,4", batch=1, microbatches=1, devices=4, hardware=_write(tmp_path, MINE), compute=False
    )
    result = run(config)
    spans = sorted((s.device, s.op, s.start, s.end) for s in result.trace.spans)
    assert spans == [
        (0, "B", 22.0, 24.0),
        (0, "F", 0.0, 1.0),
        (1, "B", 18.5, 20.5),
        (1, "F", 2.5, 3.5),
        (2, "B", 13.5, 15.5),
        (2, "F", 6.5, 7.5),
        (3, "B", 10.0, 12.0),
        (3, "F", 9.0, 10.0),
    ]
    moves = sorted((t.src, t.dst, t.start, t.end, t.arrival) for t in result.trace.transfers)
    assert moves == [
        (0, 1, 1.0, 2.0, 2.5),
        (1, 0, 20.5, 21.5, 22.0),
        (1, 2, 3.5, 5.5, 6.5),
        (2, 1, 15.5, 17.5, 18.5),
        (2, 3, 7.5, 8.5, 9.0),
        (3, 2, 12.0, 13.0, 13.5),
    ]
    assert result.metrics.makespan == 24.0
    assert result.trace.links[(1, 2)] == ("slow", True) and result.trace.links[(0, 1)] == ("fast", False)
    # a node map that puts every device on one node of 4: every send takes the fast link
    flat = run(RunConfig(**{**config.__dict__, "node_map": "0,0,0,0", "devices_per_node": 4}))
    assert sorted(t.arrival - t.start for t in flat.trace.transfers) == [1.5] * 6
    # the same map on nodes of 2 overfills node 0 (a reader's find: it once ran as one node without a word)
    with pytest.raises(ConfigError, match=r"puts 4 devices on node 0, which holds 2"):
        run(RunConfig(**{**config.__dict__, "node_map": "0,0,0,0"}))


def test_the_trace_names_each_link(tmp_path):
    trace = tmp_path / "t.json"
    hardware = _write(tmp_path, MINE)
    argv = ["run", "--layers", "4,4,4,4,4", "--batch", "2", "--microbatches", "2", "--hardware", hardware]
    assert main([*argv, "--no-compute", "--trace", str(trace)]) == 0
    events = json.loads(trace.read_text())["traceEvents"]
    tracks = {e["args"]["name"] for e in events if e["ph"] == "M" and e["pid"] == 1 and e["name"] == "thread_name"}
    assert "link 1->2 (slow, between nodes)" in tracks and "link 0->1 (fast, inside a node)" in tracks
    sends = [e["args"] for e in events if e.get("cat") == "transfer"]
    assert {(a["link"], a["inter_node"]) for a in sends} == {("fast", False), ("slow", True)}


def test_a_presets_memory_is_the_default_device_memory(tmp_path, capsys):
    small = _write(tmp_path, MINE.replace("memory = 1e9", "memory = 1000"))
    with pytest.raises(OutOfMemoryError):
        run(RunConfig(hardware=small, devices=2, compute=False))
    assert main(["run", "--hardware", small, "--devices", "2", "--no-compute"]) == 2
    assert "but the device has 1000 B (--device-memory, else the --hardware preset's memory)" in capsys.readouterr().err
    marked = run(RunConfig(hardware=small, devices=2, compute=False, allow_oom=True))
    assert marked.trace.oom is not None and marked.config.device_memory == 1000
    roomy = run(RunConfig(hardware=small, devices=2, compute=False, device_memory=10**9))  # the flag wins
    assert roomy.trace.oom is None
    assert main(["run", "--hardware", "h100-sxm", "--model", "tiny-gpt", "--no-compute", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hardware"] == "h100-sxm" and data["device_memory"] == 80 * 10**9


def test_a_preset_gives_peak_times_efficiency_in_the_training_dtype():
    base = dict(model="tiny-gpt", compute=False, devices=2, hardware="h100-sxm")
    spans = {}
    for dtype, efficiency in (("bf16", None), ("fp32", None), ("bf16", 0.25)):
        trace = run(RunConfig(**base, dtype=dtype, efficiency=efficiency)).trace
        first = next(s for s in trace.spans if s.name == "0F0")
        spans[dtype, efficiency] = first.end - first.start
    # bf16 peak 989.5 TFLOP/s, fp32 67: the same FLOPs take 989.5/67 as long; efficiency 0.25 halves speed
    assert spans["fp32", None] / spans["bf16", None] == pytest.approx(989.5 / 67)
    assert spans["bf16", 0.25] / spans["bf16", None] == pytest.approx(2.0)


def test_device_speed_slows_one_device_by_hand():
    # GPipe, unit cost, K=2, M=2: F=1, B=2 per stage; device 1 at half speed: F=2, B=4.
    # d0 F 0-1, F 1-2; d1 F 1-3, F 3-5, B 5-9, B 9-13; d0 B 9-11, B 13-15: makespan 15 (all at speed 1: 9).
    config = RunConfig(strategy="gpipe", devices=2, microbatches=2, cost="unit", compute=False)
    assert run(config).metrics.makespan == 9.0
    slow = run(RunConfig(**{**config.__dict__, "device_speed": "1=0.5"}))
    assert slow.metrics.makespan == 15.0
    assert sorted((s.device, s.start, s.end) for s in slow.trace.spans if s.device == 1) == [
        (1, 1.0, 3.0),
        (1, 3.0, 5.0),
        (1, 5.0, 9.0),
        (1, 9.0, 13.0),
    ]


@settings(max_examples=15, deadline=None)
@given(
    strategy=st.sampled_from(["gpipe", "1f1b", "zb-h1", "interleaved"]),
    devices=st.integers(1, 4),
    microbatches=st.integers(1, 6),
    speed=st.sampled_from([0.25, 0.5, 2.0, 4.0]),
)
def test_a_uniform_speed_scales_the_makespan(strategy, devices, microbatches, speed):
    # under unit cost transfers are free, so every time is compute: speed s divides the makespan by s
    config = RunConfig(
        strategy=strategy,
        devices=devices,
        microbatches=max(microbatches, devices),
        layers="8,8x8,8",
        batch=8,
        cost="unit",
        compute=False,
    )
    base = run(config).metrics.makespan
    scaled = run(RunConfig(**{**config.__dict__, "device_speed": ",".join([str(speed)] * devices)})).metrics.makespan
    assert scaled == pytest.approx(base / speed, rel=1e-12)


BAD = [
    (["--hardware", "h1"], "--hardware 'h1' is not a preset; use one of a100-40gb, a100-80gb, h100-sxm, h200, mi300x"),
    (
        ["--hardware", "h100-sxm", "--devices", "12", "--model", "llama2-7b", "--no-compute"],
        "--devices 12 spans more than one node of 8 devices but is not a multiple of 8; give --devices 16 (or 8)",
    ),
    (["--devices-per-node", "3", "--devices", "4"], "--devices 4 spans more than one node of 3 devices"),
    (["--efficiency", "1.5"], "--efficiency 1.5 is not in (0, 1]"),
    (["--efficiency", "0"], "--efficiency 0 is not in (0, 1]"),
    # without a preset the rate is already achieved: an efficiency would count twice (a new user's find)
    (["--model", "tiny-gpt", "--efficiency", "0.4"], "give the achieved rate as --device-flops 4e+13"),
    (["--device-flops", "73.6e9", "--efficiency", "0.25"], "give the achieved rate as --device-flops 1.84e+10"),
    (["--devices-per-node", "0"], "--devices-per-node 0 is not allowed; use 1 or more"),
    (["--node-map", "0,0,1"], "--node-map '0,0,1' names 3 devices but the run has 4"),
    (["--node-map", "0,a,1,1"], "--node-map '0,a,1,1' is not a list of node numbers"),
    (["--node-map", "0,0,-1,1"], "--node-map '0,0,-1,1' has a negative node"),
    (["--inter-node-bandwidth", "0"], "--inter-node-bandwidth 0 is not a finite rate of at least 1 per second"),
    (["--inter-node-latency", "2"], "--inter-node-latency 2 is not between 0 and 1 second"),
    (["--device-speed", "5=0.5"], "--device-speed '5=0.5' names device 5, but devices run from 0 to 3"),
    (["--device-speed", "1,2"], "--device-speed '1,2' gives 2 factors for 4 devices"),
    (["--device-speed", "1=0"], "--device-speed '1=0' has factor 0, which is not positive and finite"),
    (["--device-speed", "1=x"], "--device-speed '1=x' is not a list of speed factors"),
]


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_hardware_flags_exit_2_with_one_sentence(argv, message, capsys):
    assert main(["run", "--no-compute", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            ("bandwidth = 16", "bandwidth = -1"),
            "mine.toml: [inter_node].bandwidth: -1 is not a finite rate of at least 1 per second; give e.g. 1e12",
        ),
        (("latency = 1\n", "latency = 2\n"), "mine.toml: [inter_node].latency: 2 is not between 0 and 1 second"),
        (("fp64 = 64\n", ""), "mine.toml: [peak_flops].fp64 is missing; add it"),
        (("devices_per_node = 2", "devices_per_node = 0"), "mine.toml: devices_per_node: 0 is not 1 or more"),
        (("memory = 1e9", "memory = '1GB'"), 'mine.toml: memory: "1GB" is not a number'),
        (("description", "speed = 1\ndescription"), "mine.toml: speed is not a key of the top level; use one of"),
    ],
)
def test_a_bad_hardware_file_names_the_key(tmp_path, edit, message, capsys):
    path = _write(tmp_path, MINE.replace(*edit))
    with pytest.raises(ConfigError, match=None) as info:
        load_hardware(path)
    assert message in str(info.value)
    assert main(["run", "--hardware", path, "--no-compute"]) == 2
    assert message in capsys.readouterr().err


def test_a_study_names_its_preset_and_its_nodes(tmp_path):
    nodes = '[hardware]\npreset = "h100-sxm"\ndevices = 4\ndevices_per_node = 2\n'
    study = _write(tmp_path, nodes + "[sweep]\ndevices = [1, 2, 4]\n", "s.toml")  # K = 3 would span nodes unevenly
    config = load_study(study).run_config()
    assert (config.hardware, config.devices_per_node, config.device_flops) == ("h100-sxm", 2, None)
    bad = _write(tmp_path, '[hardware]\npreset = "h100-sxm"\ndevices = 3\ndevices_per_node = 2\n', "b.toml")
    with pytest.raises(ConfigError, match=r"b.toml: \[hardware\].devices: 3 spans more than one node of 2"):
        load_study(bad)
    unknown = _write(tmp_path, '[hardware]\npreset = "h1"\n', "u.toml")
    with pytest.raises(ConfigError, match=r"u.toml: \[hardware\].preset: 'h1' is not a preset; use one of a100-40gb"):
        load_study(unknown)
    eff = _write(tmp_path, "[hardware]\nefficiency = 2\n", "e.toml")
    with pytest.raises(ConfigError, match=r"e.toml: \[hardware\].efficiency: 2 is not in \(0, 1\]"):
        load_study(eff)


def test_a_sweep_takes_hardware_as_an_axis(tmp_path, capsys):
    sweep = _write(
        tmp_path,
        '[model]\nmodel = "tiny-gpt"\ncompute = false\n[axes]\nhardware = ["h100-sxm", "a100-80gb"]\n'
        "link_bandwidth = [1e30]\nlink_latency = [0.0]\n",  # free links: the step is compute alone
        "w.toml",
    )
    out = tmp_path / "r.jsonl"
    assert main(["sweep", sweep, "-o", str(out), "--workers", "1"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    makespans = {r["point"]["hardware"]: r["makespan"] for r in records}
    # with free links every action scales with the bf16 peak: 989.5 against 312 TFLOP/s (the datasheets)
    assert makespans["a100-80gb"] / makespans["h100-sxm"] == pytest.approx(989.5 / 312, rel=1e-9)
    bad = _write(tmp_path, "[axes]\nhardware = ['h1']\n", "bad.toml")
    assert main(["sweep", bad, "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "bad.toml: [axes].hardware: 'h1' is not a preset" in capsys.readouterr().err


def test_the_readmes_hardware_file_reads(tmp_path):
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index('description = "my cluster"')
    mine = load_hardware(_write(tmp_path, readme[start : readme.index("```", start)]))
    assert (mine.devices_per_node, mine.inter_node.name, mine.memory) == (4, "RoCE 200 Gb/s", 80e9)
