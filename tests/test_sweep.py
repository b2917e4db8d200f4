"""Sweeps: the product of the axes, local and Dask runs alike, resuming after SIGTERM, failures recorded."""

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesched.cli import main
from pipesched.sweep import Results, load_sweep, pareto, parse_sweep, point_key, sweep

SMALL = """
[model]
layers = "16x7"
batch = 16

[axes]
strategy = ["gpipe", "zb-h1"]
devices = [2, 4]
microbatches = [2, 4, 8]

[constraints]
where = ["microbatches >= devices"]
"""


def _write(tmp_path, text=SMALL, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _lines(path):
    return [json.loads(line) for line in open(path)]


def test_the_points_are_the_filtered_product(tmp_path):
    study = load_sweep(_write(tmp_path))
    expected = [(s, k, m) for s, k, m in itertools.product(["gpipe", "zb-h1"], [2, 4], [2, 4, 8]) if m >= k]
    assert [(p["strategy"], p["devices"], p["microbatches"]) for p in study.points()] == expected


def test_a_point_keeps_its_values_as_written_so_its_key_does_not_change():
    """The check reads 1000000000 as a float; the point (and the hash a rerun skips it by) keeps the int."""
    axes = {"link_bandwidth": [1000000000], "device_memory": ["1KiB"]}
    (point,) = parse_sweep({"axes": axes, "model": {"device_flops": 10**12}}, "s.toml").points()
    assert point == {"link_bandwidth": 1000000000, "device_memory": 1024, "device_flops": 10**12}
    assert type(point["link_bandwidth"]) is int and type(point["device_flops"]) is int


def test_pool_and_single_process_agree_point_for_point(tmp_path):
    study = load_sweep(_write(tmp_path))
    one, pool = Results(str(tmp_path / "one.jsonl")), Results(str(tmp_path / "pool.jsonl"))
    assert sweep(study, one, workers=1, progress=False) == 10
    assert sweep(study, pool, workers=2, progress=False) == 10
    assert one.records == pool.records
    # each result is the run's own numbers: gpipe on 2 devices, unit-free flops cost, M=2
    record = one.records[point_key(next(study.points()))]
    assert record["ok"] and 0 < record["bubble_fraction"] < 1


def test_each_record_is_its_point_s_own_run(tmp_path):
    """A sweep's record of each point holds what pipesched.run gives for that point alone, run here in the
    opposite order: nothing one point leaves behind (a loaded strategy, a plan) changes another's numbers."""
    from pipesched import RunConfig, run

    study = parse_sweep(
        {
            "model": {"layers": "16x7", "batch": 16},
            "axes": {
                "strategy": ["gpipe", "zb-h1", "interleaved"],
                "devices": [2, 3, 4],
                "microbatches": [2, 4],
                "remat": ["never", "always"],
                "link_latency": [1e-6, 2e-5],
            },
        },
        "s.toml",
    )
    results = Results(str(tmp_path / "r.jsonl"))
    assert sweep(study, results, workers=1, progress=False) == 72
    lines = _lines(tmp_path / "r.jsonl")
    assert [r["point"] for r in lines] == list(study.points())  # one line per point, in the study's order
    for record in reversed(lines):
        point = record["point"]
        try:
            result = run(RunConfig(compute=False, reference=False, allow_oom=True, **point))
        except Exception as exc:  # interleaved on 4 devices: 8 stages of 6 layers
            assert record == {"key": point_key(point), "point": point, "ok": False, "error": str(exc)}
            continue
        m = result.metrics
        assert record == {
            "key": point_key(point),
            "point": point,
            "ok": True,
            "oom": result.trace.oom is not None,
            "makespan": m.makespan,
            "bubble_fraction": m.bubble_fraction,
            "steady_bubble_fraction": m.steady_bubble_fraction,
            "throughput": m.throughput,
            "peak_memory_bytes": max(m.peak_memory_bytes),
            "peak_activation_bytes": max(m.peak_activation_bytes),
            "grad_rel_err": None,
            "time_unit": result.trace.time_unit,
        }
    assert sum(not r["ok"] for r in lines) == 8  # interleaved, K = 4: each M, remat and latency


def test_a_failing_point_is_recorded_and_the_others_complete(tmp_path, capsys):
    text = SMALL.replace("devices = [2, 4]", "devices = [2, 7]")  # 7 devices: more than the 6 layers
    out = tmp_path / "r.jsonl"
    assert main(["sweep", _write(tmp_path, text), "-o", str(out), "--workers", "1"]) == 0
    records = _lines(out)
    failed = [r for r in records if not r["ok"]]
    assert len(records) == 8 and len(failed) == 2  # (gpipe, zb-h1) x M=8 with 7 devices
    assert all("has only 6 layers" in r["error"] for r in failed)
    assert "8 points: 8 run now, 0 already" in capsys.readouterr().out


def test_a_sweep_whose_every_point_failed_exits_1_with_the_reasons_grouped(tmp_path, capsys):
    # 6 layers: 7 and 9 devices fail for either strategy, for the same reason with other numbers
    text = SMALL.replace("devices = [2, 4]", "devices = [7, 9]").replace(
        "microbatches = [2, 4, 8]", "microbatches = [9, 10]"
    )
    out = tmp_path / "r.jsonl"
    assert main(["sweep", _write(tmp_path, text), "-o", str(out), "--workers", "1"]) == 1
    stdout, err = capsys.readouterr()
    assert len(_lines(out)) == 8 and not any(r["ok"] for r in _lines(out))
    assert "8 points: 8 run now, 0 already" in stdout and "8 failed" in stdout
    reasons = stdout.split("why the points failed (number of points, an example):\n")[1].splitlines()
    assert reasons == [  # one group per strategy, the first point of each as its example
        "4  batch=16 devices=7 microbatches=9 strategy=gpipe: strategy 'gpipe' plans 7 stages on --devices 7 "
        "but --layers 16x7 has only 6 layers; use fewer devices or chunks, or more layers",
        "4  batch=16 devices=7 microbatches=9 strategy=zb-h1: strategy 'zb-h1' plans 7 stages on --devices 7 "
        "but --layers 16x7 has only 6 layers; use fewer devices or chunks, or more layers",
    ]
    assert err.startswith("pipesched: error: every point of ") and err.count("\n") == 1
    assert "fastest" not in stdout
    # a sweep with one good point is not a failure
    assert (
        main(
            [
                "sweep",
                _write(tmp_path, text.replace("[7, 9]", "[2, 7]"), "t.toml"),
                "-o",
                str(tmp_path / "t.jsonl"),
                "--workers",
                "1",
            ]
        )
        == 0
    )


def test_a_point_that_runs_out_of_memory_is_recorded_in_a_sentence(monkeypatch):
    import pipesched.sweep

    def exhausted(config):
        raise MemoryError

    monkeypatch.setattr(pipesched.sweep, "run", exhausted)
    record = pipesched.sweep.run_point({"devices": 2})
    assert not record["ok"] and record["error"] == "this point does not fit in this machine's memory"


# A strategy whose plan waits, in a sweep's worker process, until a file named "open" sits beside it: the
# points that use it cannot finish before the test says so, however fast the machine.
GATE = """
import multiprocessing, os, time
from pipesched.strategies.gpipe import GPipe

class Gate(GPipe):
    name = "gate"

    def plan(self, devices, microbatches, chunks=1):
        if multiprocessing.parent_process() is not None:  # a worker; never the sweep's own process
            gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "open")
            for _ in range(1200):  # at most 2 minutes, so that nothing is left behind if the test fails
                if os.path.exists(gate):
                    break
                time.sleep(0.1)
        return super().plan(devices, microbatches, chunks)
"""


def test_a_sigterm_stops_the_sweep_loses_nothing_and_a_rerun_finishes_each_point_once(tmp_path, capsys):
    (tmp_path / "gate.py").write_text(GATE)
    gated = f"{tmp_path / 'gate.py'}:Gate"
    text = SMALL.replace('strategy = ["gpipe", "zb-h1"]', f'strategy = ["gpipe", "{gated}"]').replace(
        "devices = [2, 4]", "devices = [2]"
    )  # 6 points, each sent to a worker alone
    study_path = _write(tmp_path, text)
    total = len(list(load_sweep(study_path).points()))
    out = tmp_path / "r.jsonl"
    command = [
        os.path.join(os.path.dirname(sys.executable), "pipesched"),
        "sweep",
        study_path,
        "-o",
        str(out),
        "--workers",
        "2",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # a guard against a hang, not a measurement: wait for a first finished point
            if out.exists() and out.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.1)
        assert process.poll() is None, "the sweep ended before the signal; the gate did not hold"
        process.send_signal(signal.SIGTERM)
        # were the gated points in flight waited for, the sweep could never end: the gate is still shut
        status = process.wait(timeout=60)
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert status == 130 and "Traceback" not in stderr  # stopped as by Ctrl-C, quietly
    partial = _lines(out)
    assert 1 <= len(partial) < total  # cut short: what finished is there, the gated points are not
    assert all(r["ok"] and r["point"]["strategy"] == "gpipe" for r in partial)
    (tmp_path / "open").touch()
    assert main(["sweep", study_path, "-o", str(out), "--workers", "2"]) == 0
    assert f"{total} points: {total - len(partial)} run now, {len(partial)} already" in capsys.readouterr().out
    records = _lines(out)
    keys = [r["key"] for r in records]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == total  # every point exactly once
    assert records[: len(partial)] == partial and all(r["ok"] for r in records)


def test_a_task_s_lines_go_to_the_file_whole_in_one_write(tmp_path, monkeypatch):
    path = str(tmp_path / "r.jsonl")
    results = Results(path)
    writes = []
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(data) or real(fd, data))
    records = [{"key": f"k{i}", "point": {"devices": i}, "ok": True, "makespan": i / 3} for i in range(3)]
    results.extend(records)
    results.append({"key": "k3", "point": {}, "ok": False, "error": "no"})
    expected = [json.dumps(r, sort_keys=True) + "\n" for r in records]
    assert writes == ["".join(expected).encode(), b'{"error": "no", "key": "k3", "ok": false, "point": {}}\n']
    assert Results(path).records == results.records and list(results.records) == ["k0", "k1", "k2", "k3"]


def test_a_torn_last_line_is_cut_off(tmp_path):
    out = tmp_path / "r.jsonl"
    study = load_sweep(_write(tmp_path))
    sweep(study, Results(str(out)), workers=1, progress=False)
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"key": "abc", "po')  # a crash in mid-write
    results = Results(str(out))
    assert out.read_bytes() == whole and len(results.records) == 10
    assert sweep(study, results, workers=1, progress=False) == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("[axes]\ndevice = [2]", "[axes].device is not a key of [axes]; use one of devices, microbatches"),
        ("[axes]\ndevices = []", "[axes].devices: [] is not a non-empty list; give at least one value"),
        ("[axes]\ndevices = [2]\n[constraints]\nwhere = ['microbatches > 100']", "leave no point to run"),
        ("[axes]\ndevices = [2]\n[constraints]\nwhere = ['devices ~ 2']", "is not a comparison of axes and numbers"),
        ("[model]\nlayer = '4,4'\n[axes]\ndevices = [2]", "[model].layer is not a key of [model]"),
        ("[grid]\n", "[grid] is not a key of the top level; use one of model, axes, constraints"),
        ("axes = 3", "[axes]: 3 is not a table; write it as [axes]"),
        (
            "[axes]\nlink_bandwidth = [1e9, 'fast']",
            '[axes].link_bandwidth: "fast" is not a number; write a number without quotes',
        ),
        ("[axes]\ndevices = [2, '4']", '[axes].devices: "4" is not a whole number of at least 1'),
        (
            "[model]\nlayers = [8, 8]\n[axes]\ndevices = [2]",
            '[model].layers: [8, 8] is not a string; write it in quotes, e.g. "128,256x10,10"',
        ),
        ("[axes]\ncost = ['unit', 'flops']", "[axes].cost: sweep one cost model at a time"),
        (
            "[axes]\ndevices = [2]\n[constraints]\nwhere = 'devices > 1'",
            '[constraints].where: "devices > 1" is not a list; write it in brackets, e.g. ["devices > 1"]',
        ),
        # values no point can use, refused when the file is read, in the words a run would use
        ("[axes]\nlink_bandwidth = [1e9, 0]", "[axes].link_bandwidth: 0 is not a finite rate of at least 1 per second"),
        ("[axes]\nlink_latency = [2]", "[axes].link_latency: 2 is not between 0 and 1 second"),
        ("[model]\ndevice_flops = 0.5\n[axes]\ndevices = [2]", "[model].device_flops: 0.5 is not a finite rate"),
        (
            "[axes]\nstrategy = ['gpipe', 'nope']",
            "[axes].strategy: unknown strategy 'nope'; use one of 1f1b, chimera, dp",
        ),
        ("[axes]\nstrategy = ['mine.py']", "[axes].strategy: strategy 'mine.py' names a file but no class"),
        ("[axes]\nremat = ['never', 'sometimes']", "[axes].remat: 'sometimes' is unknown; use one of never"),
        ("[axes]\noverlap = ['min']", "[axes].overlap: 'min' is unknown; use one of sum, max"),
        ("[axes]\ncost = ['free']", "[axes].cost: 'free' is unknown; use one of flops, unit"),
        ("[model]\nloss = 'l1'\n[axes]\ndevices = [2]", "[model].loss: 'l1' is not a loss; use one of"),
        ("[model]\nlayers = '8,,8'\n[axes]\ndevices = [2]", "[model].layers: '8,,8' is malformed at ''"),
        (
            "[model]\nlayers = '8x7'\n[axes]\npartition = ['uniform', '2,2,3']",
            "[axes].partition: 2,2,3 sums to 7 layers but the model has 6; make the counts sum to 6",
        ),
        ("[axes]\npartition = ['2,x']", "[axes].partition: '2,x' is neither 'uniform', 'balanced' nor"),
        ("[axes]\ndata_parallel = [1, 0]", "[axes].data_parallel: 0 is not a whole number of at least 1"),
        ("[axes]\ngrad_sync = ['allreduce', 'zero']", "[axes].grad_sync: 'zero' is unknown; use one of allreduce"),
        ("[axes]\ncollective = ['tree']", "[axes].collective: 'tree' is unknown; use one of auto, ring"),
        ("[model]\ntensor_parallel = 0\n[axes]\ndevices = [2]", "[model].tensor_parallel: 0 is not a whole number"),
    ],
)
def test_bad_sweep_files_are_named(tmp_path, capsys, text, message):
    assert main(["sweep", _write(tmp_path, text), "-o", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_report_draws_heat_maps_and_the_pareto_front(tmp_path, capsys):
    out = tmp_path / "rep"
    assert (
        main(["sweep", _write(tmp_path), "-o", str(tmp_path / "r.jsonl"), "--workers", "1", "--report", str(out)]) == 0
    )
    from PIL import Image

    for name in ("heatmaps.png", "pareto.png"):
        with Image.open(out / name) as image:
            image.verify()
    summary = capsys.readouterr().out
    assert "fastest" in summary and "pareto" in summary


THROUGHPUT_AND_MEMORY = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), max_size=12)  # many ties


@given(THROUGHPUT_AND_MEMORY)
def test_the_pareto_front_is_every_point_no_other_dominates(pairs):
    records = [{"throughput": t, "peak_memory_bytes": m, "n": i} for i, (t, m) in enumerate(pairs)]

    def dominates(q, r):  # at least as good in both, better in one
        better = (q["throughput"] > r["throughput"], q["peak_memory_bytes"] < r["peak_memory_bytes"])
        worse = (q["throughput"] < r["throughput"], q["peak_memory_bytes"] > r["peak_memory_bytes"])
        return any(better) and not any(worse)

    front = pareto(records)
    assert sorted(r["n"] for r in front) == [r["n"] for r in records if not any(dominates(q, r) for q in records)]
    assert [r["throughput"] for r in front] == sorted((r["throughput"] for r in front), reverse=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_command(*args):
    """Run ``pipesched sweep`` in a fresh interpreter, as a user would: a Dask client starts an event-loop
    thread, which must not share a process with the hundreds of tests before it."""
    return subprocess.run(
        [sys.executable, "-m", "pipesched", "sweep", *args], capture_output=True, text=True, timeout=120
    )


def test_a_dask_cluster_gives_the_local_results(tmp_path):
    pytest.importorskip("distributed")
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [
        subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], **quiet)
    ]
    try:
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], **quiet
                )
            )
        path, remote_out = _write(tmp_path), str(tmp_path / "dask.jsonl")
        deadline = time.time() + 60
        while True:  # the scheduler needs a moment before it answers; tasks wait for the workers
            done = _sweep_command(path, "-o", remote_out, "--scheduler", address)
            if done.returncode == 0 or time.time() > deadline:
                break
            assert "no Dask scheduler answers there" in done.stderr
            time.sleep(0.5)
        assert done.returncode == 0, done.stderr
        study = load_sweep(path)
        remote, local = Results(remote_out), Results(str(tmp_path / "local.jsonl"))
        assert len(remote.records) == 10
        sweep(study, local, workers=1, progress=False)
        assert remote.records == local.records
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:  # a worker under load may outlive its scheduler's goodbye: then kill it
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.parametrize("address", ["foo", "tcp://127.0.0.1:notaport", ""])
def test_a_malformed_scheduler_address_is_one_sentence(tmp_path, capsys, address):
    assert main(["sweep", _write(tmp_path), "-o", str(tmp_path / "r.jsonl"), "--scheduler", address]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_two_sweeps_do_not_write_one_file_at_once(tmp_path, capsys):
    import fcntl

    out = tmp_path / "r.jsonl"
    with open(out, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running sweep holds it
        assert main(["sweep", _write(tmp_path), "-o", str(out)]) == 2
    assert "is being written by another sweep" in capsys.readouterr().err


def test_a_missing_scheduler_is_one_sentence(tmp_path):
    pytest.importorskip("distributed")
    done = _sweep_command(
        _write(tmp_path), "-o", str(tmp_path / "r.jsonl"), "--scheduler", f"tcp://127.0.0.1:{_free_port()}"
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no Dask scheduler answers there" in done.stderr


def test_without_dask_the_scheduler_option_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if it were not installed
    assert main(["sweep", _write(tmp_path), "-o", str(tmp_path / "r.jsonl"), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "install it with pip install 'pipesched[dask]'" in capsys.readouterr().err


def test_a_constraint_on_the_link_reads_each_point_s_own_hardware(tmp_path):
    # not an axis: link_bandwidth is the point's intra-node link, the MLP's cpu preset (5.12 GB/s per core,
    # pipesched/hardware.toml) or an H100's NVLink 4 (450 GB/s), so "link_bandwidth > 1e11" keeps the H100 alone
    text = (
        '[model]\nlayers = "16x7"\nbatch = 16\n[axes]\ndevices = [2]\nhardware = ["cpu", "h100-sxm"]\n'
        '[constraints]\nwhere = ["link_bandwidth > 1e11"]\n'
    )
    points = list(load_sweep(_write(tmp_path, text)).points())
    assert [p["hardware"] for p in points] == ["h100-sxm"]


def test_the_layout_keys_are_axes_and_model_keys_that_constraints_can_name(tmp_path):
    """data_parallel as an axis, grad_sync in [model]: each point's makespan and memory as derived by hand.

    Layers "16x9" are eight 16 -> 16 layers (272 parameters each), split evenly over K = 2 or 4 stages of
    L = 8 / K layers; each of D replicas runs M micro-batches of rows = 16 / (D x M). The machine's links
    are free, so the gradient reduction and the sends cost nothing and GPipe's makespan is
    (M + K - 1)(F + B) with B = 2F and F = 2·rows·L·16·16 FLOPs (pipesched.model) at its 64 GFLOP/s x 0.5.
    """
    free = "bandwidth = 1e30\nlatency = 0.0\n"
    machine = (
        'description = "free links"\nmemory = 1e12\ndevices_per_node = 8\n[peak_flops]\n'
        + "".join(f"{dtype} = 64e9\n" for dtype in ("bf16", "fp16", "fp32", "fp64"))
        + f'[intra_node]\nname = "free"\n{free}[inter_node]\nname = "free too"\n{free}'
    )
    _write(tmp_path, machine, "free.toml")
    text = """
[model]
layers = "16x9"
batch = 16
grad_sync = "sharded"
optimizer = "adam"
compute = false
hardware = "free.toml"

[axes]
data_parallel = [1, 2]
devices = [2, 4]
microbatches = [2, 4]

[constraints]
where = ["microbatches * data_parallel >= devices + tensor_parallel"]
"""
    study = load_sweep(_write(tmp_path, text))
    points = list(study.points())
    # by hand: (D, K, M) with M * D >= K + 1 (tensor_parallel stands for its default, 1)
    expected = [(d, k, m) for d, k, m in itertools.product([1, 2], [2, 4], [2, 4]) if m * d >= k + 1]
    assert [(p["data_parallel"], p["devices"], p["microbatches"]) for p in points] == expected
    assert all(p["grad_sync"] == "sharded" for p in points)
    results = Results(str(tmp_path / "r.jsonl"))
    assert sweep(study, results, workers=1, progress=False) == len(expected)
    for point in points:
        record = results.records[point_key(point)]
        assert record["ok"] and record["point"] == point
        d, k, m = point["data_parallel"], point["devices"], point["microbatches"]
        rows, layers = 16 / (d * m), 8 // k
        forward = 2 * rows * layers * 16 * 16 / (64e9 * 0.5)
        assert record["makespan"] == pytest.approx((m + k - 1) * 3 * forward, rel=1e-12)
        # GPipe keeps all M micro-batches in flight: each the stage's input and its L layers' outputs, in fp64
        activations = m * rows * 8 * 16 * (1 + layers)
        assert record["peak_activation_bytes"] == activations
        # fp64 parameters and gradients (16 B per parameter) and Adam's two fp64 moments (16 B) sharded over
        # the D replicas; link buffers come on top, but an unsharded state (D = 1's) would not fit below 32 B
        params = layers * 272
        assert 16 * params + 16 * params // d + activations <= record["peak_memory_bytes"]
        if d > 1:
            assert record["peak_memory_bytes"] < 32 * params + activations
