"""The static checks careful Python projects run, clean: ruff's linter and formatter, and mypy.

Their configuration is pyproject.toml's ``[tool.ruff]`` and ``[tool.mypy]``;
the test extra pins both tools, so a new release cannot fail a green tree.
"""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CODE = ["pipesched", "strategies", "tests", "benchmarks"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize(
    "command", [["ruff", "check", *CODE], ["ruff", "format", "--check", *CODE]], ids=["lint", "format"]
)
def test_ruff_is_clean(command):
    result = _run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean():
    result = _run("mypy")  # files and strictness from pyproject.toml: pipesched/ and strategies/
    assert result.returncode == 0, result.stdout + result.stderr
