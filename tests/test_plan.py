"""``pipesched plan`` against brute force: every layout of a small cluster simulated in full, here, on its own.

The brute force below enumerates the layouts itself (its own loops, its own
list of strategies and chunks) and runs ``pipesched.run`` on each; nothing of
``pipesched.plan``'s enumeration, pruning or ranking is used for the reference.
"""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, run
from pipesched.cli import main
from pipesched.errors import ConfigError, PipeschedError
from pipesched.plan import Cluster, exposed_communication, plan
from pipesched.trace import Span, Trace, Transfer

# A small cluster: 4 GPUs on nodes of 2, tiny-gpt at 32 tokens, 8 sequences of 1 per step.
GPUS, BATCH, SIZE, SEQ = 4, 8, 1, 32
MEMORY = 4_000_000  # bytes: some layouts fit, some overfill with weights alone, some with activations
HARDWARE = """\
description = "a small test device"
memory = 4e6
devices_per_node = 2
[peak_flops]
bf16 = 1e14
fp16 = 1e14
fp32 = 2e13
fp64 = 1e13
[intra_node]
name = "fast link"
bandwidth = 1e11
latency = 5e-6
[inter_node]
name = "slow link"
bandwidth = 1e10
latency = 1e-5
"""

# The reference's own option space: (strategy, chunks) by hand from each strategy's paper.
STRATEGIES = [
    ("gpipe", None),
    ("1f1b", None),
    ("interleaved", 2),
    ("interleaved", 4),
    ("zb-h1", None),
    ("zb-h2", None),
    ("zb-v", 2),
    ("dualpipev", 2),
]


@pytest.fixture(scope="module")
def hardware(tmp_path_factory):
    path = tmp_path_factory.mktemp("hw") / "small.toml"
    path.write_text(HARDWARE)
    return str(path)


def _layout(d, k, strategy, chunks, remat, grad_sync):
    # with one replica a sharded optimizer is the plain one: one layout
    return (d, k, strategy, chunks or 1, remat, grad_sync if d > 1 else "allreduce")


@pytest.fixture(scope="module")
def brute(hardware):
    """Every layout, fully simulated: layout -> (tokens per second, the fullest device's peak bytes)."""
    out = {}
    for d in (1, 2, 4):
        if BATCH % (d * SIZE):
            continue
        for strategy, chunks in STRATEGIES:
            for remat in ("never", "always"):
                for grad_sync in ("allreduce", "sharded"):
                    config = RunConfig(
                        model="tiny-gpt", seq_len=SEQ, hardware=hardware, device_memory=MEMORY, batch=BATCH,
                        data_parallel=d, devices=GPUS // d, microbatches=BATCH // (d * SIZE), strategy=strategy,
                        chunks=chunks, remat=remat, grad_sync=grad_sync, compute=False, reference=False,
                        allow_oom=True,
                    )  # fmt: skip
                    try:
                        result = run(config)
                    except PipeschedError:
                        continue  # a layout this strategy cannot run (too many stages for the model)
                    out[_layout(d, GPUS // d, strategy, chunks, remat, grad_sync)] = (
                        BATCH * SEQ / result.metrics.makespan,
                        max(result.metrics.peak_memory_bytes),
                    )
    return out


@pytest.fixture(scope="module")
def planned(hardware):
    cluster = Cluster(GPUS, "tiny-gpt", hardware, BATCH, SIZE, seq_len=SEQ, device_memory=MEMORY)
    return plan(cluster, workers=1)


def _key(record):
    p = record["point"]
    return _layout(p["data_parallel"], p["devices"], p["strategy"], p["chunks"], p["remat"], p["grad_sync"])


def test_the_best_layout_is_brute_forces_best(brute, planned):
    fitting = {k: v for k, v in brute.items() if v[1] <= MEMORY}
    best = max(speed for speed, _ in fitting.values())
    winners = {k for k, (speed, _) in fitting.items() if speed == best}
    assert planned.ranked[0]["tokens_per_second"] == pytest.approx(best, rel=1e-12)
    assert _key(planned.ranked[0]) in winners
    # and every fitting layout is there, none more, in order of throughput
    assert {_key(r) for r in planned.ranked} == set(fitting)
    speeds = [r["tokens_per_second"] for r in planned.ranked]
    assert speeds == sorted(speeds, reverse=True)


def test_the_memory_limit_changes_the_answer(brute, planned):
    """The case is worth testing: the fastest layout without a limit does not fit."""
    fastest = max(brute, key=lambda k: brute[k][0])
    assert brute[fastest][1] > MEMORY
    assert planned.skipped > 0  # some were decided by their weights alone


def test_out_of_memory_layouts_are_dropped_with_their_overshoot(brute, planned):
    oom = planned.out_of_memory
    assert {_key(r) for r in oom} == {k for k, v in brute.items() if v[1] > MEMORY}
    for r in oom:
        peak = brute[_key(r)][1]
        if r["skipped"]:  # decided before simulating: a lower bound of the overshoot
            assert 0 < r["overshoot_bytes"] <= peak - MEMORY
        else:
            assert r["overshoot_bytes"] == peak - MEMORY


def test_the_pareto_front_is_brute_forces(brute, planned):
    fitting = {k: v for k, v in brute.items() if v[1] <= MEMORY}
    # a layout is on the front unless another is at least as fast and as lean, and better in one
    front = {
        k
        for k, (s, m) in fitting.items()
        if not any(s2 >= s and m2 <= m and (s2 > s or m2 < m) for s2, m2 in fitting.values())
    }
    got = {_key(r) for r in planned.front}
    assert got <= front
    assert {fitting[k] for k in got} == {fitting[k] for k in front}  # equal twins may stand for each other


def test_nothing_fits_names_the_smallest_memory_that_would(brute, hardware):
    least = min(peak for _, peak in brute.values())
    with pytest.raises(ConfigError, match=rf"needs .* \({least} bytes\): give --device-memory {least} or more"):
        plan(Cluster(GPUS, "tiny-gpt", hardware, BATCH, SIZE, seq_len=SEQ, device_memory=least - 1), workers=1)


def _cli(capsys, *extra):
    status = main(["plan", "--model", "tiny-gpt", "--seq-len", str(SEQ), "--workers", "1", *extra])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--gpus", "6", "--data-parallel", "4", "--global-batch", "8", "--micro-batch-size", "1"],
            r"--gpus 6 is not a multiple of --data-parallel 4 = 4",
        ),
        (
            ["--gpus", "8", "--data-parallel", "2", "--tensor-parallel", "1", "--devices", "2"]
            + ["--global-batch", "8", "--micro-batch-size", "1"],
            r"--gpus 8 is not --data-parallel 2 x --tensor-parallel 1 x --devices 2 = 4; give --gpus 4",
        ),
        (
            ["--gpus", "4", "--tensor-parallel", "2", "--global-batch", "8", "--micro-batch-size", "1"],
            r"--tensor-parallel 2: the planner searches T = 1 only so far",
        ),
        (["--gpus", "4", "--global-batch", "6", "--micro-batch-size", "4"], r"--global-batch 6 is not a multiple"),
        (
            ["--gpus", "8", "--devices", "4", "--global-batch", "3", "--micro-batch-size", "1"],  # D = 2 only
            r"--global-batch 3 is not divisible by D x --micro-batch-size 1 for the data-parallel sizes D that "
            r"--gpus 8 and the sizes given leave \(2\); give a global batch that is a multiple of 2",
        ),
        (
            ["--gpus", "4", "--data-parallel", "4", "--global-batch", "6", "--micro-batch-size", "1"],
            r"--global-batch 6 is not divisible by --data-parallel 4 x --micro-batch-size 1 = 4",
        ),
        (
            ["--gpus", "64", "--global-batch", "1", "--micro-batch-size", "1"],  # D = 1 only, K = 64 > 11 layers
            r"--gpus 64 cannot be split into data x tensor x pipeline sizes",
        ),
        (["--gpus", "4", "--global-batch", "8", "--micro-batch-size", "1", "--device-memory", "1MB"], r"no config"),
    ],
)
def test_bad_input_is_one_sentence_and_status_2(capsys, hardware, flags, message):
    status, out, err = _cli(capsys, "--hardware", hardware, *flags)
    assert status == 2 and out == ""
    assert re.match(rf"pipesched: error: {message}", err) and err.count("\n") == 1


def test_json_lists_configurations_best_first(capsys, hardware, planned):
    status, out, _ = _cli(
        capsys, "--hardware", hardware, "--gpus", str(GPUS), "--global-batch", str(BATCH),
        "--micro-batch-size", str(SIZE), "--device-memory", str(MEMORY), "--json",
    )  # fmt: skip
    assert status == 0
    listed = json.loads(out)
    keys = {"data_parallel", "tensor_parallel", "devices", "strategy", "chunks", "microbatches", "remat"}
    keys |= {"tokens_per_second", "mfu", "peak_memory_bytes", "oom"}
    assert all(keys <= set(c) for c in listed)
    fits = [c for c in listed if not c["oom"]]
    assert listed[: len(fits)] == fits  # the fitting ones first, fastest first
    assert [c["tokens_per_second"] for c in fits] == sorted((c["tokens_per_second"] for c in fits), reverse=True)
    assert len(listed) == len(planned.records) - len(planned.failed)
    best = fits[0]
    assert best["data_parallel"] * best["tensor_parallel"] * best["devices"] == GPUS
    assert best["microbatches"] == BATCH // (best["data_parallel"] * SIZE)
    # MFU by hand: the model FLOPs of the step over makespan x N x peak (1e14 bf16 in the file)
    makespan = BATCH * SEQ / best["tokens_per_second"]
    flops = best["mfu"] * makespan * GPUS * 1e14
    assert 0 < best["mfu"] < 1 and flops == pytest.approx(_tiny_gpt_flops(), rel=1e-9)


def _tiny_gpt_flops():
    """tiny-gpt's matrix-product FLOPs per step, by hand (Narayanan et al. 2021, section 5.1, without recompute).

    h = 64, L = 8, V = 256, s = 32, t = B s tokens; forward per block 24 t h^2 + 4 t s h, the output layer
    2 t h V; backward twice the forward.
    """
    h, layers, vocab, t = 64, 8, 256, BATCH * SEQ
    forward = layers * (24 * t * h * h + 4 * t * SEQ * h) + 2 * t * h * vocab
    return 3 * forward


def test_resume_runs_nothing_again(tmp_path, hardware):
    cluster = Cluster(GPUS, "tiny-gpt", hardware, BATCH, SIZE, seq_len=SEQ, device_memory=MEMORY, data_parallel=2)
    results = str(tmp_path / "plan.jsonl")
    first = plan(cluster, results, workers=1)
    again = plan(cluster, results, workers=1)
    assert first.simulated == len(first.records) and again.simulated == 0
    assert [r["key"] for r in again.ranked] == [r["key"] for r in first.ranked]


def test_report_draws_the_pareto_front(tmp_path, capsys, hardware):
    folder = tmp_path / "plan"
    status, out, _ = _cli(
        capsys, "--hardware", hardware, "--gpus", "2", "--global-batch", "4", "--micro-batch-size", "1",
        "--report", str(folder),
    )  # fmt: skip
    assert status == 0 and "Pareto plot written to" in out
    assert sorted(p.name for p in folder.iterdir()) == ["pareto.png", "summary.md"]
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


intervals = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=6)


@settings(max_examples=60, deadline=None)
@given(compute=intervals, moves=intervals)
def test_exposed_communication_is_the_link_time_no_device_computes(compute, moves):
    """Against a plain loop over unit cells: integer ends, so each cell [i, i+1) is wholly in or out."""
    spans = [Span(i % 2, "F", 0, 0, float(a), float(b)) for i, (a, b) in enumerate(compute) if a < b]
    transfers = [Transfer(0, 1, 0, "F", 0, 8, float(a), float(b), float(b)) for a, b in moves if a < b]
    trace = Trace(devices=2, time_unit="s", spans=spans, transfers=transfers)

    def busy(cell, items):
        return any(item.start <= cell < (item.arrival if isinstance(item, Transfer) else item.end) for item in items)

    expected = sum(1 for cell in range(20) if busy(cell, transfers) and not busy(cell, spans))
    assert exposed_communication(trace) == expected
