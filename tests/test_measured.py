"""The measured cost model: hand-computed timelines, closed forms with unequal F, I, W, and a row of the
Zero Bubble paper reproduced from its own profiled times; every command, study and sweep takes it."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import RunConfig, run
from pipesched.cli import main
from pipesched.compute import ShapeWorkload
from pipesched.cost import COST_MODELS, FlopsCost, MeasuredCost, make_cost_model
from pipesched.engine import simulate
from pipesched.errors import ConfigError
from pipesched.model import layers_from_widths
from pipesched.partition import uniform
from pipesched.report import load_study
from pipesched.strategy import load_strategy, make_plan
from pipesched.sweep import load_sweep, run_point
from pipesched.times import StageTimes

FIXTURES = Path(__file__).parent / "fixtures" / "zb_paper"


def _simulate(strategy, devices, microbatches, stages, links=None, remat="never", rows=None):
    schedule = make_plan(load_strategy(strategy), devices, microbatches, 1)
    layers = layers_from_widths([4] * (schedule.num_stages + 1))
    work = ShapeWorkload(layers, uniform(len(layers), schedule.num_stages), rows or [1] * microbatches)
    cost = MeasuredCost(tuple(stages), links or FlopsCost())
    return simulate(schedule, work, cost, remat)


# -- exactly the file's numbers ------------------------------------------------------------------------------

# stage 0: F 1, I 2, W 3 (B 5); stage 1: F 2, I 1, W 1 (B 2); boundary 0's send takes 0.5
TWO_STAGES = [StageTimes(F=1, I=2, W=3, R=1, send=0.5), StageTimes(F=2, I=1, W=1, R=2)]
# GPipe on 2 devices, M = 2 (device 0: 0F0 0F1 0B1 0B0; device 1: 1F0 1F1 1B1 1B0), derived by hand:
# 0F0 0-1, 0F1 1-2; their sends 1-1.5 and 2-2.5; 1F0 1.5-3.5, 1F1 3.5-5.5, 1B1 5.5-7.5, 1B0 7.5-9.5;
# the gradients leave 7.5-8 and 9.5-10; 0B1 starts when its gradient lands, 8-13, then 0B0 13-18.
GPIPE_TIMELINE = {
    (0, "F", 0, 0): (0, 1),
    (0, "F", 0, 1): (1, 2),
    (1, "F", 1, 0): (1.5, 3.5),
    (1, "F", 1, 1): (3.5, 5.5),
    (1, "B", 1, 1): (5.5, 7.5),
    (1, "B", 1, 0): (7.5, 9.5),
    (0, "B", 0, 1): (8, 13),
    (0, "B", 0, 0): (13, 18),
}


def _spans(trace):
    return {(s.device, s.op, s.stage, s.microbatch): (s.start, s.end) for s in trace.spans}


def test_a_hand_computed_timeline_with_measured_sends():
    trace = _simulate("gpipe", 2, 2, TWO_STAGES)
    assert _spans(trace) == GPIPE_TIMELINE  # halves and quarters: exact in floating point
    # a measured send keeps its link busy that long and lands at once
    assert sorted((t.start, t.end, t.arrival) for t in trace.transfers) == [
        (1, 1.5, 1.5),
        (2, 2.5, 2.5),
        (7.5, 8, 8),
        (9.5, 10, 10),
    ]


def test_without_a_send_time_the_bytes_go_over_the_links():
    # 250 activation bytes over 1000 B/s: busy 0.25, then 0.25 latency: the same 0.5 from end to arrival
    stages = [StageTimes(F=1, I=2, W=3, R=1, activation_bytes=250), TWO_STAGES[1]]
    trace = _simulate("gpipe", 2, 2, stages, links=FlopsCost(link_bandwidth=1000, link_latency=0.25))
    assert _spans(trace) == GPIPE_TIMELINE  # halves and quarters: exact in floating point
    # both directions of the boundary take the file's bytes' time; the trace keeps the payload's own size
    assert sorted((t.start, t.end, t.arrival) for t in trace.transfers) == [
        (1, 1.25, 1.5),
        (2, 2.25, 2.5),
        (7.5, 7.75, 8),
        (9.5, 9.75, 10),
    ]


def test_collectives_always_use_the_links():
    links = FlopsCost(link_bandwidth=1000, link_latency=0.25)
    cost = MeasuredCost((StageTimes(F=1, I=1, W=1, R=1, send=9.0),), links)
    assert cost.transfer_times(500, 0, 1, boundary=None) == (0.5, 0.25)
    assert cost.transfer_times(500, 0, 1, boundary=0) == (9.0, 0.0)


def test_remat_adds_the_measured_recompute_before_the_backward():
    stages = [StageTimes(F=1, I=2, W=3, R=0.75)]
    trace = _simulate("gpipe", 1, 1, stages, remat="always")
    # F 0-1, then R 1-1.75 and B (I + W = 5) 1.75-6.75
    assert _spans(trace) == {(0, "F", 0, 0): (0, 1), (0, "R", 0, 0): (1, 1.75), (0, "B", 0, 0): (1.75, 6.75)}


def test_rows_scale_each_time_with_the_micro_batch_size():
    cost = MeasuredCost((StageTimes(F=2, I=4, W=6, R=2),), rows=4)
    assert [cost.compute_time(op, [], rows, 1.0) for op, rows in (("F", 4), ("F", 2), ("B", 3), ("W", 8))] == [
        2,
        1,
        7.5,
        12,
    ]
    # without rows, every micro-batch takes the measured times whatever its size
    assert MeasuredCost((StageTimes(F=2, I=4, W=6, R=2),)).compute_time("F", [], 1, 1.0) == 2


def test_measured_is_one_of_the_registered_cost_models():
    assert list(COST_MODELS) == ["flops", "unit", "measured"]
    with pytest.raises(ConfigError, match="--cost measured needs the measured times; give --times FILE"):
        make_cost_model("measured")
    with pytest.raises(ConfigError, match="--cost 'wall' is unknown; use one of flops, unit, measured"):
        make_cost_model("wall")


# -- closed forms with unequal F, I, W and free links ---------------------------------------------------------

#: Halves: every sum of them is exact in binary floating point, so equality is exact.
TIMES = st.integers(1, 12).map(lambda n: n / 2)


def _idle(strategy, devices, microbatches, f, i, w):
    """Per device: idle time over the step's makespan, and over one period with steps back to back."""
    trace = _simulate(strategy, devices, microbatches, [StageTimes(F=f, I=i, W=w, R=f, send=0.0)] * devices)
    busy = trace.busy_time()
    return [trace.makespan - b for b in busy], [trace.period() - b for b in busy]


@settings(max_examples=40, deadline=None, database=None)
@given(st.sampled_from(["1f1b", "gpipe"]), st.integers(1, 5), st.integers(1, 9), TIMES, TIMES, TIMES)
def test_1f1b_and_gpipe_idle_per_device_is_k_minus_1_times_f_plus_i_plus_w(strategy, k, m, f, i, w):
    # every device, every M >= 1: (K-1)(F+I+W), B = I + W running as one action
    idle, _ = _idle(strategy, k, m, f, i, w)
    assert idle == [(k - 1) * (f + i + w)] * k


@settings(max_examples=60, deadline=None, database=None)
@given(st.integers(1, 5), st.data(), TIMES, TIMES, TIMES)
def test_zb_h1_idle_per_device_is_k_minus_1_times_f_plus_i_minus_w(k, data, f, i, w):
    """Qi et al. 2024 (section 2.1), B there is I here: ZB-H1's bubble is (K-1)(F+I-W). In pipesched's
    ZB-H1 (the paper's order, Figure 3) it holds for M >= K as follows, found by the engine and stated:

    - steps back to back, each device's idle per period is (K-1)(F+I-W) when W <= F, and (K-1)I when
      W > F: a W longer than F cannot hide in the slot one F leaves; so (K-1)(F+I-min(F, W)) always;
    - within one step (over the makespan) every device idles exactly (K-1)(F+I-W) when W <= min(F, I).

    The issue's condition W <= F+I is not enough: F = I = 0.5, W = 1 idles 0.5 per period, not 0
    (``test_zb_h1_with_w_longer_than_f``).
    """
    m = data.draw(st.integers(k, k + 6))
    idle, steady = _idle("zb-h1", k, m, f, i, w)
    assert steady == [(k - 1) * (f + i - min(f, w))] * k
    if w <= min(f, i):
        assert idle == [(k - 1) * (f + i - w)] * k


def test_zb_h1_with_w_longer_than_f():
    idle, steady = _idle("zb-h1", 2, 2, 0.5, 0.5, 1.0)
    assert steady == [0.5, 0.5]  # (K-1) I, where (K-1)(F+I-W) would say 0


@settings(max_examples=40, deadline=None, database=None)
@given(st.integers(1, 4), st.data(), TIMES, TIMES, TIMES)
def test_zb_h2_idle_per_period_is_k_minus_1_times_f_plus_i_minus_2w(k, data, f, i, w):
    """ZB-H2 (Qi et al. 2024, Figure 3 bottom) with M >= 2K-1 and W <= F, steps back to back: each device
    idles (K-1) max(0, F+I-2W) per period: zero when two W fill the F and I that the tail leaves."""
    m = data.draw(st.integers(2 * k - 1, 2 * k + 4))
    _, steady = _idle("zb-h2", k, m, f, i, w)
    if w <= f:
        assert steady == [(k - 1) * max(0.0, f + i - 2 * w)] * k


# -- a row of the Zero Bubble paper ------------------------------------------------------------------------

#: Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024 (arXiv 2401.10241): Table 9's profiled times
#: (ms; the paper's B is pipesched's I) and Table 5's bubble rates of 1F1B, ZB-H1 and ZB-H2, for the
#: settings with p = 8 stages. Bubble rate there: (cost - m(F+B+W)) / cost, cost the longest execution
#: time of any stage, from its first F to its last W, computed from the profiled times: pipesched's
#: bubble with steps back to back (its period is the longest window of any device or link).
PAPER_ROWS = [
    # model, p, m, T_F, T_B, T_W, T_comm, (1F1B, ZB-H1, ZB-H2)
    ("1.5B", 8, 24, 18.522, 18.086, 9.337, 0.601, (0.2431, 0.1585, 0.1083)),
    ("1.5B", 8, 32, 18.513, 18.086, 9.331, 0.626, (0.1985, 0.1242, 0.0837)),
    ("1.5B", 8, 64, 18.546, 18.097, 9.321, 0.762, (0.1240, 0.0674, 0.0444)),
    ("6.2B", 8, 24, 29.718, 29.444, 19.927, 0.527, (0.2347, 0.1323, 0.0698)),
    ("6.2B", 8, 32, 29.802, 29.428, 19.530, 0.577, (0.1898, 0.1045, 0.0559)),
    ("6.2B", 8, 64, 29.935, 29.621, 19.388, 0.535, (0.1091, 0.0554, 0.0294)),
]


def _paper_run(strategy, p, m, times):
    config = RunConfig(
        strategy=strategy, devices=p, microbatches=m, layers=f"8x{p + 1}", batch=m, compute=False,
        cost="measured", times=str(times),
    )  # fmt: skip
    return run(config).metrics.steady_bubble_fraction


def test_the_paper_row_in_the_fixture_reproduces_its_bubble_rates():
    times = FIXTURES / "1.5b_p8_m24.toml"
    got = [_paper_run(s, 8, 24, times) for s in ("1f1b", "zb-h1", "zb-h2")]
    assert [round(g, 4) for g in got] == [0.2431, 0.1585, 0.1083]


@pytest.mark.parametrize("row", PAPER_ROWS, ids=[f"{r[0]}-m{r[2]}" for r in PAPER_ROWS])
def test_paper_rows_to_four_decimals(tmp_path, row):
    _, p, m, f, b, w, comm, rates = row
    times = tmp_path / "times.toml"
    times.write_text(f'time_unit = "ms"\n[default]\nF = {f}\nI = {b}\nW = {w}\nsend = {comm}\n')
    got = [_paper_run(s, p, m, times) for s in ("1f1b", "zb-h1", "zb-h2")]
    assert [round(g, 4) for g in got] == list(rates)


# -- every command, study and sweep --------------------------------------------------------------------------


def _cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_run_json_names_the_times_file(capsys):
    times = str(FIXTURES / "1.5b_p8_m24.toml")
    status, out, _ = _cli(capsys, "run", "--cost", "measured", "--times", times, "--devices", "8",
                          "--microbatches", "24", "--layers", "8x9", "--batch", "24", "--strategy", "zb-h1",
                          "--no-compute", "--json")  # fmt: skip
    data = json.loads(out)
    assert status == 0 and data["times"] == times and data["cost"] == "measured" and data["time_unit"] == "s"
    assert round(data["steady_bubble_fraction"], 4) == 0.1585
    status, out, _ = _cli(capsys, "run", "--devices", "2", "--microbatches", "2", "--no-compute", "--json")
    assert json.loads(out)["times"] is None


@pytest.mark.parametrize("command", ["run", "compare", "train"])
def test_every_run_command_takes_measured_times(capsys, tmp_path, command):
    times = tmp_path / "times.toml"
    times.write_text('time_unit = "us"\n[default]\nF = 3\nI = 2\nW = 1\n')
    extra = ["--steps", "1"] if command == "train" else ["--strategies", "gpipe,1f1b"] if command == "compare" else []
    status, out, err = _cli(capsys, command, "--cost", "measured", "--times", str(times), "--devices", "2",
                            "--microbatches", "2", *extra)  # fmt: skip
    assert status == 0, err
    if command != "train":
        assert f"cost measured ({times})" in out


BAD_TIMES = [
    ('time_unit = "ms"\n[stage.0]\nF = 1\nB = 2\n', "stage 1 has no times; add a [stage.1] table or a [default]"),
    ('time_unit = "ms"\n[default]\nB = 2\n', "stage 0 has no forward time F; add F to [default]"),
    ('time_unit = "ms"\n[default]\nF = 1\nI = 2\n', "[default] gives I but not W; give both I and W, or"),
    ('time_unit = "ms"\n[default]\nF = -1\nB = 2\n', "[default].F: -1 is not a positive time"),
    ('time_unit = "ms"\n[default]\nF = nan\nB = 2\n', "[default].F: NaN is not a positive time"),
    ('time_unit = "hours"\n[default]\nF = 1\nB = 2\n', "time_unit: \"hours\" is not one of 's', 'ms' or 'us'"),
    ('time_unit = "ms"\n[default]\nF = 1\nB = 2\nFW = 1\n', "[default].FW is not a key of [default]; use one of F, B"),
    ('time_unit = "ms"\n[default\n', "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_TIMES)
def test_a_bad_times_file_is_one_sentence_and_exit_2(capsys, tmp_path, text, message):
    times = tmp_path / "times.toml"
    times.write_text(text)
    status, out, err = _cli(capsys, "run", "--cost", "measured", "--times", str(times), "--devices", "2")
    assert status == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cost", "measured"], "--cost measured needs the measured times; give --times FILE"),
        (["--times", "t.toml"], "--times t.toml gives measured times, which only --cost measured reads"),
        (["--cost", "unit", "--times", "t.toml"], "add --cost measured or drop --times"),
        (["--cost", "measured", "--times", "nope.toml"], "times file 'nope.toml' does not exist"),
        (
            ["--cost", "measured", "--times", str(FIXTURES / "1.5b_p8_m24.toml"), "--partition", "balanced"],
            "--partition 'balanced' moves layers between stages, but [stage.N] times belong to the stages",
        ),
    ],
)
def test_bad_flags_are_one_sentence_and_exit_2(capsys, argv, message):
    status, out, err = _cli(capsys, "run", *argv)
    assert status == 2 and out == "" and message in err and "Traceback" not in err


def test_balance_refuses_per_stage_times(capsys, tmp_path):
    status, _, err = _cli(capsys, "balance", "--cost", "measured", "--times", str(FIXTURES / "1.5b_p8_m24.toml"))
    assert status == 2 and "or per-layer times ([layer.N] tables, as pipesched profile writes them)" in err


# eight layers' F + I + W, in ms: 1+2+1, 5+4+3, ... (send 0: only the layers' times decide)
LAYER_TIMES = [(1, 2, 1), (5, 4, 3), (2, 2, 2), (1, 1, 1), (6, 5, 4), (1, 2, 3), (2, 1, 1), (3, 3, 3)]


def _layer_file(tmp_path):
    text = 'time_unit = "ms"\n[default]\nsend = 0\n' + "".join(
        f"[layer.{n}]\nF = {f}\nI = {i}\nW = {w}\n" for n, (f, i, w) in enumerate(LAYER_TIMES)
    )
    path = tmp_path / "layers.toml"
    path.write_text(text)
    return str(path)


def test_per_layer_times_balance_to_the_brute_force_optimum(capsys, tmp_path):
    # the objective's optimum: the split of the 8 layers into 3 stages whose largest stage sum is least,
    # found here by trying every split (the links carry a few bytes, so equal to within 1e-4)
    costs = [sum(t) * 1e-3 for t in LAYER_TIMES]
    splits = [(a, b - a, 8 - b) for a in range(1, 7) for b in range(a + 1, 8)]
    best = min(max(sum(costs[:a]), sum(costs[a : a + b]), sum(costs[a + b :])) for a, b, _ in splits)
    flags = ["--layers", "8x9", "--devices", "3", "--microbatches", "6", "--cost", "measured"]
    status, out, _ = _cli(capsys, "balance", *flags, "--times", _layer_file(tmp_path), "--json")
    assert status == 0
    result = json.loads(out)
    # the fastest in simulation is never slower than the objective's optimum, which the balancer reports
    assert result["simulated"] is not None
    optimum = result["simulated"]["optimum"]
    bottleneck = max(sum(costs[sum(optimum[:s]) : sum(optimum[: s + 1])]) for s in range(3))
    assert bottleneck == pytest.approx(best, rel=1e-4)
    # and a run with --partition balanced simulates no slower than uniform under the same times
    run = ["--layers", "8x9", "--devices", "3", "--microbatches", "6", "--cost", "measured", "--no-compute"]
    times = _layer_file(tmp_path)
    status, out, _ = _cli(capsys, "run", *run, "--times", times, "--partition", "balanced", "--json")
    balanced = json.loads(out)["makespan"]
    status, out, _ = _cli(capsys, "run", *run, "--times", times, "--json")
    assert balanced <= json.loads(out)["makespan"]


STUDY = """
[model]
layers = "8x9"
batch = 32
compute = false
[cost]
times = "times.toml"
[compare]
strategies = ["1f1b", "zb-h1"]
microbatches = 4
"""


def test_a_study_reads_its_times_next_to_it(tmp_path):
    (tmp_path / "times.toml").write_text('time_unit = "ms"\n[default]\nF = 2\nI = 1\nW = 1\n')
    (tmp_path / "study.toml").write_text(STUDY)
    study = load_study(str(tmp_path / "study.toml"))
    assert study.hardware.cost == "measured" and study.cost.times == str(tmp_path / "times.toml")
    assert study.compare.partitions == ("uniform",)  # balanced moves layers off the stages measured
    config = study.run_config(strategy="1f1b")
    assert config.times == study.cost.times and study.run_config(cost="unit").times is None
    # each device computes M (F + I + W) = 4 x 4 ms, the file's times; the flops links carry the bytes
    assert run(config).metrics.busy == pytest.approx([4 * 4e-3] * 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (STUDY.replace('times = "times.toml"', 'times = "none.toml"'), "[cost].times: times file"),
        (STUDY + '[hardware]\ncost = "unit"\n', '[hardware].cost = "unit" does not read'),
        ('[hardware]\ncost = "measured"\n', '[hardware].cost: "measured" needs the measured times; add [cost]'),
        (STUDY.replace("microbatches = 4", 'partitions = ["balanced"]'), "'balanced' moves layers between stages"),
        (STUDY.replace('times = "times.toml"', "time = 1"), "[cost].time is not a key of [cost]; use one of times"),
    ],
)
def test_a_bad_measured_study_names_the_key(tmp_path, text, message):
    (tmp_path / "times.toml").write_text('time_unit = "ms"\n[default]\nF = 2\nI = 1\nW = 1\n')
    (tmp_path / "study.toml").write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_study(str(tmp_path / "study.toml"))
    assert message in str(info.value)


SWEEP = """
[model]
layers = "8x5"
batch = 4
times = "times.toml"
[axes]
strategy = ["1f1b", "zb-h1"]
microbatches = [4]
"""


def test_a_sweep_runs_measured_times_next_to_it(tmp_path):
    (tmp_path / "times.toml").write_text('time_unit = "ms"\n[default]\nF = 2\nI = 1\nW = 1\nsend = 0\n')
    (tmp_path / "sweep.toml").write_text(SWEEP)
    points = list(load_sweep(str(tmp_path / "sweep.toml")).points())
    assert {p["cost"] for p in points} == {"measured"}
    one = run_point(points[0])  # 1F1B, K = 4, M = 4: idle (K-1)(F+I+W) = 12 ms of a 28 ms step
    assert one["ok"] and one["makespan"] == pytest.approx(28e-3) and one["bubble_fraction"] == pytest.approx(12 / 28)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SWEEP + 'cost = ["unit"]\n', "[model].times gives measured times, which [axes].cost = ['unit'] does not"),
        (SWEEP.replace('times = "times.toml"\n', "") + 'cost = ["measured"]\n', '"measured" needs the measured'),
        (SWEEP.replace("times.toml", "gone.toml"), "[model].times: times file"),
        (SWEEP + 'partition = ["balanced"]\n', "[axes].partition: 'balanced' moves layers between stages"),
    ],
)
def test_a_bad_measured_sweep_names_the_key(tmp_path, text, message):
    (tmp_path / "times.toml").write_text('time_unit = "ms"\n[default]\nF = 2\nI = 1\nW = 1\n')
    (tmp_path / "sweep.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_sweep(str(tmp_path / "sweep.toml"))
    assert message in str(info.value)


def test_an_overlapped_pair_lasts_as_the_overlap_rule_says_under_measured_times():
    from pipesched.testing import timeline_problem

    times = tuple(
        StageTimes(F=f, I=i, W=w, R=f, send=0.5) for f, i, w in ((1, 2, 0.5), (1.5, 1, 2), (2, 0.5, 1), (1, 1.5, 3))
    )
    schedule = make_plan(load_strategy("dualpipev"), 2, 4, 2)
    layers = layers_from_widths([2] * 5)
    for rule in ("sum", "max"):
        trace = simulate(schedule, ShapeWorkload(layers, uniform(4, 4), [1] * 4), MeasuredCost(times, overlap=rule))
        assert timeline_problem(schedule, trace, times, rule) is None
    # and the checker tells the rules apart: the max-rule trace is not the sum rule's
    assert "lasted" in timeline_problem(schedule, trace, times, "sum")


def test_layer_tables_sum_into_the_run_s_stages(capsys, tmp_path):
    # 4 stages of 8x9's 8 layers, two each; layer 0 F 2 ms, every other layer F 1, I 0.5, W 0.25 ms
    times = tmp_path / "layers.toml"
    times.write_text('time_unit = "ms"\n[layer.0]\nF = 2\nB = 0.75\n[default]\nF = 1\nI = 0.5\nW = 0.25\nsend = 0\n')
    argv = ["--layers", "8x9", "--strategy", "gpipe", "--devices", "4", "--microbatches", "4", "--no-compute"]
    status, out, _ = _cli(capsys, "run", "--cost", "measured", "--times", str(times), *argv, "--json")
    data = json.loads(out)
    # stage 0: F 3, B 1.5 (4.5 ms a micro-batch); the others F 2, B 1.5 (3.5 ms)
    assert status == 0 and data["busy"] == pytest.approx([4 * 4.5e-3] + [4 * 3.5e-3] * 3)
