"""Every closed form against the simulator, and the memory model's roles and OOM."""

import inspect
import json
import pathlib
import re
from dataclasses import replace

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipesched import OutOfMemoryError, RunConfig, formulas, load_strategy, run
from pipesched.cli import main
from pipesched.microbatch import split
from pipesched.model import layers_from_widths, parse_layers
from pipesched.pipeline import BUILT_INS
from pipesched.units import format_bytes, parse_bytes

TESTS = pathlib.Path(__file__).resolve().parent
STRATEGIES = [name for name in BUILT_INS if name not in ("zb-v", "dualpipev")]  # those two: tests/test_frontier.py
V_SHAPES = ("v-min", "v-half")  # two stages per device, whatever --chunks
REMAT = st.sampled_from(["never", "always", "except_last"])


@given(
    strategy=st.sampled_from(STRATEGIES),
    devices=st.integers(1, 5),
    microbatches=st.integers(1, 12),
    chunks=st.integers(1, 3),
)
def test_the_table_of_closed_forms_matches_the_simulator(strategy, devices, microbatches, chunks):
    """For the interleaved bubble when K does not divide M, a regression check of a form found by simulation."""
    chunks = chunks if strategy in formulas.LOOPED else 2 if strategy in V_SHAPES else 1
    assume(strategy != "dp" or microbatches >= devices)
    assume(formulas.CLOSED_FORMS[strategy].runs(devices, microbatches, chunks))  # interleaved-zb: equal rounds
    form = formulas.CLOSED_FORMS[strategy]
    stages = 1 if strategy == "dp" else devices * chunks
    r = run(
        RunConfig(
            strategy=strategy,
            devices=devices,
            microbatches=microbatches,
            chunks=chunks,
            layers=f"3x{stages + 1}",
            batch=microbatches,
            cost="unit",
            compute=False,
        )
    )
    bubble = form.bubble(devices, microbatches, chunks)
    assert bubble == r.bubble_formula  # the strategy states the table's formula
    if bubble is not None:
        assert r.metrics.bubble_fraction == pytest.approx(bubble, abs=1e-12)
    assert r.metrics.peak_inflight_microbatches == [
        form.inflight(devices, microbatches, chunks, d) for d in range(devices)
    ]


def _unit(widths, **fields):
    """A unit-cost run config of the MLP with these layer widths."""
    return RunConfig(layers=",".join(map(str, widths)), cost="unit", **fields)


@given(
    strategy=st.sampled_from(["gpipe", "1f1b"]),
    devices=st.integers(1, 4),
    per=st.integers(1, 3),
    microbatches=st.integers(1, 8),
    remat=st.sampled_from(["never", "always"]),
)
def test_peak_activation_bytes_closed_form(strategy, devices, per, microbatches, remat):
    widths = [5, 7, 6, 9, 4, 8, 3]
    assume(devices <= len(widths) - 1)
    batch = per * microbatches  # equal micro-batches
    r = run(_unit(widths, strategy=strategy, devices=devices, microbatches=microbatches, batch=batch, remat=remat))
    layers = layers_from_widths(widths)
    form = formulas.CLOSED_FORMS[strategy]
    for d, stage in enumerate(r.partition):
        stage_layers = [layers[i] for i in stage]
        full = formulas.stage_activation_bytes(stage_layers, per, last_stage=d == devices - 1)
        inputs = formulas.stage_input_bytes(stage_layers, per)
        inflight = form.inflight(devices, microbatches, 1, d)
        assert r.metrics.peak_activation_bytes[d] == formulas.peak_activation_bytes(inflight, full, inputs, remat)


@given(
    strategy=st.sampled_from(STRATEGIES),
    devices=st.integers(1, 4),
    chunks=st.integers(1, 3),
    batch=st.integers(4, 12),
    remat=REMAT,
    data=st.data(),
)
def test_activation_peak_walk_matches_the_simulator(strategy, devices, chunks, batch, remat, data):
    chunks = chunks if strategy == "interleaved" and devices > 1 else 1  # K=1 chunks share arrays
    assume(strategy not in V_SHAPES)  # a V's stages K-1 and K share device K-1, and arrays: the walk assumes none do
    microbatches = data.draw(st.integers(devices if strategy == "dp" else 1, batch))
    assume(
        formulas.CLOSED_FORMS[strategy].runs(devices, microbatches, chunks)
    )  # interleaved-zb's rounds; dualpipe, chimera: K even
    stages = 1 if strategy == "dp" else devices * chunks
    widths = data.draw(st.lists(st.integers(1, 9), min_size=stages + 1, max_size=stages + 4))
    r = run(
        _unit(
            widths, strategy=strategy, devices=devices, microbatches=microbatches, chunks=chunks, batch=batch,
            remat=remat, compute=False,
        )
    )  # fmt: skip
    layers = layers_from_widths(widths)
    rows = [s.stop - s.start for s in split(batch, microbatches)]
    for d, actions in enumerate(r.schedule.actions):
        expected = formulas.activation_peak(
            actions, lambda s: [layers[i] for i in r.partition[s]], rows, r.schedule.num_stages, remat
        )
        assert r.metrics.peak_activation_bytes[d] == expected


@pytest.mark.parametrize("devices, microbatches", [(2, 4), (4, 8), (4, 16), (8, 8)])
def test_pipeline_speedup_over_one_device(devices, microbatches):
    # Equal stages under flops costs with free links: one device runs every layer.
    def makespan(k):
        return run(
            RunConfig(
                devices=k,
                microbatches=microbatches,
                batch=microbatches * 2,
                layers="32x9",
                compute=False,
                link_latency=0.0,
                link_bandwidth=1e30,
            )
        ).metrics.makespan

    assert makespan(1) / makespan(devices) == pytest.approx(formulas.pipeline_speedup(devices, microbatches))


def test_memory_roles_show_deferred_weights_and_link_buffers():
    zb = run(RunConfig(strategy="zb-h1", compute=False)).trace.memory
    assert max(s.deferred for s in zb[0]) > 0  # the Ws' inputs and gradients wait
    gpipe = run(RunConfig(strategy="gpipe", compute=False)).trace.memory
    assert all(s.deferred == 0 for device in gpipe for s in device)
    dp = run(RunConfig(strategy="dp", compute=False)).trace.memory
    params = sum(layer.param_count for layer in layers_from_widths(parse_layers(RunConfig.layers))) * 8
    assert max(s.buffers for s in dp[0]) == -(-params // 4)  # one all-reduce chunk at a time
    assert dp[0][-1].grads == dp[0][-1].params == params


def test_out_of_memory_names_device_time_peak_and_what_held_it():
    config = RunConfig(compute=False, partition="2,2,2,5")
    free = run(config)
    peaks = free.metrics.peak_memory_bytes
    cap = (max(peaks) + sorted(peaks)[-2]) // 2  # only the hungriest device exceeds it
    with pytest.raises(OutOfMemoryError) as err:
        run(replace(config, device_memory=cap))
    device = peaks.index(max(peaks))
    message = str(err.value)
    assert message.startswith(f"device {device} runs out of memory at ")
    params = (4 * 257 * 256 + 257 * 10) * 8  # layers 6-10 on device 3
    assert f"(parameters {format_bytes(params)}, gradients {format_bytes(params)}, activations" in message
    # here the parameters and their gradients alone (2 x 2.03 MiB) exceed the cap
    assert 2 * params > cap and "the weights alone do not fit" in message
    allowed = run(replace(config, device_memory=cap, allow_oom=True))
    assert allowed.trace.oom[0] == device and allowed.trace.oom[1].total_bytes > cap
    assert allowed.metrics == free.metrics  # reporting an OOM changes nothing else
    assert run(replace(config, device_memory=max(peaks))).trace.oom is None  # exactly full fits


def test_activations_over_the_cap_suggest_remat():
    free = run(RunConfig(compute=False))
    device = free.metrics.peak_activation_bytes.index(max(free.metrics.peak_activation_bytes))
    cap = free.metrics.peak_memory_bytes[device] - 1
    with pytest.raises(OutOfMemoryError, match=r"use --remat always, more --devices"):
        run(RunConfig(compute=False, device_memory=cap))


def test_parameters_over_the_cap_fail_at_time_zero():
    with pytest.raises(OutOfMemoryError, match=r"at 0 s: .*the weights alone do not fit"):
        run(RunConfig(compute=False, device_memory=1000))


def test_allow_oom_in_json(capsys):
    assert main(["run", "--device-memory", "3MiB", "--allow-oom", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["oom"] is True and data["device_memory"] == 3 * 2**20
    assert data["peak_memory_bytes"][data["oom_device"]] > 3 * 2**20
    assert main(["run", "--device-memory", "3MiB"]) == 2
    assert "runs out of memory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, value",
    [
        ("16GB", 16 * 10**9),
        ("512 MiB", 512 * 2**20),
        ("1.5KiB", 1536),
        ("100", 100),
        ("2tb", 2 * 10**12),
        ("1e3B", 1000),
    ],
)
def test_units(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "GB", "16 GiBs", "-1GB", "0", "nanGB"])
def test_bad_units(text):
    with pytest.raises(Exception, match="--device-memory"):
        parse_bytes(text)


def test_formulas_command(capsys):
    assert main(["formulas", "--devices", "4", "--microbatches", "8", "--chunks", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["strategies"]["gpipe"]["bubble"] == pytest.approx(3 / 11)
    assert data["strategies"]["zb-h1"]["bubble"] == pytest.approx(3 / 27)
    assert data["strategies"]["interleaved"]["bubble"] == pytest.approx(3 / 19)
    assert data["strategies"]["1f1b"]["peak_inflight_microbatches"] == [4, 3, 2, 1]
    assert data["pipeline_speedup"] == pytest.approx(4 / (1 + 3 / 8))
    assert main(["formulas", "--devices", "0"]) == 2


def test_forms_found_by_simulation_are_marked_and_name_regression_tests_that_exist(capsys):
    marked = {name for name, form in formulas.CLOSED_FORMS.items() if "found by simulation" in form.bubble_text}
    assert marked == {
        "interleaved",
        "interleaved-zb",
        "zb-h2",
        "zb-v",
        "dualpipev",
        "v-min",
        "v-half",
        "dualpipe",
        "chimera",
    }
    assert main(["formulas"]) == 0
    assert "found by simulation: read off the simulator, not derived" in capsys.readouterr().out
    named = set(re.findall(r"``(?:tests/\w+\.py::)?(test_\w+)``", inspect.getsource(formulas)))
    defined = set(re.findall(r"^def (test_\w+)", "".join(p.read_text() for p in TESTS.glob("test_*.py")), re.M))
    assert len(named) >= 5 and named <= defined  # a renamed test would leave a docstring pointing nowhere


def test_formulas_show_no_inflight_counts_where_a_strategy_cannot_run(capsys):
    # K=4, M=4: dualpipev needs M >= 2K = 8; dp runs (M >= K). K=4, M=2: dp needs M >= K too.
    assert main(["formulas", "--devices", "4", "--microbatches", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["strategies"]
    assert data["dualpipev"]["peak_inflight_microbatches"] is None and data["dualpipev"]["bubble"] is None
    assert data["dp"]["peak_inflight_microbatches"] == [1, 1, 1, 1]
    assert main(["formulas", "--devices", "4", "--microbatches", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["strategies"]
    assert data["dp"]["peak_inflight_microbatches"] is None
    # interleaved runs M < K (one short round) without a closed-form bubble: its counts stay
    assert data["interleaved"]["bubble"] is None and data["interleaved"]["peak_inflight_microbatches"] is not None
    assert main(["formulas", "--devices", "4", "--microbatches", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("strategy")))
    table = lines[header + 1 : lines.index("", header)]
    at = lines[header].index("peak in flight")
    inflight = {row.split()[0]: row[at:].split()[0] for row in table}
    assert inflight == {
        "gpipe": "2/2/2/2",
        "1f1b": "2/2/2/1",
        "interleaved": "4/4/4/3",
        "looped-bfs": "4/4/4/4",  # v·M with v = 2
        "interleaved-zb": "4/4/4/4",  # v·M, M < K
        "zb-h1": "2/2/2/2",
        "zb-h2": "2/2/2/2",
        "zb-v": "3/4/4/4",
        "dualpipev": "-",
        "dp": "-",
        "v-min": "3/4/4/4",  # min(M+1+d, 2M, ...) with M = 2
        "v-half": "3/4/4/4",
        "dualpipe": "-",  # needs M >= 2K = 8
        "chimera": "-",  # M = 2 is not a multiple of K = 4
    }


def test_strategies_state_the_tables_bubble():
    for name, form in formulas.CLOSED_FORMS.items():
        for k, m, v in [(4, 8, 2), (3, 7, 3), (2, 1, 2)]:
            v = v if name in formulas.LOOPED else 1
            if not form.runs(k, m, v):
                continue
            assert load_strategy(name).bubble(k, m, v) == form.bubble(k, m, v)


def _two_node_hardware(tmp_path):
    """A hardware file with nodes of 2: links of 1e9 B/s and 1 µs inside, 1e8 B/s and 10 µs between."""
    hw = tmp_path / "hw.toml"
    hw.write_text(
        "memory = 1e9\ndevices_per_node = 2\n[peak_flops]\nbf16 = 1e12\nfp16 = 1e12\nfp32 = 1e12\nfp64 = 1e12\n"
        '[intra_node]\nname = "fast"\nbandwidth = 1e9\nlatency = 1e-6\n'
        '[inter_node]\nname = "slow"\nbandwidth = 1e8\nlatency = 1e-5\n'
    )
    return hw


def test_formulas_prints_the_collectives_the_engine_runs(tmp_path, capsys):
    """``formulas --data-parallel 4 --hardware`` on nodes of 2: the two-level closed forms, by hand, and the
    simulated all-reduce of the same replicas (K = 1, so all four start together) lasting exactly as long."""
    import json

    from pipesched import RunConfig, run
    from pipesched.cli import main

    hw = _two_node_hardware(tmp_path)
    assert main(["formulas", "--layers", "4,4", "--data-parallel", "4", "--hardware", str(hw), "--json"]) == 0
    two = json.loads(capsys.readouterr().out)["collectives"]["hierarchical"]
    # 20 parameters of 8 bytes = 160 B; 2 nodes of 2: inside, chunks of 80 B; across, shards of 80 B in 2 chunks
    inside, across = 1e-6 + 80 / 1e9, 1e-5 + 40 / 1e8
    assert (two["nodes"], two["per_node"]) == (2, 2)
    assert two["allreduce"] == pytest.approx(2 * inside + 2 * across, rel=1e-12)
    assert two["reduce_scatter"] == two["all_gather"] == pytest.approx(inside + across, rel=1e-12)
    assert two["flat_ring_at_least"] == pytest.approx(6 * 40 / 1e8, rel=1e-12)
    result = run(RunConfig(layers="4,4", devices=1, data_parallel=4, microbatches=1, batch=4, hardware=str(hw)))
    moves = [t for t in result.trace.transfers if t.op == "allreduce"]
    assert max(t.arrival for t in moves) - min(t.start for t in moves) == pytest.approx(two["allreduce"], rel=1e-9)


def test_formulas_says_an_uneven_ring_is_one_flat_ring_over_the_slow_link(tmp_path, capsys):
    """D = 3 on nodes of 2: some pipeline device's replicas sit 2 + 1 on two nodes, so the engine runs one
    flat ring, and its inter-node edge carries all 2(D-1) = 4 chunks of ceil(160/3) = 54 B in turn."""
    import json

    from pipesched.cli import main

    hw = _two_node_hardware(tmp_path)
    assert main(["formulas", "--layers", "4,4", "--data-parallel", "3", "--hardware", str(hw), "--json"]) == 0
    collectives = json.loads(capsys.readouterr().out)["collectives"]
    assert collectives["hierarchical"] is None
    assert collectives["uneven"]["flat_ring_at_least"] == pytest.approx(4 * 54 / 1e8, rel=1e-12)
