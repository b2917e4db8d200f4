"""Huge or pointless inputs are refused before the work: every command checks the same limits first.

That a check comes before the work is shown without a clock: the work itself
(planning, building the model, running a study) is replaced by a stand-in that
fails the test if it is ever reached.
"""

import importlib
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesched import (
    ConfigError,
    RunConfig,
    Schedule,
    StrategyError,
    available_strategies,
    limits,
    load_strategy,
    make_plan,
    run,
)
from pipesched.cli import main
from pipesched.formulas import LOOPED
from pipesched.limits import MAX_ACTIONS, array_bytes
from pipesched.model import Model
from pipesched.pipeline import compare
from pipesched.strategy import planned_stages

BUILTINS = ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zb-v", "dualpipev", "dp"]
GiB = 2**30


def _run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _refused(capsys, *argv):
    """The command's error line, after asserting it is one sentence with status 2 and nothing on stdout."""
    status, out, err = _run(capsys, *argv)
    assert status == 2 and out == "" and err.startswith("pipesched: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


class _NoWork:
    """A stand-in for work that must not start: any call fails the test."""

    def __init__(self, what):
        self.what = what

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.what} ran before the checks refused the configuration")


@pytest.fixture
def no_planning(monkeypatch):
    """Planning fails the test, wherever a command plans from (a run through strategy.remembered_plan)."""
    import pipesched.cli.tools
    import pipesched.strategy

    for module in (pipesched.strategy, pipesched.cli.tools):
        monkeypatch.setattr(module, "make_plan", _NoWork("planning"))


# -- the inputs, each refused before planning -----------------------------------------------


def test_export_of_a_huge_schedule_is_refused_before_planning(capsys, no_planning):
    err = _refused(capsys, "export", "--strategy", "gpipe", "--devices", "100000", "--microbatches", "1000")
    # 3 actions (F, I, W) x 100,000 stages x 1,000 micro-batches, by hand
    assert "--devices 100000 x --microbatches 1000 x --chunks 1 makes a schedule of up to 300,000,000 actions" in err
    assert "more than the 4,000,000 pipesched plans for one step; use fewer devices, micro-batches or chunks" in err


def test_a_v_schedule_with_more_stages_than_layers_is_refused_before_planning(capsys, no_planning):
    err = _refused(capsys, "run", "--strategy", "zb-v", "--devices", "3000", "--no-compute")
    assert (
        "strategy 'zb-v' plans 6000 stages on --devices 3000 and --chunks 2 but --layers 128,256x10,10 has "
        "only 11 layers; use fewer devices or chunks, or more layers"
    ) in err


def test_run_with_more_devices_than_layers_is_refused_before_planning(capsys, no_planning):
    err = _refused(capsys, "run", "--devices", "100000", "--no-compute")
    assert "strategy 'gpipe' plans 100000 stages on --devices 100000 but --layers 128,256x10,10 has only 11" in err


def test_balance_with_more_devices_than_layers_is_refused_before_planning(capsys, no_planning):
    assert "plans 100000 stages on --devices 100000" in _refused(capsys, "balance", "--devices", "100000")


def test_compare_plans_only_what_passes_the_checks(capsys, monkeypatch):
    import pipesched.strategy

    planned = []

    def spy(strategy, devices, microbatches, chunks=1):
        planned.append(strategy.name)
        return make_plan(strategy, devices, microbatches, chunks)

    monkeypatch.setattr(pipesched.strategy, "make_plan", spy)
    status, out, err = _run(capsys, "compare", "--devices", "100000", "--no-compute")
    assert status == 2 and out == ""
    assert err.splitlines()[-1] == "pipesched: error: no strategy can run this configuration; see the notes above"
    # the one-stage strategies have more stages than layers; interleaved and the V schedules, with 2 chunks,
    # 4,800,000 actions; only dp (one stage, 2,400,000 actions) is handed to its plan, which refuses M < K
    for name in ("gpipe", "1f1b", "zb-h1", "zb-h2"):
        assert f"note: {name} left out of the default comparison: strategy '{name}' plans 100000 stages" in err
    for name in ("interleaved", "zb-v", "dualpipev"):
        assert (
            f"note: {name} left out of the default comparison: --devices 100000 x --microbatches 8 x "
            "--chunks 2 makes a schedule of up to 4,800,000 actions" in err
        )
    assert "use at least 100000 micro-batches" in err
    assert planned == ["dp"]


def test_formulas_refuses_what_no_command_would_run_and_pages_of_digits(capsys):
    err = _refused(capsys, "formulas", "--devices", "100000", "--microbatches", "10000000")
    assert "makes a schedule of up to 6,000,000,000,000 actions" in err  # 3 x 1e5 x 1e7 x 2 chunks
    err = _refused(capsys, "formulas", "--devices", "2000", "--microbatches", "8")
    assert (
        "--devices 2000 would list 2,000 in-flight counts per strategy; formulas lists at most 1024 devices, "
        "so give --devices 1024 or fewer"
    ) in err
    status, out, _ = _run(capsys, "formulas", "--devices", "1024", "--microbatches", "8", "--json")
    assert status == 0 and len(json.loads(out)["strategies"]["gpipe"]["peak_inflight_microbatches"]) == 1024


def test_a_model_that_cannot_fit_is_refused_before_any_array_is_built(capsys, monkeypatch, no_planning):
    monkeypatch.setattr(limits, "machine_memory", lambda: 24 * GiB)
    monkeypatch.setattr(Model, "from_sizes", _NoWork("building the model"))
    err = _refused(capsys, "run", "--layers", "20000x5", "--batch", "20000", "--devices", "2")
    # by hand: 4 layers of (20000 + 1) x 20000 float64 = 12,800,640,000 B each for parameters, gradients and
    # the reference's gradients; inputs 20000 x 20000 x 8 = 3.2e9 B; the reference keeps 4 outputs of
    # 20000 x 20000 for the whole batch, 12.8e9 B: 54,401,920,000 B = 50.67 GiB
    assert (
        "--layers 20000x5 with --batch 20000 needs at least 50.67 GiB of arrays (parameters 11.92 GiB, "
        "gradients 11.92 GiB, data 2.98 GiB, activations 11.92 GiB, reference gradients 11.92 GiB) but this "
        "machine has 24.00 GiB; use --no-compute, fewer or narrower --layers, or a smaller --batch"
    ) in err
    # without NumPy nothing is built, so nothing is refused for memory
    limits.check_memory(RunConfig(layers="20000x5", batch=20000, devices=2, compute=False))


def test_compare_counts_every_prepared_model(monkeypatch):
    # a machine with room for one run's arrays but not for eight runs' models, data and gradients
    config = RunConfig(layers="8,10,2", batch=4, microbatches=2, devices=2, reference=False)
    one = sum(array_bytes([8, 10, 2], 4, 2, reference=False).values())
    monkeypatch.setattr(limits, "machine_memory", lambda: one + 100)
    run(config)
    with pytest.raises(ConfigError, match=r"for 8 runs prepared together"):
        compare(config, BUILTINS)


def test_a_study_is_checked_by_key_before_any_run_is_prepared(tmp_path, capsys, monkeypatch):
    collect_module = importlib.import_module("pipesched.report.collect")  # the package exports a function of that name
    monkeypatch.setattr(collect_module, "prepare", _NoWork("preparing a run"))
    study = tmp_path / "big.toml"
    study.write_text("[model]\nbatch = 2000000\n[sweep]\nmicrobatches = [2, 2000000]\n")
    err = _refused(capsys, "report", str(study), "-o", str(tmp_path / "out"))
    # 3 x 4 devices x 2,000,000 micro-batches x 2 chunks (the V schedules)
    assert (
        "[hardware].devices 4 x [sweep].microbatches 2000000 x chunks 2 makes a schedule of up to "
        "48,000,000 actions" in err
    )
    monkeypatch.setattr(limits, "machine_memory", lambda: 10**6)
    study.write_text('[model]\nlayers = "64x9"\n')
    err = _refused(capsys, "report", str(study), "-o", str(tmp_path / "out"))
    # 2 partitions x 15 strategies (the fourteen built-ins and auto), and the training run
    assert "[model].layers 64x9 with [model].batch 32 needs at least" in err and "for 31 runs prepared together" in err
    assert not (tmp_path / "out").exists()


# -- the stage count a strategy declares, without planning -------------------------------------------


@settings(max_examples=40)
@given(
    name=st.sampled_from(sorted(available_strategies())),
    devices=st.integers(1, 6),
    microbatches=st.integers(1, 14),
    chunks=st.integers(1, 3),
)
def test_every_builtin_declares_the_stages_it_plans(name, devices, microbatches, chunks):
    strategy = load_strategy(name)
    chunks = chunks if name in LOOPED else getattr(strategy, "default_chunks", 1)
    try:
        schedule = make_plan(strategy, devices, microbatches, chunks)
    except StrategyError:
        return  # a configuration the strategy refuses (dp: M < K; dualpipev: M < 2K; dualpipe: K odd)
    assert planned_stages(strategy, devices, chunks) == schedule.num_stages


def test_a_plugin_without_stages_has_v_per_device_and_a_wrong_count_is_caught_after_planning(tmp_path):
    class Replicated:  # one stage on every device, as data parallelism, but without declaring it
        name = "replicated"

        def plan(self, devices, microbatches, chunks=1):
            return Schedule([[f"0F{d}", f"0B{d}"] for d in range(devices)])  # device d: micro-batch d

    assert planned_stages(Replicated(), 12, 1) == 12
    with pytest.raises(ConfigError, match="plans 12 stages on --devices 12"):
        run(RunConfig(strategy=Replicated(), devices=12, microbatches=12, batch=12, compute=False))

    class Lying(Replicated):  # says one stage, plans one per device
        def stages(self, devices, chunks=1):
            return 1

        def plan(self, devices, microbatches, chunks=1):
            return Schedule(
                [
                    [f"{d}F{m}" for m in range(microbatches)] + [f"{d}B{m}" for m in range(microbatches)]
                    for d in range(devices)
                ]
            )

    with pytest.raises(ConfigError, match="plans 12 stages on --devices 12 but --layers 128,256x10,10 has only 11"):
        run(RunConfig(strategy=Lying(), devices=12, compute=False))


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "returned 0; return a whole number of at least 1"),
        ("2", "returned '2'"),
        (ZeroDivisionError, "failed in stages()"),
    ],
)
def test_a_broken_stages_method_is_named(value, message):
    class Broken:
        name = "broken"

        def stages(self, devices, chunks=1):
            if value is ZeroDivisionError:
                return 1 // 0
            return value

        def plan(self, devices, microbatches, chunks=1):
            raise AssertionError("not planned")

    with pytest.raises(StrategyError, match=f"strategy 'broken' .*{message}"):
        planned_stages(Broken(), 4)


# -- a MemoryError is the machine's limit, not the plug-in's fault ------------------------------------


def test_a_memory_error_while_planning_is_not_blamed_on_the_plugin(tmp_path, capsys):
    plugin = tmp_path / "hungry.py"
    plugin.write_text(
        "class Hungry:\n    name = 'hungry'\n"
        "    def plan(self, devices, microbatches, chunks=1):\n        raise MemoryError\n"
    )
    err = _refused(capsys, "export", "--strategy", f"{plugin}:Hungry", "--devices", "4")
    assert (
        "strategy 'hungry' (devices=4, microbatches=8, chunks=1) ran out of this machine's memory while "
        "planning, so the schedule is too large for this machine; use fewer devices, micro-batches or chunks"
    ) in err
    assert "fix the plug-in" not in err


def test_a_plan_past_the_limit_is_refused_before_it_is_validated(monkeypatch):
    import pipesched.strategy

    monkeypatch.setattr(pipesched.strategy, "validate", _NoWork("validating"))
    monkeypatch.setattr(pipesched.strategy, "MAX_ACTIONS", 15)
    with pytest.raises(StrategyError, match=r"planned 16 actions, more than the 15 pipesched simulates"):
        make_plan(load_strategy("gpipe"), 2, 4)  # 2 devices x 4 micro-batches x (F, B)


def test_a_memory_error_during_a_run_is_one_sentence(capsys, monkeypatch):
    import pipesched.cli.runs

    def exhausted(config):
        raise MemoryError

    monkeypatch.setattr(pipesched.cli.runs, "run", exhausted)
    err = _refused(capsys, "run")
    assert "this run does not fit in this machine's memory; use --no-compute" in err


# -- the memory bound is a lower bound: a real run allocates at least that much --------------------------


@settings(max_examples=12)
@given(
    widths=st.lists(st.integers(1, 40), min_size=3, max_size=6),
    per=st.integers(1, 6),
    microbatches=st.integers(1, 4),
    reference=st.booleans(),
    remat=st.sampled_from(["never", "always"]),
    name=st.sampled_from(["gpipe", "1f1b", "zb-h1"]),
)
def test_the_memory_bound_is_below_what_numpy_really_allocates(widths, per, microbatches, reference, remat, name):
    devices = min(2, len(widths) - 1)
    batch = per * microbatches
    config = RunConfig(
        layers=",".join(map(str, widths)),
        batch=batch,
        microbatches=microbatches,
        devices=devices,
        strategy=name,
        reference=reference,
        remat=remat,
        cost="unit",
    )
    bound = sum(array_bytes(widths, batch, microbatches, reference, remat).values())
    tracemalloc.start()  # NumPy reports its array buffers to tracemalloc
    try:
        run(config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= bound


def test_the_parameter_bytes_are_the_models():
    widths = [7, 5, 3, 2]
    model = Model.from_sizes(widths)
    assert array_bytes(widths, 8, 2, reference=False)["parameters"] == sum(w.nbytes + b.nbytes for w, b in model.params)
    x = np.zeros((8, widths[0]))
    assert array_bytes(widths, 8, 2, reference=False)["data"] == x.nbytes


def test_the_limit_is_one_number_for_every_command(capsys):
    # K x M x v x 3 just past the limit is refused alike by run, export and formulas; just under it passes the check
    k, m = 4, MAX_ACTIONS // (3 * 4) + 1
    for argv in (["run", "--no-compute", "--batch", str(m)], ["export"], ["formulas", "--chunks", "1"]):
        err = _refused(capsys, *argv, "--devices", str(k), "--microbatches", str(m))
        assert f"makes a schedule of up to {3 * k * m:,} actions" in err
    limits.check_actions(k, m - 1, 1)
