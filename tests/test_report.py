"""Reports: well-formed files, Chrome traces with one event per action, studies checked by key path,
and the committed default report reproduced."""

import csv
import json
import os
import pathlib
from dataclasses import replace
from html.parser import HTMLParser

import pytest
from PIL import Image

from pipesched.cli import main
from pipesched.errors import ConfigError
from pipesched.pipeline import BUILT_INS
from pipesched.report import collect, default_study, load_study
from pipesched.units import format_bytes

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMALL = """
title = "small"
[model]
layers = "8,16x4,4"
batch = 8
[hardware]
devices = 2
link_bandwidth = 1e9
[compare]
strategies = ["gpipe", "zb-h1", "dp"]
microbatches = 4
partitions = ["uniform", "balanced"]
[sweep]
microbatches = [2, 4]
devices = [1, 2]
[train]
steps = 2
"""


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.svgs, self.tags = [], 0, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.svgs += tag == "svg"
        self.refs += [v for k, v in attrs if k in ("href", "src") and tag in ("a", "img", "link", "script")]


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    study = folder / "small.toml"
    study.write_text(SMALL)
    out = folder / "out"
    assert main(["report", str(study), "-o", str(out)]) == 0
    return out


def test_the_page_is_self_contained_and_references_only_files_that_exist(small_report):
    names = {p.name for p in small_report.iterdir()}
    assert {"index.html", "report.md", "metrics.json", "study.toml", "figures"} <= names
    assert {"trace-gpipe.json", "trace-zb-h1.json", "trace-dp.json"} <= names
    parser = _Links()
    parser.feed((small_report / "index.html").read_text())
    assert parser.svgs == 7 and "table" in parser.tags  # every figure inline
    for ref in parser.refs:
        assert not ref.startswith(("http:", "https:", "//")), ref  # no network fetches
        assert ref.startswith("data:") or (small_report / ref).exists(), ref


def test_markdown_figures_exist_and_every_png_opens(small_report):
    md = (small_report / "report.md").read_text()
    figures = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(figures) == 7
    for figure in figures:
        with Image.open(small_report / figure) as image:
            image.verify()
    assert md.count("| gpipe |") == 2  # uniform and balanced rows


def test_each_trace_has_one_complete_event_per_action_and_transfer(small_report):
    for name in ("gpipe", "zb-h1", "dp"):
        events = json.loads((small_report / f"trace-{name}.json").read_text())["traceEvents"]
        spans = [e for e in events if e["ph"] == "X" and e["pid"] == 0]
        actions = {"gpipe": 2 * 2 * 4, "zb-h1": 2 * 3 * 4, "dp": 2 * 4}[name]  # K=2 stages/devices, M=4
        assert len([e for e in spans if e["cat"] != "R"]) == actions
        assert len({(e["tid"], e["name"]) for e in spans}) == len(spans)  # each once
        for device in {e["tid"] for e in spans}:
            mine = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if e["tid"] == device)
            assert all(a_end <= b_start + 1e-6 for (_, a_end), (b_start, _) in zip(mine, mine[1:]))
        transfers = [e for e in events if e["ph"] == "X" and e["pid"] == 1]
        expected = {"gpipe": 2 * 4, "zb-h1": 2 * 4, "dp": 2 * 2 * 1}[name]  # one boundary both ways; dp's ring
        assert len(transfers) == expected


def test_the_default_study_file_is_the_built_in_study():
    assert load_study(str(ROOT / "reports" / "default.toml")) == default_study()


def _same(a, b, path=""):
    """Equal, except numbers NumPy's BLAS sums (losses, gradient errors), which may differ in the last bits."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif "loss" in path or "train" in path:
        assert a == pytest.approx(b, rel=1e-9), path
    elif "grad_rel_err" in path:
        assert a < 1e-12 and b < 1e-12, path
    else:
        assert a == b, path


def test_the_committed_default_report_is_reproduced(tmp_path, capsys):
    assert main(["report", str(ROOT / "reports" / "default.toml"), "-o", str(tmp_path / "default")]) == 0
    fresh = json.loads((tmp_path / "default" / "metrics.json").read_text())
    committed = json.loads((ROOT / "reports" / "default" / "metrics.json").read_text())
    _same(fresh, committed)
    # the summary it prints: each column is what its heading says
    header, first = capsys.readouterr().out.splitlines()[:2]
    assert header.split() == ["strategy", "partition", "step", "bubble", "back", "to", "back", "peak", "memory"]
    gpipe = fresh["compare"][0]
    assert first.split()[-1] == format_bytes(max(gpipe["peak_memory_bytes"])).split()[-1]
    assert first.split()[-2] == format_bytes(max(gpipe["peak_memory_bytes"])).split()[0]
    assert first.split()[-3] == f"{gpipe['steady_bubble_fraction']:.4f}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[modell]\nlayers = '4,4'", "[modell] is not a key of the top level; use one of title, model"),
        ("[hardware]\nlink_bandwidth = -1", "[hardware].link_bandwidth: -1 is not a positive finite number"),
        ("[hardware]\ndevices = 'four'", '[hardware].devices: "four" is not a whole number of at least 1'),
        ("[hardware]\ndevices = true", "[hardware].devices: true is not a whole number"),
        ("title = ''", 'title: "" is not a title'),
        ("[compare]\nstrategies = ['gpipe', 'gpipe']", "names a strategy twice"),
        ("[compare]\npartitions = ['2,3,3,4']", "[compare].partitions: '2,3,3,4' does not sum to the 11 layers"),
        ("[compare]\npartitions = ['fancy']", "[compare].partitions: 'fancy' is neither"),
        ("[compare]\nmicrobatches = 2", "[compare].microbatches: dp gives every device its own micro-batches"),
        ("[compare]\nstrategies = ['gpipe', 'nope']", '[compare].strategies: "nope" is not one of'),
        ("[compare]\nmicrobatchs = 4", "[compare].microbatchs is not a key of [compare]"),
        ("[sweep]\ndevices = [1, 20]", "[sweep].devices: 20 devices are more than the 11 layers"),
        ("[hardware]\ndevice_memory = 'lots'", '[hardware].device_memory: "lots" is not a size'),
        ("[model]\nlayers = '4,x'", '[model].layers: "4,x" is malformed'),
        ("[model\n", "not valid TOML"),
        # the value as the file wrote it (2.0, not the 2 a check after the type check would see)
        ("[model]\nbatch = 2.0", "[model].batch: 2.0 is not a whole number of at least 1"),
        (
            "[compare]\nstrategies = 'gpipe'",
            '[compare].strategies: "gpipe" is not a list; write it in brackets, e.g. ["gpipe"]',
        ),
        ("[sweep]\nchunks = [2, 0]", "[sweep].chunks: 0 is not a whole number of at least 1"),
    ],
)
def test_a_bad_study_names_the_key_and_writes_nothing(tmp_path, capsys, text, message):
    study = tmp_path / "bad.toml"
    study.write_text(text)
    out = tmp_path / "out"
    assert main(["report", str(study), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "bad.toml" in err
    assert sorted(os.listdir(tmp_path)) == ["bad.toml"]  # no output folder, no temporary leftovers


def test_a_missing_study_file(capsys, tmp_path):
    assert main(["report", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_never_imports_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys; from pipesched.cli import main; main(['run', '--no-compute']); print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/").stdout
    assert out.strip().endswith("False")


def test_a_report_never_replaces_a_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["report", "-o", str(tmp_path)]) == 2
    assert "is a folder with other files in it" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_cap_in_a_study_marks_points_instead_of_failing_the_report(tmp_path):
    study = tmp_path / "capped.toml"
    study.write_text(SMALL.replace("link_bandwidth = 1e9", 'link_bandwidth = 1e9\ndevice_memory = "14KiB"'))
    out = tmp_path / "out"
    assert main(["report", str(study), "-o", str(out)]) == 0
    rows = json.loads((out / "metrics.json").read_text())["compare"]
    assert any(r["oom"] for r in rows) and not all(r["oom"] for r in rows)


def test_a_partition_named_by_its_layer_counts_is_costed_at_the_studys_links(tmp_path):
    """``partitions = ["2,3"]`` once passed the sweep's leftover link keywords to ``evaluate`` and failed."""
    study = tmp_path / "counts.toml"
    study.write_text(
        SMALL.replace('partitions = ["uniform", "balanced"]', 'partitions = ["uniform", "2,3"]')
        .replace('strategies = ["gpipe", "zb-h1", "dp"]', 'strategies = ["gpipe"]')
        .replace("microbatches = [2, 4]", "microbatches = [4]")
        .replace("devices = [1, 2]", "devices = [2]")
        .replace("steps = 2", "steps = 1")
    )
    counts = collect(load_study(str(study)), progress=False).partitions["2,3"]
    assert counts.sizes == [2, 3]
    # layers 8-16-16 | 16-16-16-4 on 2 rows (batch 8 / 4 micro-batches): F + B = 3 x 2 x rows x in x out FLOPs
    # at a study's default, pipesched run's: the cpu preset's 73.6 GFLOP/s fp64 peak x 0.5 (README's preset table);
    # the cut sends 2 rows x 16 float64 each way at the study's 1e9 bytes/s
    achieved = 73.6e9 * 0.5
    assert counts.stage_costs == pytest.approx(
        [6 * 2 * (8 * 16 + 16 * 16) / achieved, 6 * 2 * (16 * 16 + 16 * 16 + 16 * 4) / achieved]
    )
    assert counts.link_loads == pytest.approx({(0, 1): 2 * 16 * 8 / 1e9, (1, 0): 2 * 16 * 8 / 1e9})


def test_a_study_compares_a_schedule_file_next_to_it(tmp_path):
    assert main(["export", "--strategy", "zb-h1", "-o", str(tmp_path / "mine.csv")]) == 0
    study = tmp_path / "s.toml"
    study.write_text(
        '[compare]\nstrategies = ["gpipe", "mine.csv"]\npartitions = ["uniform"]\n'
        "[sweep]\nmicrobatches = [8]\ndevices = [1, 4]\n[train]\nsteps = 1\n"
    )
    assert main(["report", str(study), "-o", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["compare"]
    assert rows[1]["strategy"].endswith("mine.csv") and (tmp_path / "out" / "trace-mine.json").exists()
    assert rows[1]["makespan"] < rows[0]["makespan"]  # zb-h1 beats gpipe on the default hardware
    study.write_text('[compare]\nstrategies = ["gone.csv"]\n')
    assert main(["report", str(study), "-o", str(tmp_path / "out2")]) == 2


def test_an_output_folder_that_cannot_be_made_is_named_before_any_run(tmp_path, capsys, monkeypatch):
    import pipesched.report

    def no_runs(*args, **kwargs):
        raise AssertionError("the study ran before the output folder was checked")

    monkeypatch.setattr(pipesched.report, "collect", no_runs)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file where a folder would go")
    assert main(["report", "-o", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"pipesched: error: -o {blocker / 'out'} cannot be made: {blocker} is a file, not a folder; "
        "choose another path\n"
    )
    assert main(["report", "-o", "/proc/pipesched-report"]) == 2  # a folder even root cannot write in
    err = capsys.readouterr().err
    assert "-o /proc/pipesched-report cannot be written: folder /proc refuses new files" in err
    assert ".pipesched-" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_failure_while_writing_names_the_folder_asked_for_and_leaves_nothing(tmp_path):
    from pipesched.report.render import write_folder

    def fill(work):
        open(os.path.join(work, "figures"), "w").close()
        os.makedirs(os.path.join(work, "figures", "x"))  # fails inside the folder built aside

    with pytest.raises(OSError) as failure:
        write_folder(str(tmp_path / "report"), fill)
    assert failure.value.filename == str(tmp_path / "report")
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    with pytest.raises(OSError) as failure:
        write_folder(str(blocker / "report"), fill)
    assert failure.value.filename == str(blocker / "report")


def test_the_default_study_runs_on_the_machine_pipesched_run_assumes():
    """Without hardware keys a study is ``pipesched run``'s machine: the cpu preset's numbers, not 10 GFLOP/s."""
    from pipesched.hardware import flops_model
    from pipesched.pipeline import RunConfig

    study = flops_model(default_study().run_config(), "fp64")
    run = flops_model(RunConfig(devices=4), "fp64")
    # the cpu preset (README's table): 73.6 GFLOP/s fp64 peak at the default efficiency 0.5, 5.12 GB/s, 1 µs
    expected = (73.6e9 * 0.5, 5.12e9, 1e-6)
    assert (study.device_flops, study.link_bandwidth, study.link_latency) == pytest.approx(expected)
    assert (run.device_flops, run.link_bandwidth, run.link_latency) == pytest.approx(expected)


def test_hardware_numbers_a_study_gives_are_used_as_given(tmp_path):
    path = tmp_path / "given.toml"
    path.write_text("[hardware]\ndevice_flops = 1e10\nlink_bandwidth = 1e8\nlink_latency = 1e-4\n")
    from pipesched.hardware import flops_model

    cost = flops_model(load_study(str(path)).run_config(), "fp64")
    assert (cost.device_flops, cost.link_bandwidth, cost.link_latency) == (1e10, 1e8, 1e-4)


PER_DEVICE = """
[model]
layers = "16x9"
batch = 8
[hardware]
devices = 4
device_flops = 2048
link_bandwidth = 1e30
link_latency = 0.0
NODES
[compare]
strategies = ["gpipe"]
microbatches = 4
partitions = ["uniform"]
[sweep]
microbatches = [4]
devices = [1, 2, 4]
[train]
steps = 1
"""


def _gpipe_makespan(forward, backward, microbatches):
    """GPipe with its sends as servers of their own: two flow shops of identical jobs (all forwards, then all
    backwards from the last stage), each lasting Σ p + (M - 1) max p (the permutation flow shop with
    identical jobs; e.g. Pinedo, "Scheduling", 2016, section 6.1)."""
    return sum(forward) + (microbatches - 1) * max(forward) + sum(backward) + (microbatches - 1) * max(backward)


def test_a_node_map_and_device_speeds_apply_to_the_studys_own_device_count_only(tmp_path):
    """node_map and device_speed name 4 devices: the sweep's K = 1, 2 and the one-device training run without them.

    By hand: "16x9" is eight 16 -> 16 layers; M = 4 micro-batches of 2 rows, so a layer's forward is
    2·2·16·16 = 1024 FLOPs, 0.5 s at device_flops = 2048, and its backward 1 s. Sends inside a node are free;
    between the nodes one micro-batch's 2 x 16 fp64 values, 256 B, take 1 s at 256 B/s.
    """
    keys = 'node_map = "0,0,1,1"\ndevice_speed = "2=0.5"\ninter_node_bandwidth = 256\ninter_node_latency = 0.0'
    plain, marked = tmp_path / "plain.toml", tmp_path / "marked.toml"
    plain.write_text(PER_DEVICE.replace("NODES", ""))
    marked.write_text(PER_DEVICE.replace("NODES", keys))
    assert main(["report", str(marked), "-o", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    base = collect(load_study(str(plain)), progress=False).metrics()
    # the plain study: K = 4 stages of two layers, F = 1 s, B = 2 s, free sends: (M + K - 1)(F + B) = 21 s
    assert base["compare"][0]["makespan"] == pytest.approx(21.0, rel=1e-12)
    # the study's own machine, uniform: device 2 at half speed (F = 2 s, B = 4 s), and the send between
    # devices 1 and 2 a 1 s stage of its own in both directions
    (row,) = metrics["compare"]
    assert row["makespan"] == pytest.approx(_gpipe_makespan([1, 1, 1, 2, 1], [2, 4, 1, 2, 2], 4), rel=1e-12)
    assert _gpipe_makespan([1, 1, 1, 2, 1], [2, 4, 1, 2, 2], 4) == 35
    # the speedup sweep (GPipe, balanced): K = 1 and 2 run on one node at full speed, as the plain study:
    # K = 1 holds all eight layers, F = 4 s, B = 8 s: M x 12 = 48 s; K = 2 four each: (4 + 1) x 6 = 30 s.
    # K = 4 is the study's own machine, and balancing leaves the half-speed device one layer (F = 1 s) and
    # splits the other seven 2, 2, 3 (F up to 1.5 s) in some order: 29 s whichever order
    rows = {r["devices"]: r["makespan_study"] for r in metrics["sweep_devices"]}
    assert rows == pytest.approx({1: 48.0, 2: 30.0, 4: _gpipe_makespan([1, 1, 1.5, 1, 1], [2, 3, 1, 2, 2], 4)})
    assert {r["devices"]: r["makespan_study"] for r in base["sweep_devices"]} == pytest.approx({1: 48, 2: 30, 4: 21})
    # training: the pipelined and the one-device run reach the same loss (the full-batch reference)
    assert metrics["train"]["single device"] == pytest.approx(metrics["train"]["pipelined"], rel=1e-12)
    # the report says so under the figures those runs draw
    markdown = (tmp_path / "out" / "report.md").read_text()
    for stem in ("speedup", "training"):
        note = metrics["notes"][stem]
        assert "node_map = '0,0,1,1'" in note and "device_speed = '2=0.5'" in note
        assert markdown.index(note) > markdown.index(f"figures/{stem}.png")
    assert "K = 1, 2 devices" in metrics["notes"]["speedup"] and "notes" not in base


@pytest.mark.parametrize(
    "hardware, message",
    [
        (
            "devices_per_node = 2",
            "[sweep].devices: 3 spans more than one node of 2 devices but is not a multiple of 2; "
            "use multiples of 2 (or fewer than 2), or leave devices_per_node out",
        ),
        ("devices = 3\ndevices_per_node = 2", "[hardware].devices: 3 spans more than one node of 2 devices"),
        ('node_map = "0,0,1"', "[hardware].node_map: '0,0,1' names 3 devices but the run has 4"),
        ('device_speed = "7=0.5"', "[hardware].device_speed: '7=0.5' names device 7"),
        ('preset = "h1000"', "[hardware].preset: 'h1000' is not a preset"),
        ("inter_node_bandwidth = 0.5", "[hardware].inter_node_bandwidth: 0.5 is not a finite rate"),
        ("link_latency = 2", "[hardware].link_latency: "),
    ],
)
def test_a_study_s_hardware_errors_name_key_paths_not_flags(tmp_path, capsys, hardware, message):
    """The default [sweep].devices = [1, 2, 3, 4, 6, 8] is checked against the nodes when the study is read."""
    study = tmp_path / "bad.toml"
    study.write_text(f"[hardware]\n{hardware}\n")
    assert main(["report", str(study), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "--" not in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["bad.toml"]


def test_every_sweep_device_count_that_fills_whole_nodes_is_accepted(tmp_path):
    study = tmp_path / "nodes.toml"
    study.write_text("[hardware]\ndevices_per_node = 2\n[sweep]\ndevices = [1, 2, 4, 6, 8]\n")
    assert load_study(str(study)).sweep.devices == (1, 2, 4, 6, 8)


def test_a_sweep_count_whose_replicas_overfill_a_node_is_refused_when_the_study_is_read(tmp_path, capsys):
    """K = 3 pipeline devices fit a node of 4, but with data_parallel = 2 the run uses 3 x 2 = 6: 1.5 nodes."""
    study = tmp_path / "dp.toml"
    study.write_text("[hardware]\ndevices = 2\ndata_parallel = 2\ndevices_per_node = 4\n[sweep]\ndevices = [1, 2, 3]\n")
    assert main(["report", str(study), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "--" not in err
    assert (
        "[sweep].devices: 3 x [hardware].data_parallel 2 = 6 devices span more than one node of 4 but do not fill "
        "whole nodes; use multiples of 2 (or fewer than 2), or leave devices_per_node out"
    ) in err
    assert sorted(os.listdir(tmp_path)) == ["dp.toml"]
    # pipesched run refuses that run too
    assert main(["run", "--devices", "3", "--data-parallel", "2", "--devices-per-node", "4", "--batch", "64"]) == 2
    assert "--devices 3 x --data-parallel 2 = 6 devices span more than one node of 4" in capsys.readouterr().err


def test_a_study_counts_each_tensor_parallel_group_whole_against_the_nodes(tmp_path):
    """tensor_parallel = 2 on nodes of 4: K = 6 is 12 devices, three whole nodes; K = 3 is 6, one and a half."""
    study = tmp_path / "tp.toml"
    text = '[model]\nmodel = "tiny-gpt"\ncompute = false\nbatch = 8\n[hardware]\ndevices = 2\ntensor_parallel = 2\n'
    text += 'devices_per_node = 4\n[compare]\nstrategies = ["gpipe"]\n'
    text += "[sweep]\nmicrobatches = [4]\ndevices = [1, 2, SWEPT]\n"
    study.write_text(text.replace("SWEPT", "6"))
    assert load_study(str(study)).sweep.devices == (1, 2, 6)
    study.write_text(text.replace("SWEPT", "3"))
    with pytest.raises(ConfigError, match=r"\[sweep\].devices: 3 x \[hardware\].tensor_parallel 2 = 6 devices span"):
        load_study(str(study))


@pytest.mark.parametrize("per_node", [1, 2, 3, 4])
@pytest.mark.parametrize("data_parallel", [1, 2, 3])
def test_a_study_accepts_exactly_the_device_counts_whose_d_x_k_devices_fill_whole_nodes(
    tmp_path, per_node, data_parallel
):
    """Brute force over K = 1..8 (the study's own and its sweep's): the read-time check passes K iff D x K devices
    fit one node or fill whole ones."""
    study = tmp_path / "s.toml"
    accepted = []
    for k in range(1, 9):
        study.write_text(
            f"[hardware]\ndevices = {k}\ndata_parallel = {data_parallel}\ndevices_per_node = {per_node}\n"
            f'[sweep]\ndevices = [{k}]\n[compare]\nstrategies = ["gpipe"]\n'
        )
        try:
            load_study(str(study))
        except ConfigError as exc:
            assert f"devices: {k} " in str(exc)  # [hardware].devices, checked first, or [sweep].devices
        else:
            accepted.append(k)
    gpus = [k * data_parallel for k in range(1, 9)]  # by hand: at most one node, or whole nodes
    assert accepted == [k for k, n in zip(range(1, 9), gpus) if n <= per_node or n % per_node == 0]


def test_a_study_s_sizes_read_as_run_reads_them(tmp_path):
    study = tmp_path / "sizes.toml"
    for written, size in (("16e9", 16 * 10**9), ('"1.5 KiB"', 1536), ("4096", 4096)):
        study.write_text(f"[hardware]\ndevice_memory = {written}\n")
        assert load_study(str(study)).hardware.device_memory == size


def _csv_makespan(path, times, send):
    """The makespan of a torch-csv schedule by a plain list-scheduling loop, independent of the engine.

    Each rank runs its actions in order; ``sFm`` waits for stage s-1's F of m plus ``send``, ``sIm`` for
    stage s+1's I of m plus ``send`` (the last stage: its own F), ``sWm`` for its own I. Sends take no
    device time and never queue (each is shorter than any compute between two of them).
    """
    ranks = [[cell for cell in row if cell] for row in csv.reader(open(path))]
    stages, end, free, done = len(ranks), {}, [0.0] * len(ranks), [0] * len(ranks)
    while any(n < len(actions) for n, actions in zip(done, ranks)):
        progressed = False
        for rank, actions in enumerate(ranks):
            while done[rank] < len(actions):
                action = actions[done[rank]]
                stage, op, mb = int(action[0]), action[1], int(action[2:])
                after = {
                    "F": [((stage - 1, "F", mb), send)] if stage > 0 else [],
                    "I": [((stage + 1, "I", mb), send)] if stage < stages - 1 else [((stage, "F", mb), 0.0)],
                    "W": [((stage, "I", mb), 0.0)],
                }[op]
                if any(key not in end for key, _ in after):
                    break
                start = max([free[rank]] + [end[key] + delay for key, delay in after])
                end[(stage, op, mb)] = free[rank] = start + times[op]
                done[rank] += 1
                progressed = True
        assert progressed, "the schedule deadlocks"
    return max(free)


def test_a_reports_study_toml_runs_again_with_the_files_it_names(tmp_path):
    """The times file and a schedule CSV in a subfolder are copied at their paths; the copy runs on them again."""
    study_dir = tmp_path / "study"
    (study_dir / "sched").mkdir(parents=True)
    (study_dir / "cf.toml").write_text('time_unit = "ms"\n[default]\nF = 1.0\nI = 1.5\nW = 0.7\nsend = 0.1\n')
    assert main(["export", "--strategy", "zb-h1", "-o", str(study_dir / "sched" / "mine.csv")]) == 0
    (study_dir / "study.toml").write_text(
        '[cost]\ntimes = "cf.toml"\n[compare]\nstrategies = ["gpipe", "sched/mine.csv"]\npartitions = ["uniform"]\n'
        "[sweep]\nmicrobatches = [8]\ndevices = [1, 4]\n[train]\nsteps = 1\n"
    )
    # by hand, K = 4 stages of F = 1, B = I + W = 2.2 ms, M = 8, a send 0.1 ms: GPipe's last stage ends its
    # forwards at 3 (F + send) + 8 F, its backwards 8 B later, and stage 0 its own 3 (B + send) after that:
    # (M + K - 1)(F + B) + 2 (K - 1) send = 11 x 3.2 + 0.6 = 35.8 ms
    gpipe = 35.8e-3
    zb_h1 = _csv_makespan(study_dir / "sched" / "mine.csv", {"F": 1e-3, "I": 1.5e-3, "W": 0.7e-3}, 0.1e-3)
    first, second = tmp_path / "rep", tmp_path / "rep2"
    assert main(["report", str(study_dir / "study.toml"), "-o", str(first)]) == 0
    assert (first / "cf.toml").read_bytes() == (study_dir / "cf.toml").read_bytes()
    assert (first / "sched" / "mine.csv").read_bytes() == (study_dir / "sched" / "mine.csv").read_bytes()
    # the copied study.toml, run from inside the report, finds its copies (not the originals, now gone)
    (study_dir / "cf.toml").unlink()
    (study_dir / "sched" / "mine.csv").unlink()
    assert main(["report", str(first / "study.toml"), "-o", str(second)]) == 0
    for report in (first, second):
        rows = json.loads((report / "metrics.json").read_text())["compare"]
        assert [(r["strategy"], r["times"]) for r in rows] == [("gpipe", "cf.toml"), ("sched/mine.csv", "cf.toml")]
        assert [r["makespan"] for r in rows] == pytest.approx([gpipe, zb_h1], rel=1e-12)
    # the report with its copies is still a report: it may be replaced by the next one
    assert main(["report", str(first / "study.toml"), "-o", str(first)]) == 0


def test_only_files_inside_the_studys_folder_are_copied(tmp_path):
    from pipesched.report.render import copied_files

    (tmp_path / "figures").mkdir()
    for name in ("figures/t.toml", "cfg.json", "a.csv", "sub.csv"):
        (tmp_path / name).write_text("")
    (tmp_path.parent / "out.csv").write_text("")
    study = tmp_path / "s.toml"
    study.write_text(
        '[cost]\ntimes = "figures/t.toml"\n[hardware]\npreset = "h100-sxm"\n[model]\nmodel = "cfg.json"\n'
        f'[compare]\nstrategies = ["gpipe", "a.csv", "../out.csv", "{tmp_path / "sub.csv"}", "x/../a.csv"]\n'
    )
    # a preset's name is no file; "..", an absolute path and a folder the report writes itself stay behind
    assert copied_files(str(study)) == ["a.csv", "cfg.json"]


LAYOUT = """
[model]
MODEL
[hardware]
devices = 2
LAYOUT
[compare]
strategies = ["1f1b"]
microbatches = 4
partitions = ["uniform"]
[sweep]
microbatches = [4]
devices = [1, 2]
[train]
steps = 1
"""


#: Free links: sends, gradient reductions and tensor-parallel collectives take no time, so every makespan
#: below is compute alone.
FREE = "link_bandwidth = 1e30\nlink_latency = 0.0"


def test_a_studys_data_parallel_keys_reach_its_runs(tmp_path):
    """data_parallel = 2 with a sharded Adam, by hand: "16x9" is eight 16 -> 16 layers (272 parameters each),
    four per stage; --batch 16 over D = 2 replicas of M = 4 makes micro-batches of 2 rows, whose forward
    through a stage is 2·2·4·16·16 = 4096 FLOPs (pipesched.model): 1 s at device_flops = 4096, B = 2 s.
    """
    path = tmp_path / "s.toml"
    layout = f'data_parallel = 2\ngrad_sync = "sharded"\ncollective = "ring"\ndevice_flops = 4096\n{FREE}'
    path.write_text(
        LAYOUT.replace("MODEL", 'layers = "16x9"\nbatch = 16\noptimizer = "adam"').replace("LAYOUT", layout)
    )
    results = collect(load_study(str(path)), progress=False).metrics()
    (row,) = results["compare"]
    assert (row["data_parallel"], row["tensor_parallel"], row["grad_sync"]) == (2, 1, "sharded")
    # 1F1B on equal stages with free sends: (M + K - 1)(F + B) = 5 x 3 s; every device of both replicas busy
    # M (F + B) = 12 s
    assert row["makespan"] == pytest.approx(15.0, rel=1e-12) and row["busy"] == pytest.approx([12.0] * 4)
    # fp64 parameters and gradients, 8 B per parameter each; Adam's two fp64 moments (16 B) halved by the
    # sharded optimizer: 8 B per parameter on each replica
    params = 4 * 272
    assert [(m["parameters"], m["gradients"], m["optimizer"]) for m in row["memory_by_role"]] == [
        (8 * params, 8 * params, 8 * params)
    ] * 4
    # the speedup sweep keeps the layout and varies K, under GPipe: K = 2 is (M + K - 1)(F + B) again, and
    # K = 1 runs all eight layers on each replica, F = 2 s, B = 4 s: M x 6 = 24 s
    rows = {r["devices"]: r["makespan_study"] for r in results["sweep_devices"]}
    assert rows == pytest.approx({1: 24.0, 2: 15.0}, rel=1e-12)
    # the one-device reference runs without replicas: the same loss as the replicated run
    assert results["train"]["single device"] == pytest.approx(results["train"]["pipelined"], rel=1e-12)
    assert "the single-device run runs without them: one device in all" in results["notes"]["training"]


def test_a_studys_tensor_parallel_keys_reach_its_runs(tmp_path):
    """tensor_parallel = 2 with sequence parallelism on tiny-gpt (h = 64, 8 blocks, MLP 256, vocabulary 256,
    128 positions, tied embeddings), split 6, 5 over K = 2: Megatron-LM's division, by hand.
    """
    study = LAYOUT.replace("MODEL", 'model = "tiny-gpt"\ncompute = false\nbatch = 8').replace(
        "[train]\nsteps = 1\n", ""
    )
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text(study.replace("LAYOUT", FREE))
    two.write_text(study.replace("LAYOUT", f"tensor_parallel = 2\nsequence_parallel = true\n{FREE}"))
    whole, split = (collect(load_study(str(p)), progress=False).metrics() for p in (one, two))
    (row,) = split["compare"]
    assert (row["tensor_parallel"], row["sequence_parallel"], row["data_parallel"]) == (2, True, 1)
    # every layer's FLOPs are split evenly over the group and the links are free: the whole timeline halves
    assert row["makespan"] == pytest.approx(whole["compare"][0]["makespan"] / 2, rel=1e-12)
    assert row["busy"] == pytest.approx([b / 2 for b in whole["compare"][0]["busy"]], rel=1e-12)
    halved = {r["devices"]: r["makespan_study"] / 2 for r in whole["sweep_devices"]}
    assert {r["devices"]: r["makespan_study"] for r in split["sweep_devices"]} == pytest.approx(halved, rel=1e-12)
    # parameters per device: weight matrices and column-parallel biases (q, k, v; the MLP's first) over T;
    # row-parallel biases and the norms replicated; the token table and the tied output matrix by vocabulary;
    # the position table replicated
    h, inner, vocab, positions, t = 64, 256, 256, 128, 2
    block = (4 * h * h + 2 * h * inner + 3 * h + inner) // t + 2 * h + 4 * h
    stage0 = vocab * h // t + positions * h + 5 * block  # embedding and blocks 0-4
    stage1 = 3 * block + 2 * h + vocab * h // t  # blocks 5-7, the final norm and the output layer
    # bf16 parameters and gradients (2 B each), fp32 master weights and Adam's two moments (12 B)
    assert [(m["parameters"], m["gradients"], m["optimizer"]) for m in row["memory_by_role"]] == [
        (2 * p, 2 * p, 12 * p) for p in (stage0, stage1)
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("data_parallel = 0", "[hardware].data_parallel: 0 is not a whole number of at least 1"),
        ("tensor_parallel = 1.5", "[hardware].tensor_parallel: 1.5 is not a whole number"),
        ('grad_sync = "zero"', '[hardware].grad_sync: "zero" is not one of allreduce, sharded'),
        ('collective = "tree"', '[hardware].collective: "tree" is not one of auto, ring, hierarchical'),
        ('sequence_parallel = "yes"', '[hardware].sequence_parallel: "yes" is not true or false'),
    ],
)
def test_bad_layout_keys_in_a_study_are_named(tmp_path, capsys, line, message):
    path = tmp_path / "s.toml"
    path.write_text(LAYOUT.replace("MODEL", 'layers = "8,16x7,4"').replace("LAYOUT", line))
    assert main(["report", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


AUTO_STUDY = """
[model]
layers = "8,16x4,4"
batch = 8
compute = false
[hardware]
devices = 2
link_bandwidth = 1e9
MEMORY
[compare]
strategies = ["1f1b", "zb-h1", "auto"]
microbatches = 4
partitions = ["uniform"]
[sweep]
microbatches = [4]
devices = [2]
"""


def test_a_study_runs_auto_within_the_memory_the_built_ins_run_under_and_says_which(tmp_path):
    from pipesched import RunConfig, run
    from pipesched.report.render import _notes, comparison_rows

    config = RunConfig(layers="8,16x4,4", batch=8, devices=2, microbatches=4, link_bandwidth=1e9, compute=False)
    limit = max(run(replace(config, strategy="1f1b")).metrics.peak_memory_bytes)  # 1F1B's own peak: it just fits
    study = tmp_path / "auto.toml"
    study.write_text(AUTO_STUDY.replace("MEMORY", f"device_memory = {limit}"))
    results = collect(load_study(str(study)), progress=False)
    runs = {r.label: r for r in results.compare}
    assert runs["zb-h1"].trace.oom is not None and runs["1f1b"].trace.oom is None  # the limit parts them
    assert runs["auto"].trace.oom is None and max(runs["auto"].metrics.peak_memory_bytes) <= limit
    assert runs["auto"].metrics.makespan <= runs["1f1b"].metrics.makespan
    assert [(row[0], row[-1]) for row in comparison_rows(results)] == [
        ("1f1b", "yes"),
        ("zb-h1", "no"),
        ("auto", "yes"),
    ]
    assert (
        f"auto is the fastest schedule pipesched search found for the study's costs, within {format_bytes(limit)} "
        "per device ([hardware].device_memory), the limit every strategy here runs under." in _notes(results)
    )
    # without a limit, K = 2 micro-batches in flight, and the note names the key that would set one
    study.write_text(AUTO_STUDY.replace("MEMORY", ""))
    results = collect(load_study(str(study)), progress=False)
    assert max(next(r for r in results.compare if r.label == "auto").metrics.peak_inflight_microbatches) <= 2
    assert (
        "at most 2 micro-batches in flight per device (K: 1F1B's and ZB-H1's memory), as no memory limit is "
        "given; [hardware].device_memory sets one." in _notes(results)
    )


def test_a_default_list_leaves_auto_out_of_replicas_and_says_why_a_named_auto_stops(tmp_path, capsys):
    replicas = AUTO_STUDY.replace("MEMORY", "data_parallel = 2").replace("batch = 8", "batch = 16")
    study = tmp_path / "replicas.toml"
    study.write_text(replicas.replace('strategies = ["1f1b", "zb-h1", "auto"]\n', ""))  # the default list
    assert main(["report", str(study), "-o", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "auto" not in {row["strategy"] for row in metrics["compare"] + metrics["sweep_microbatches"]}
    built_ins = list(BUILT_INS)
    assert [row["strategy"] for row in metrics["compare"]] == built_ins
    why = metrics["notes"]["auto"]
    assert why.startswith("auto is left out of the default comparison: ") and "--data-parallel" in why
    assert f"pipesched: note: {why}" in err and why in (tmp_path / "out" / "report.md").read_text()
    study.write_text(replicas)  # named, it must run: the study stops, naming it
    assert main(["report", str(study), "-o", str(tmp_path / "named")]) == 2
    assert "[compare] strategy 'auto' with partition 'uniform': " in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["dualpipe", "chimera"])
def test_a_bidirectional_train_section_is_referenced_by_one_device_of_gradient_accumulation(tmp_path, strategy):
    """One device cannot run a pipeline fed from both ends; its reference runs GPipe, which on one device is
    the same gradient accumulation, so the two loss curves agree to round-off."""
    study = tmp_path / "bidirectional.toml"
    study.write_text(
        '[model]\nlayers = "8,16x4,4"\nbatch = 8\n[hardware]\ndevices = 2\ncost = "unit"\n'
        f'[compare]\nstrategies = ["{strategy}"]\nmicrobatches = 4\npartitions = ["uniform"]\n'
        f'[sweep]\nmicrobatches = [4]\ndevices = [2]\n[train]\nsteps = 3\nstrategy = "{strategy}"\n'
    )
    assert main(["report", str(study), "-o", str(tmp_path / "out")]) == 0
    train = json.loads((tmp_path / "out" / "metrics.json").read_text())["train"]
    assert len(train["pipelined"]) == 3 and train["pipelined"][-1] < train["pipelined"][0]
    assert train["pipelined"] == pytest.approx(train["single device"], rel=1e-12)
