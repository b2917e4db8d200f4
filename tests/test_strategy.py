"""Strategy plug-ins: discovery through entry points, loading from files, and the checks on load and plan."""

import pytest

from pipesched import RunConfig, Schedule, StrategyError, available_strategies, load_strategy, make_plan, run


def test_builtin_gpipe_is_found_through_the_entry_point_group():
    assert available_strategies()["gpipe"] == "pipesched.strategies.gpipe:GPipe"
    assert load_strategy("gpipe").name == "gpipe"


def test_the_entry_points_are_read_once_and_again_when_the_path_changes(tmp_path, monkeypatch):
    """Reading every distribution's metadata costs a small run's time: a sweep must not pay it per point. A plug-in
    installed on a new path entry is still found."""
    import pipesched.strategy as strategy

    reads = []
    real = strategy.entry_points
    monkeypatch.setattr(strategy, "entry_points", lambda **kw: reads.append(kw) or real(**kw))
    strategy._registered_on.cache_clear()
    for name in ("gpipe", "1f1b", "gpipe"):
        assert load_strategy(name).name == name
    assert "zb-h1" in available_strategies() and len(reads) == 1
    with pytest.raises(StrategyError, match="unknown strategy 'mirror'"):
        load_strategy("mirror")
    # a distribution on a new sys.path entry, declaring a strategy in the group, as pip would install it
    (tmp_path / "mirror_plugin.py").write_text(PLUGIN.replace('"reverse"', '"mirror"'))
    info = tmp_path / "mirror_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mirror-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pipesched.strategies]\nmirror = mirror_plugin:Reverse\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_strategy("mirror").name == "mirror" and len(reads) == 2
    assert available_strategies()["mirror"] == "mirror_plugin:Reverse"


def test_no_global_strategies_module_is_installed(tmp_path):
    # Whatever the install (a wheel, or pip install -e), a fresh interpreter outside the checkout
    # finds the built-ins under pipesched.strategies and no top-level `strategies` at all.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import importlib.util, pipesched.strategies.gpipe; print(importlib.util.find_spec('strategies') is None)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "True"


PLUGIN = '''
from pipesched import Action, Schedule

class Reverse:
    """GPipe, but backwards run in forward order."""
    name = "reverse"
    def plan(self, devices, microbatches, chunks=1):
        return Schedule([[Action(d, "F", m) for m in range(microbatches)]
                         + [Action(d, "B", m) for m in range(microbatches)] for d in range(devices)])
'''


def test_a_plugin_file_runs_like_a_builtin(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(PLUGIN)
    result = run(RunConfig(strategy=f"{path}:Reverse", devices=2, microbatches=4, layers="6x4", batch=8, cost="unit"))
    assert result.schedule.actions[0][-4:] == Schedule.parse(["0B0 0B1 0B2 0B3"]).actions[0]
    assert result.grad_rel_err < 1e-12
    assert result.bubble_formula is None  # the plug-in states no closed form


@pytest.mark.parametrize(
    "source, attr, message",
    [
        ("raise RuntimeError('boom')", "X", r"failed to import \(RuntimeError: boom\); fix the error in that file"),
        ("class A: pass", "B", r"has no 'B'; name one of its classes: A"),
        ("class A: pass", "A", r"has no string attribute 'name'"),
        ("class A:\n    name = 'a'", "A", r"has no plan\(devices, microbatches, chunks=1\) method"),
        ("class A:\n    def __init__(self, k): pass", "A", r"could not be created without arguments \(TypeError"),
    ],
)
def test_broken_plugin_files_are_named(tmp_path, source, attr, message):
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(StrategyError, match=message):
        load_strategy(f"{path}:{attr}")


def test_a_missing_plugin_file_is_named(tmp_path):
    with pytest.raises(StrategyError, match=r"strategy file '.*nope.py' does not exist"):
        load_strategy(f"{tmp_path}/nope.py:X")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(StrategyError, match=r"unknown strategy 'gpip'; use one of .*gpipe"):
        load_strategy("gpip")


class _Returns:
    name = "returns"

    def __init__(self, value):
        self.value = value

    def plan(self, devices, microbatches, chunks=1):
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def test_a_registered_strategy_s_plan_is_kept_for_the_same_sizes_within_a_budget(tmp_path, monkeypatch):
    import pipesched.strategy as strategy

    monkeypatch.setattr(strategy, "_remembered", strategy._Plans())
    monkeypatch.setattr(strategy, "REMEMBERED_ACTIONS", 60)  # GPipe on 2 devices: 4 M actions
    gpipe = load_strategy("gpipe")

    def plan(m, name="gpipe"):
        return strategy.remembered_plan(name, gpipe, 2, m)

    first = plan(4)
    assert first == make_plan(gpipe, 2, 4) and plan(4) is first  # kept: the same object
    assert plan(8) is plan(8) and plan(8) != first  # 16 + 32 actions kept
    assert plan(4) is first  # used again: now the newest, so M = 8 is the oldest
    eight, twelve = plan(8), plan(12)  # 48 more: past 60, so M = 4 and M = 8 (the oldest) go
    assert plan(12) is twelve and plan(8) is not eight  # planned again, pushing M = 12 out
    assert plan(16) is not plan(16)  # 64 actions: larger than the budget alone, never kept
    # an instance and a file's class are planned every time: they may hold state or change
    assert plan(4, gpipe) is not plan(4, gpipe)
    path = tmp_path / "mine.py"
    path.write_text(PLUGIN)
    spec = f"{path}:Reverse"
    assert plan(4, spec) is not plan(4, spec)
    with pytest.raises(StrategyError, match="cannot plan"):  # a refusal is raised each time, never kept
        strategy.remembered_plan("gpipe", gpipe, 2, 4, chunks=2)
    assert [key[2:] for key in strategy._remembered.plans] == [(2, 8, 1)]  # (K, M, chunks)
    assert strategy._remembered.actions == 32


@pytest.mark.parametrize(
    "value, message",
    [
        ([["0F0", "0B0"]], r"returned a list, not a pipesched.Schedule"),
        (Schedule.parse(["0F0"]), r"planned an invalid schedule: stage 0, micro-batch 0 has no 0B0"),
        (
            ValueError("needs chunks 2"),
            r"'returns' \(devices=1, microbatches=1, chunks=1\) cannot plan: needs chunks 2",
        ),
        (KeyError("k"), r"failed while planning \(KeyError: 'k'\); fix the plug-in"),
    ],
)
def test_plans_are_checked_and_failures_name_the_plugin(value, message):
    with pytest.raises(StrategyError, match=message):
        make_plan(_Returns(value), devices=1, microbatches=1)


def test_gpipe_refuses_chunks_with_a_reason():
    with pytest.raises(StrategyError, match=r"gpipe places one stage per device, so --chunks 2 cannot apply"):
        make_plan(load_strategy("gpipe"), 2, 2, chunks=2)


class _Bubble(_Returns):
    def __init__(self, bubble):
        super().__init__(Schedule.parse(["0F0 0B0"]))
        self._bubble = bubble

    def bubble(self, devices, microbatches, chunks=1):
        if isinstance(self._bubble, Exception):
            raise self._bubble
        return self._bubble


@pytest.mark.parametrize(
    "value, message",
    [
        (ZeroDivisionError("x"), r"failed in bubble\(\) \(ZeroDivisionError: x\); fix the plug-in"),
        ("0.3", r"bubble\(\) returned '0.3'; return a fraction between 0 and 1, or None"),
        (1.5, r"bubble\(\) returned 1.5"),
    ],
)
def test_a_broken_bubble_formula_is_named(value, message):
    from pipesched.strategy import closed_form_bubble

    with pytest.raises(StrategyError, match=message):
        closed_form_bubble(_Bubble(value), 1, 1)


def test_a_plugin_calling_exit_is_an_error_not_an_exit():
    with pytest.raises(StrategyError, match=r"failed while planning \(SystemExit"):
        make_plan(_Returns(SystemExit(0)), devices=1, microbatches=1)
