"""Start-up (issue 20): a plain ``pipesched run`` imports neither matplotlib nor networkx, which only figures
and balancing need, nor pydantic, which only a file's check needs, nor numpy.ma (which np.unique loads); a
balanced run still finds networkx, and a run that reads a file still checks it with pydantic. Each check is a
fresh process, since this test session has imported everything long before."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys, io, contextlib
from pipesched.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    status = main(ARGV)
WATCHED = ("networkx", "matplotlib", "pydantic", "numpy.ma")
print(json.dumps({"status": status, "loaded": [m for m in WATCHED if m in sys.modules]}))
"""


def _loaded(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.replace("ARGV", repr(argv))], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--devices", "2", "--microbatches", "2", "--cost", "unit", "--no-compute", "--no-reference"],
        ["run"],  # the README's first command: real NumPy, the cpu preset, the gradient check
        ["run", "--strategy", "zb-v", "--json"],
    ],
)
def test_a_run_imports_neither_matplotlib_nor_networkx_nor_pydantic(argv):
    assert _loaded(argv) == {"status": 0, "loaded": []}


def test_a_balanced_run_still_imports_networkx_when_it_balances():
    probe = _loaded(["run", "--partition", "balanced", "--no-compute"])
    assert probe == {"status": 0, "loaded": ["networkx"]}


def test_a_run_that_reads_a_file_checks_it_with_pydantic(tmp_path):
    times = tmp_path / "times.toml"
    times.write_text('time_unit = "ms"\n[default]\nF = 1\nB = 2\n')
    hardware = tmp_path / "mine.toml"  # the cpu preset's keys, as a user's file
    hardware.write_text(
        "memory = 3.2e9\ndevices_per_node = 40\n[peak_flops]\nbf16 = 1e11\nfp16 = 1e11\nfp32 = 1e11\nfp64 = 5e10\n"
        '[intra_node]\nname = "shm"\nbandwidth = 5e9\nlatency = 1e-6\n'
        '[inter_node]\nname = "eth"\nbandwidth = 1.25e10\nlatency = 1e-5\n'
    )
    for flags in (["--cost", "measured", "--times", str(times)], ["--hardware", str(hardware)]):
        assert _loaded(["run", "--no-compute", *flags]) == {"status": 0, "loaded": ["pydantic"]}


def test_a_command_parsed_alone_has_the_flags_and_help_it_has_among_all_commands():
    # main builds only the command it runs (start-up); that parser must be the one the whole command line holds
    import argparse

    from pipesched.cli import _COMMAND_PARSERS, _parser

    def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(sub.choices)

    every = commands(_parser())
    assert list(every) == list(_COMMAND_PARSERS)
    for name, whole in every.items():
        (alone,) = commands(_parser(name)).values()
        assert (alone.prog, alone.format_help()) == (whole.prog, whole.format_help())
