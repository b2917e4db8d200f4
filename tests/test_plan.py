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
from pipesched.plan import Cluster, evaluate, exposed_communication, plan
from pipesched.trace import Span, Trace, Transfer

# A small cluster: 4 GPUs on nodes of 2, tiny-gpt at 32 tokens, 8 sequences of 1 per step.
GPUS, BATCH, SIZE, SEQ = 4, 8, 1, 32
MEMORY = 4_000_000  # bytes: some layouts fit, some overfill with weights alone, some with activations
UNTIED_MEMORY = 3_000_000  # the same for the untied model below, whose fastest layout needs 3.6 MB
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
    ("looped-bfs", 2),
    ("looped-bfs", 4),
    ("interleaved-zb", 2),
    ("interleaved-zb", 4),
    ("zb-h1", None),
    ("zb-h2", None),
    ("zb-v", 2),
    ("v-half", 2),
    ("v-min", 2),
    ("dualpipev", 2),
    ("dualpipe", None),
    ("chimera", None),
]
BIDIRECTIONAL = ("dualpipe", "chimera")


@pytest.fixture(scope="module")
def hardware(tmp_path_factory):
    path = tmp_path_factory.mktemp("hw") / "small.toml"
    path.write_text(HARDWARE)
    return str(path)


# A LLaMA-style decoder without tied embeddings (tiny-gpt ties them): its replicas run alike, so the plan
# simulates one replica alone (pipesched.symmetry), while the brute force below simulates every one.
UNTIED = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}  # fmt: skip


@pytest.fixture(scope="module", params=["tiny-gpt", "untied"])
def model(request, tmp_path_factory):
    if request.param == "tiny-gpt":
        return "tiny-gpt"
    path = tmp_path_factory.mktemp("model") / "config.json"
    path.write_text(json.dumps(UNTIED))
    return str(path)


@pytest.fixture(scope="module")
def memory(model):
    return MEMORY if model == "tiny-gpt" else UNTIED_MEMORY


def _layout(d, t, k, strategy, chunks, remat, grad_sync):
    # with one replica a sharded optimizer is the plain one: one layout; but a bidirectional pipeline holds
    # two copies of each stage, over which a sharded optimizer splits its state
    return (d, t, k, strategy, chunks or 1, remat, grad_sync if d > 1 or strategy in BIDIRECTIONAL else "allreduce")


@pytest.fixture(scope="module")
def brute(hardware, model):
    """Every layout, fully simulated: layout -> (tokens per second, the fullest device's peak bytes).

    T runs over 1 and 2: both divide the 4 heads and the hidden size of 64, and a node holds 2 devices.
    """
    out = {}
    for d in (1, 2, 4):
        for t in (1, 2):
            if BATCH % (d * SIZE) or GPUS % (d * t):
                continue
            k = GPUS // (d * t)
            for strategy, chunks in STRATEGIES:
                for remat in ("never", "always"):
                    for grad_sync in ("allreduce", "sharded"):
                        config = RunConfig(
                            model=model, seq_len=SEQ, hardware=hardware, device_memory=MEMORY, batch=BATCH,
                            data_parallel=d, tensor_parallel=t, devices=k, microbatches=BATCH // (d * SIZE),
                            strategy=strategy, chunks=chunks, remat=remat, grad_sync=grad_sync, compute=False,
                            reference=False, allow_oom=True,
                        )  # fmt: skip
                        try:
                            result = run(config)
                        except PipeschedError:
                            continue  # a layout this strategy cannot run (too many stages for the model)
                        out[_layout(d, t, k, strategy, chunks, remat, grad_sync)] = (
                            BATCH * SEQ / result.metrics.makespan,
                            max(result.metrics.peak_memory_bytes),
                        )
    return out


@pytest.fixture(scope="module")
def planned(hardware, model, memory):
    cluster = Cluster(GPUS, model, hardware, BATCH, SIZE, seq_len=SEQ, device_memory=memory)
    return plan(cluster, workers=1)


def _key(record):
    p = record["point"]
    return _layout(
        p["data_parallel"], p["tensor_parallel"], p["devices"], p["strategy"], p["chunks"], p["remat"], p["grad_sync"]
    )


def test_every_configuration_is_brute_forces_own(brute, planned):
    """Each configuration's throughput and peak, the sharded ones derived from their all-reduce twin and the
    untied model's from one replica, equal the full simulation of that very configuration."""
    simulated = [r for r in planned.records if r["ok"] and not r["skipped"]]
    assert {_key(r) for r in simulated} <= set(brute) and len(simulated) > len(brute) // 2
    assert {t for _, t, *_ in map(_key, simulated)} == {1, 2}  # tensor parallelism is searched
    for r in simulated:
        speed, peak = brute[_key(r)]
        assert r["tokens_per_second"] == pytest.approx(speed, rel=1e-12)
        assert r["peak_memory_bytes"] == peak


def test_the_best_layout_is_brute_forces_best(brute, planned, memory):
    fitting = {k: v for k, v in brute.items() if v[1] <= memory}
    best = max(speed for speed, _ in fitting.values())
    winners = {k for k, (speed, _) in fitting.items() if speed == best}
    assert planned.ranked[0]["tokens_per_second"] == pytest.approx(best, rel=1e-12)
    assert _key(planned.ranked[0]) in winners
    # and every fitting layout is there, none more, in order of throughput
    assert {_key(r) for r in planned.ranked} == set(fitting)
    speeds = [r["tokens_per_second"] for r in planned.ranked]
    assert speeds == sorted(speeds, reverse=True)


def test_the_memory_limit_changes_the_answer(brute, planned, memory):
    """The case is worth testing: the fastest layout without a limit does not fit."""
    fastest = max(brute, key=lambda k: brute[k][0])
    assert brute[fastest][1] > memory
    assert _key(planned.ranked[0]) != fastest


def test_a_tight_memory_is_decided_by_the_weights_first(brute, hardware, model):
    """Near the leanest layout's peak most layouts overfill with weights and optimizer state alone: those are
    not simulated, their overshoot a lower bound of the simulated one, and the fitting set is still exact."""
    tight = int(min(peak for _, peak in brute.values()) * 1.1)
    result = plan(Cluster(GPUS, model, hardware, BATCH, SIZE, seq_len=SEQ, device_memory=tight), workers=1)
    assert result.skipped > 0
    assert {_key(r) for r in result.ranked} == {k for k, (_, peak) in brute.items() if peak <= tight}
    for r in result.out_of_memory:
        peak = brute[_key(r)][1]
        assert 0 < r["overshoot_bytes"] <= peak - tight
        assert r["overshoot_bytes"] == peak - tight or r["skipped"]


def test_out_of_memory_layouts_are_dropped_with_their_overshoot(brute, planned, memory):
    oom = planned.out_of_memory
    assert {_key(r) for r in oom} == {k for k, v in brute.items() if v[1] > memory}
    for r in oom:
        peak = brute[_key(r)][1]
        if r["skipped"]:  # decided before simulating: a lower bound of the overshoot
            assert 0 < r["overshoot_bytes"] <= peak - memory
        else:
            assert r["overshoot_bytes"] == peak - memory


def test_the_pareto_front_is_brute_forces(brute, planned, memory):
    fitting = {k: v for k, v in brute.items() if v[1] <= memory}
    # a layout is on the front unless another is at least as fast and as lean, and better in one
    front = {
        k
        for k, (s, m) in fitting.items()
        if not any(s2 >= s and m2 <= m and (s2 > s or m2 < m) for s2, m2 in fitting.values())
    }
    got = {_key(r) for r in planned.front}
    assert got <= front
    assert {fitting[k] for k in got} == {fitting[k] for k in front}  # equal twins may stand for each other


def test_nothing_fits_names_the_smallest_memory_that_would(brute, hardware, model):
    least = min(peak for _, peak in brute.values())
    with pytest.raises(ConfigError, match=rf"needs .* \({least} bytes\): give --device-memory {least} or more"):
        plan(Cluster(GPUS, model, hardware, BATCH, SIZE, seq_len=SEQ, device_memory=least - 1), workers=1)


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
            ["--gpus", "6", "--tensor-parallel", "3", "--global-batch", "8", "--micro-batch-size", "1"]
            + ["--hardware", "h100-sxm"],  # 8 to a node, the last --hardware taken
            r"--tensor-parallel 3 does not divide the 4 heads and the hidden size 64 of tiny-gpt; use a common "
            r"divisor of both",
        ),
        (
            ["--gpus", "8", "--tensor-parallel", "4", "--global-batch", "8", "--micro-batch-size", "1"],
            r"--tensor-parallel 4 is more than the 2 devices of a node of .*small.toml; a tensor-parallel group "
            r"stays inside a node",
        ),
        (
            ["--gpus", "4", "--tensor-parallel", "1", "--sequence-parallel", "--global-batch", "8"]
            + ["--micro-batch-size", "1"],
            r"--sequence-parallel splits what a tensor-parallel group keeps whole, but --tensor-parallel 1",
        ),
        (["--gpus", "4", "--global-batch", "6", "--micro-batch-size", "4"], r"--global-batch 6 is not a multiple"),
        (
            ["--gpus", "8", "--devices", "4", "--tensor-parallel", "1", "--global-batch", "3"]  # D = 2 only
            + ["--micro-batch-size", "1"],
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


class _Counting:
    """``plan``'s evaluate, counting its calls (``workers=1`` runs it in this process)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, point):
        self.calls += 1
        return evaluate(point)


def test_resume_runs_nothing_again(tmp_path, hardware):
    cluster = Cluster(GPUS, "tiny-gpt", hardware, BATCH, SIZE, seq_len=SEQ, device_memory=MEMORY, data_parallel=2)
    results = str(tmp_path / "plan.jsonl")
    counted, again_counted = _Counting(), _Counting()
    first = plan(cluster, results, workers=1, evaluate_point=counted)
    again = plan(cluster, results, workers=1, evaluate_point=again_counted)
    fresh = plan(cluster, workers=1)  # without the results file
    # D = 2 fixes K = 2 / T: every layout is evaluated once (both grad syncs in one record), none again
    layouts = {(r["point"]["tensor_parallel"], r["point"]["strategy"], r["point"]["chunks"], r["point"]["remat"])
               for r in first.records}  # fmt: skip
    assert counted.calls == len(layouts) == first.layouts and again_counted.calls == 0
    assert len(first.records) == 2 * len(layouts)
    assert again.to_json() == fresh.to_json() == first.to_json()


def test_report_draws_the_pareto_front(tmp_path, capsys, hardware):
    folder = tmp_path / "plan"
    status, out, _ = _cli(
        capsys, "--hardware", hardware, "--gpus", "2", "--global-batch", "4", "--micro-batch-size", "1",
        "--report", str(folder), "--json",
    )  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in folder.iterdir()) == ["pareto.png", "summary.md"]
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the summary lists the front: the fitting configurations no other beats in both speed and memory
    fits = [c for c in json.loads(out) if not c["oom"]]
    front = [
        c
        for c in fits
        if not any(
            o["tokens_per_second"] >= c["tokens_per_second"] and o["peak_memory_bytes"] <= c["peak_memory_bytes"]
            and (o["tokens_per_second"] > c["tokens_per_second"] or o["peak_memory_bytes"] < c["peak_memory_bytes"])
            for o in fits
        )
    ]  # fmt: skip
    summary = (folder / "summary.md").read_text()
    listed = re.findall(r"^- D=(\d+) T=(\d+) K=(\d+) .*: ([\d.e+]+) tokens/s", summary, re.M)
    assert front and len(listed) <= len(front)
    assert {float(s) for *_, s in listed} == {float(f"{c['tokens_per_second']:.4g}") for c in front}


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


def test_schedules_with_the_same_step_share_one_row(capsys, hardware):
    """4 GPUs as D=4, K=1: one pipeline device, so 1F1B and ZB-H1 run the same step (gradient accumulation);
    the table shows such twins as one row joined by '=' when their speed, bubble and peak agree, --json each."""
    flags = ["--hardware", hardware, "--gpus", "4", "--data-parallel", "4", "--global-batch", "8"]
    flags += ["--micro-batch-size", "1", "--device-memory", "1GB", "--top", "100"]
    status, out, _ = _cli(capsys, *flags, "--json")
    listed = json.loads(out)
    status, out, _ = _cli(capsys, *flags)
    assert status == 0
    table = out.split("the best")[1].split("Pareto front")[0]
    rows = [line for line in table.splitlines() if re.match(r"^\d+ ", line)]
    groups = {}
    for c in listed:
        if not c["oom"]:
            key = (c["tokens_per_second"], c["bubble_fraction"], c["peak_memory_bytes"], c["remat"], c["grad_sync"])
            groups.setdefault(key, []).append(c["strategy"] + (f" v={c['chunks']}" if c["chunks"] > 1 else ""))
    assert len(rows) == len(groups) < len(listed)
    for names in groups.values():
        assert any(" = ".join(names) in row for row in rows)
