"""The times file: its schema, its rules (B = I + W, R defaults to F, units, [default]) and each bad input."""

import pytest

from pipesched.errors import ConfigError
from pipesched.partition import explicit
from pipesched.times import StageTimes, load_times, parse_times


def _load(tmp_path, text, name="times.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_times(str(path))


def _error(tmp_path, text, name="times.toml"):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_times(str(path)).stage_times(4)
    return str(info.value).replace(str(tmp_path) + "/", "")


FULL = """
time_unit = "ms"
rows = 4

[default]
F = 1.0
B = 2.0
send = 0.05
activation_bytes = 1048576

[stage.3]
F = 1.5
I = 1.25
W = 0.5
R = 2.0

[stage.3.spread]
F = 0.01

[about]
tool = "hand"
repeats = 5
"""


def test_full_schema_reads_as_written(tmp_path):
    # hand-derived: ms -> s; [default]'s B split evenly; stage 3 overrides F, the whole backward and R
    times = _load(tmp_path, FULL).stage_times(4)
    default = StageTimes(F=1e-3, I=1e-3, W=1e-3, R=1e-3, send=5e-5, activation_bytes=1048576)
    assert times[:3] == [default] * 3
    assert times[3] == StageTimes(F=1.5e-3, I=1.25e-3, W=0.5e-3, R=2e-3, send=5e-5, activation_bytes=1048576)
    assert times[3].B == pytest.approx(1.75e-3)
    assert _load(tmp_path, FULL).scale(2) == 0.5


@pytest.mark.parametrize(("unit", "seconds"), [("s", 1.0), ("ms", 1e-3), ("us", 1e-6)])
def test_time_units(tmp_path, unit, seconds):
    times = _load(tmp_path, f'time_unit = "{unit}"\n[default]\nF = 3\nI = 2\nW = 1\n').stage_times(1)
    assert (times[0].F, times[0].I, times[0].W, times[0].R) == pytest.approx(
        (3 * seconds, 2 * seconds, seconds, 3 * seconds)
    )
    assert times[0].send is None and times[0].activation_bytes is None


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("B = 4", (2.0, 2.0)),  # only B: I = W = B / 2
        ("B = 4\nI = 3", (3.0, 1.0)),  # W = B - I
        ("B = 4\nW = 3", (1.0, 3.0)),  # I = B - W
        ("B = 4\nI = 1\nW = 3", (1.0, 3.0)),  # consistent
        ("I = 1\nW = 3", (1.0, 3.0)),
    ],
)
def test_backward_rules(tmp_path, keys, expected):
    times = _load(tmp_path, f'time_unit = "s"\n[stage.0]\nF = 1\n{keys}\n').stage_times(1)
    assert (times[0].I, times[0].W) == pytest.approx(expected)


def test_stage_backward_replaces_default_backward(tmp_path):
    # the default's W must not leak into a stage that gives only B
    text = 'time_unit = "s"\n[default]\nF = 1\nI = 1\nW = 3\n[stage.1]\nB = 2\n'
    times = _load(tmp_path, text).stage_times(2)
    assert (times[0].I, times[0].W) == (1.0, 3.0)
    assert (times[1].F, times[1].I, times[1].W) == (1.0, 1.0, 1.0)


def test_a_stage_that_times_its_forward_recomputes_in_that_time(tmp_path):
    # R defaults to F: the stage's own F, not the default table's R (a second reading's find)
    text = 'time_unit = "s"\n[default]\nF = 1\nR = 1\nB = 2\n[stage.1]\nF = 5\n[stage.2]\nF = 4\nR = 3\n'
    times = _load(tmp_path, text).stage_times(3)
    assert [t.R for t in times] == [1.0, 5.0, 3.0]


def test_layer_tables_sum_into_stages(tmp_path):
    text = (
        'time_unit = "s"\n[default]\nF = 1\nI = 2\nW = 3\nsend = 0.5\n'
        "[layer.2]\nF = 10\nI = 20\nW = 30\nsend = 7\nactivation_bytes = 64\n"
    )
    times = _load(tmp_path, text)
    stages = times.stage_times(2, explicit([1, 3], 4, 2))
    assert stages[0] == StageTimes(F=1, I=2, W=3, R=1, send=0.5)
    # layers 1, 2, 3: sums; the send is the last layer's (layer 3 uses the default)
    assert stages[1] == StageTimes(F=12, I=24, W=36, R=12, send=0.5)
    stages = times.stage_times(2, explicit([3, 1], 4, 2))
    assert stages[0].send == 7 and stages[0].activation_bytes == 64 and stages[0].F == 12


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'time_unit = "ms"\n[stage.3]\nF = 1\nB = 2\nW = -1\n',
            "times.toml: [stage.3].W: -1 is not a positive time; give the measured duration in time_unit, e.g. 1.5",
        ),
        ('time_unit = "ms"\n[default]\nF = nan\nB = 1\n', "times.toml: [default].F: NaN is not a positive time"),
        ('time_unit = "ms"\n[default]\nF = inf\nB = 1\n', "times.toml: [default].F: Infinity is not a positive time"),
        ('time_unit = "ms"\n[default]\nF = 1\nB = 1\nsend = -2\n', "[default].send: -2 is not a time of zero or more"),
        ('time_unit = "min"\n[default]\nF = 1\nB = 1\n', "times.toml: time_unit: \"min\" is not one of 's', 'ms'"),
        ("[default]\nF = 1\nB = 1\n", "times.toml: time_unit is missing; add it"),
        ('time_unit = "s"\n[default]\nF = 1\nB = 1\nQ = 1\n', "times.toml: [default].Q is not a key of [default]; use"),
        ('time_unit = "s"\nsteps = 1\n[default]\nF = 1\nB = 1\n', "times.toml: steps is not a key of the top level"),
        ('time_unit = "s"\n[default]\nF = "1"\nB = 1\n', 'times.toml: [default].F: "1" is not a number'),
        ('time_unit = "s"\n[stage.0]\nF = 1\nB = 1\n', "times.toml: stage 1 has no times; add a [stage.1] table or a"),
        ('time_unit = "s"\n[default]\nB = 1\n', "times.toml: stage 0 has no forward time F; add F to [default]"),
        ('time_unit = "s"\n[default]\nF = 1\n', "times.toml: stage 0 has no backward time; add B, or I and W, to"),
        ('time_unit = "s"\n[default]\nF = 1\nI = 1\n', "times.toml: [default] gives I but not W; give both I and W"),
        ('time_unit = "s"\n[default]\nF = 1\nB = 2\nI = 2\n', "[default].I = 2 is not less than B = 2; B is I + W"),
        ('time_unit = "s"\n[default]\nF = 1\nB = 2\nI = 1\nW = 2\n', "[default] has B = 2 but I + W = 3"),
        ('time_unit = "s"\n[default]\nF = 1\nB = 1\n[stage.9]\nF = 1\n', "[stage.9] names a stage the schedule"),
        ('time_unit = "s"\n[stage.x]\nF = 1\nB = 1\n', "times.toml: [stage.x] is not a stage number"),
        (
            'time_unit = "s"\n[default]\nF = 1\nB = 1\n[stage.01]\nF = 7\n',
            "[stage.01] has a leading zero; write [stage.1]",
        ),
        ('time_unit = "s"\n[stage.0]\nF = 1\nB = 1\n[layer.0]\nF = 1\nB = 1\n', "has both [stage.N] and [layer.N]"),
        ('time_unit = "s"\n', "times.toml: has no times; add a [default] table"),
        ('time_unit = "s"\nrows = 0\n[default]\nF = 1\nB = 1\n', "rows: 0 is not a micro-batch size of at least 1"),
        ('time_unit = "s"\n[default]\nF = 1\nB = 1\nactivation_bytes = -1\n', "-1 is not a byte count of zero or more"),
        ('time_unit = "s"\nstage = 3\n', "times.toml: [stage]: 3 is not a table; write it as [stage]"),
        ('time_unit = "s"\n[default\n', "times.toml: not valid TOML"),
    ],
)
def test_bad_input_is_one_sentence(tmp_path, text, message):
    assert message in _error(tmp_path, text)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="times file .*nope.toml' does not exist; give the path to a .toml file"):
        load_times(str(tmp_path / "nope.toml"))


def test_layer_file_needs_partition_and_layers():
    times = parse_times({"time_unit": "s", "layer": {"5": {"F": 1, "B": 2}}, "default": {"F": 1, "B": 2}}, "t.toml")
    with pytest.raises(ConfigError, match=r"t.toml: \[layer.5\] names a layer the model does not have \(it has 4"):
        times.stage_times(2, explicit([2, 2], 4, 2))
    with pytest.raises(ConfigError, match="need the model's partition"):
        times.stage_times(2)


def test_a_file_measured_on_another_model_is_refused(tmp_path):
    # pipesched profile writes the model in [about]; widths compare as widths, decoders by name and seq_len
    times = _load(tmp_path, 'time_unit = "s"\n[default]\nF = 1\nB = 2\n[about]\nlayers = "8x9"\n')
    times.check_model("8,8x8", None, None)  # the same eight 8->8 layers, spelled another way
    with pytest.raises(ConfigError, match=r"measured with --layers 8x9, but the run has --layers 8x10"):
        times.check_model("8x10", None, None)
    decoder = _load(tmp_path, 'time_unit = "s"\n[default]\nF = 1\nB = 2\n[about]\nmodel = "tiny-gpt"\nseq_len = 32\n')
    decoder.check_model(None, "tiny-gpt", 32)
    with pytest.raises(ConfigError, match=r"\[about\].seq_len says .* --seq-len 32, but the run has --seq-len 16"):
        decoder.check_model(None, "tiny-gpt", 16)
    _load(tmp_path, 'time_unit = "s"\n[default]\nF = 1\nB = 2\n').check_model("4x3", None, None)  # no [about]


def test_stage_times_on_another_split_are_refused(tmp_path):
    # pipesched profile --devices writes the split it measured in [about].partition (a new user's find)
    text = 'time_unit = "s"\n[default]\nF = 1\nB = 2\n[about]\npartition = "3,3,3,2"\n'
    times = _load(tmp_path, text)
    times.check_partition([3, 3, 3, 2])
    with pytest.raises(ConfigError, match=r"measured on --partition 3,3,3,2, but the run splits its layers 2,3,3,3"):
        times.check_partition([2, 3, 3, 3])
