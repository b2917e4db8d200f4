"""Start-up (issue 20): a plain ``pipesched run`` imports neither matplotlib nor networkx, which only figures
and balancing need; a balanced run still finds networkx when it needs it. Each check is a fresh process, since
this test session has imported everything long before."""

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
print(json.dumps({"status": status, "loaded": [m for m in ("networkx", "matplotlib") if m in sys.modules]}))
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
def test_a_run_imports_neither_matplotlib_nor_networkx(argv):
    assert _loaded(argv) == {"status": 0, "loaded": []}


def test_a_balanced_run_still_imports_networkx_when_it_balances():
    probe = _loaded(["run", "--partition", "balanced", "--no-compute"])
    assert probe == {"status": 0, "loaded": ["networkx"]}
