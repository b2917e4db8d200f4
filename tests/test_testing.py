"""pipesched.testing: the built-ins pass check_strategy, broken strategies are caught and shown."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pipesched.testing as testing
from pipesched import Action, RunConfig, Schedule, formulas, run, validate
from pipesched.decoder.workload import DecoderShapeWorkload, DecoderWorkload
from pipesched.errors import ConfigError
from pipesched.testing import StrategyCheckFailed, check_strategy, configs, schedules

#: every built-in, with what check_strategy needs to draw configurations it can run
BUILTINS = {
    "gpipe": {},
    "1f1b": {},
    "interleaved": {"chunks": (1, 2)},
    "zb-h1": {},
    "zb-h2": {},
    "zb-v": {"chunks": (2,)},
    "dualpipev": {"chunks": (2,), "microbatches_per_device": 2},
    "dp": {"microbatches_per_device": 1},
}


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "interleaved", "zb-h1", "dp"])
def test_the_builtins_pass_with_their_closed_forms(name):
    form = formulas.CLOSED_FORMS[name]
    check_strategy(
        name,
        bubble=True,
        inflight=form.inflight,
        chunks=(1, 2, 3) if name == "interleaved" else (1,),
        microbatches_per_device=1 if name == "dp" else 0,
        max_examples=25,
    )


def test_every_builtin_passes_on_decoder_draws_of_every_kind(monkeypatch):
    # A spy on the decoder check: each built-in meets decoders (exact gradients, shape-only memory =
    # real), and over them MHA and GQA, GELU and SwiGLU, tied and untied all occur.
    seen = {}
    check = testing._check_decoder

    def spy(schedule, config, label, table):
        seen.setdefault(label.split("'")[1], []).append(config.model)
        check(schedule, config, label, table)

    monkeypatch.setattr(testing, "_check_decoder", spy)
    for name, draws in BUILTINS.items():
        check_strategy(name, max_examples=20, **draws)
    assert set(seen) == set(BUILTINS)
    models = [m for ms in seen.values() for m in ms]
    assert {m.num_kv_heads < m.num_heads for m in models} == {False, True}
    assert {m.activation for m in models} == {"gelu", "silu"} and {m.tie_embeddings for m in models} == {False, True}


def test_a_workload_wrong_only_on_tied_decoders_is_caught(monkeypatch):
    # A schedule sees only K, M and v, so no plug-in can be wrong on decoders alone; what the decoder
    # draws catch is the engine and workload under the plug-in. Forget the tied pair's sum (the
    # embedding all-reduce): the MLP draws cannot see it, the decoder draws do.
    def unsummed(self):
        total = self.model.zeros_like_params()
        for (_, stage), grads in self.grads.items():
            for i, layer_grads in zip(self.stages[stage], grads):
                for name, g in layer_grads.items():
                    total[i][name] += g
        return total

    monkeypatch.setattr(DecoderWorkload, "model_gradients", unsummed)
    check_strategy("1f1b", max_examples=20, decoders=False)
    with pytest.raises(StrategyCheckFailed, match=r"'1f1b' with .*model=decoder\(.*, tied\).*gradients differ"):
        check_strategy("1f1b", max_examples=20)


def test_shape_only_memory_that_misses_a_byte_is_caught(monkeypatch):
    sizes = DecoderShapeWorkload._sizes

    def off_by_one(self, stage, mb):
        x, reused, private, out, new, arriving = sizes(self, stage, mb)
        return x, reused, private + 1, out, new, arriving

    monkeypatch.setattr(DecoderShapeWorkload, "_sizes", off_by_one)
    with pytest.raises(StrategyCheckFailed, match=r"shape-only memory on device 0 differs from the real arrays'"):
        check_strategy("gpipe", max_examples=20)


@given(configs(max_devices=4, chunks=(1, 2), decoders=True))
def test_drawn_decoders_give_every_stage_a_layer(config):
    if config.model is None:
        assert len(config.widths) - 1 >= config.devices * config.chunks
        return
    m = config.model
    assert (m.hidden_size, m.num_heads, m.vocab_size) == (16, 4, 32) and m.num_kv_heads in (2, 4)
    assert 1 <= m.num_layers <= 4 and m.num_layers + 3 >= config.devices * config.chunks  # + embedding, norm, output
    assert 4 <= config.seq_len <= 6 and config.batch >= config.microbatches
    with pytest.raises(ConfigError, match="a drawn decoder has no RunConfig"):
        config.run_config("gpipe")


class _Eager:
    """GPipe with forward-order backwards; tests swap in broken variants."""

    name = "eager"

    def plan(self, devices, microbatches, chunks=1):
        return Schedule(
            [
                [Action(d, "F", m) for m in range(microbatches)] + [Action(d, "B", m) for m in range(microbatches)]
                for d in range(devices)
            ]
        )


class _Deadlocks(_Eager):
    name = "deadlocks"

    def plan(self, devices, microbatches, chunks=1):
        # the last device runs its backwards before its forwards can have arrived in order
        schedule = super().plan(devices, microbatches)
        rows = [list(a) for a in schedule.actions]
        if devices > 1 and microbatches > 1:
            rows[-1] = [rows[-1][1], rows[-1][0]] + rows[-1][2:]
            rows[0] = [rows[0][0], Action(0, "B", 0)] + [a for a in rows[0][1:] if a != Action(0, "B", 0)]
        return Schedule(rows)


class _Forgets(_Eager):
    name = "forgets"

    def plan(self, devices, microbatches, chunks=1):
        schedule = super().plan(devices, microbatches)
        return Schedule(
            [a[:-1] if d == devices - 1 and microbatches > 2 else a for d, a in enumerate(schedule.actions)]
        )


def test_a_wrong_bubble_formula_is_caught_with_the_smallest_configuration_and_the_table():
    with pytest.raises(StrategyCheckFailed) as err:
        check_strategy(_Eager(), bubble=lambda K, M, v: (K - 1) / (K + M), max_examples=30)
    message = str(err.value)
    assert "'eager' with devices=2, microbatches=1" in message  # hypothesis shrank it to the smallest
    assert "the formula gives" in message and "device 0" in message and "1F0" in message


def test_a_deadlock_is_caught():
    with pytest.raises(StrategyCheckFailed, match=r"deadlocks.*waits at"):
        check_strategy(_Deadlocks(), max_examples=30)


def test_an_incomplete_plan_is_caught():
    with pytest.raises(StrategyCheckFailed, match=r"'forgets' with devices=1, microbatches=3.*has no 0B2"):
        check_strategy(_Forgets(), max_examples=30)


def test_a_wrong_inflight_formula_is_caught():
    with pytest.raises(StrategyCheckFailed, match=r"peak in-flight micro-batches \[1\], the formula gives \[2\]"):
        check_strategy("1f1b", inflight=lambda K, M, v, d: 2, max_examples=30)


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 2), st.data())
def test_drawn_schedules_are_valid_exact_and_never_deadlock(devices, microbatches, chunks, data):
    schedule = data.draw(schedules(devices, microbatches, chunks))
    validate(schedule, devices, microbatches)
    stages = devices * chunks
    result = run(
        RunConfig(
            strategy=_Fixed(schedule),
            devices=devices,
            microbatches=microbatches,
            layers="3x" + str(stages + 1),
            batch=microbatches,
            cost="unit",
        )
    )
    assert result.grad_rel_err <= 1e-10


@given(configs(max_devices=5, chunks=(1, 2, 3), microbatches_per_device=1))
def test_drawn_configs_fit_their_stages(config):
    assert len(config.widths) - 1 >= config.devices * config.chunks
    assert config.batch >= config.microbatches >= config.devices


class _Fixed:
    """A strategy that returns one given schedule."""

    name = "fixed"

    def __init__(self, schedule):
        self.schedule = schedule

    def plan(self, devices, microbatches, chunks=1):
        return self.schedule


# -- measured times: unequal F, I, W and sends --------------------------------------------------------------


def test_an_idle_formula_that_holds_under_measured_times_passes():
    # 1F1B: every device idles (K-1)(F+I+W) per step (tests/test_measured.py holds it for any M)
    check_strategy("1f1b", idle=lambda k, m, v, f, i, w: (k - 1) * (f + i + w), max_examples=25, decoders=False)


def test_a_formula_that_holds_only_when_f_i_w_are_equal_is_caught():
    # 3(K-1)F is 1F1B's idle when F = I = W, and wrong as soon as they differ
    with pytest.raises(StrategyCheckFailed, match=r"measured times \(0: F=.*idles .* but the formula gives"):
        check_strategy("1f1b", idle=lambda k, m, v, f, i, w: 3 * (k - 1) * f, max_examples=25, decoders=False)


def test_a_strategy_ignoring_the_measured_times_would_be_caught():
    # the checker against the trace: shift one action later than its device and input allow
    from pipesched.compute import ShapeWorkload
    from pipesched.cost import MeasuredCost
    from pipesched.engine import simulate
    from pipesched.model import layers_from_widths
    from pipesched.partition import uniform
    from pipesched.strategy import load_strategy, make_plan
    from pipesched.times import StageTimes
    from pipesched.trace import Span, Trace

    times = (StageTimes(F=1, I=2, W=0.5, R=1, send=0.5), StageTimes(F=1.5, I=1, W=2, R=1.5, send=0.0))
    schedule = make_plan(load_strategy("zb-h1"), 2, 3, 1)
    work = ShapeWorkload(layers_from_widths([2, 2, 2]), uniform(2, 2), [1, 1, 1])
    trace = simulate(schedule, work, MeasuredCost(times))
    assert testing.timeline_problem(schedule, trace, times) is None
    spans = [Span(*s[:4], s.start + 0.25, s.end + 0.25) if s.name == "1F2" else s for s in trace.spans]
    late = Trace(devices=2, time_unit="s", spans=spans, transfers=list(trace.transfers))
    assert "1F2 on device 1 started at" in testing.timeline_problem(schedule, late, times)
    short = (times[0], StageTimes(F=1.5, I=1, W=1, R=1.5, send=0.0))
    assert "lasted 2, but its measured time is 1" in testing.timeline_problem(schedule, trace, short)


@given(configs(measured=True))
def test_measured_draws_give_every_stage_unequal_i_and_w(config):
    assert len(config.times) == config.devices * config.chunks
    assert all(t.I != t.W and t.R == t.F and t.send is not None for t in config.times)
