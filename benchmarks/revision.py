"""Another git revision's code, for a benchmark that times it against this checkout's in the same run.

A speed goal stated against "today's" code (issue 20: the commit before its
work, ``BEFORE``) is measured by running both in one run, alternately: this
machine's speed drifts by a quarter within minutes, so figures from two runs
do not compare. The revision is exported (``git archive``) into a temporary
folder; ``python -m pipesched`` run from there imports that folder's package,
which finds its own built-in strategies beside it (``strategies/``).

    with revision(BEFORE) as folder:
        if folder is not None:
            subprocess.run(pipesched_command(folder, ["run", "--devices", "2"]), cwd=folder)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

#: The last commit before issue 20's work: the code its "today's" figures were measured on.
BEFORE = "9c9063a"

HERE = os.path.dirname(os.path.abspath(__file__))


@contextmanager
def revision(rev: str = BEFORE) -> Iterator[str | None]:
    """A temporary folder holding ``rev``'s files, or None (with a note printed) where git or ``rev`` is missing."""
    folder = tempfile.mkdtemp(prefix=f"pipesched-{rev}-")
    try:
        # from the repository's top: run in a subfolder, git archive exports that folder alone
        top = subprocess.run(["git", "-C", HERE, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        where = top.stdout.strip() or HERE
        archive = subprocess.run(["git", "-C", where, "archive", rev], capture_output=True, check=False)
        if archive.returncode != 0:
            print(
                f"note: revision {rev} is not available here ({archive.stderr.decode().strip()}); its line is skipped"
            )
            yield None
            return
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
        yield folder
    except FileNotFoundError:  # no git, or no tar
        print(f"note: git is not installed here, so revision {rev} cannot be checked out; its line is skipped")
        yield None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: The environment a whole process is timed in: a user's, where Python keeps each module's compiled bytecode
#: after its first import (``__pycache__``). A shell that forbids writing it (``PYTHONDONTWRITEBYTECODE``, set on
#: some development machines) would have every run compile every module again, tens of milliseconds that no user
#: pays; so it is lifted here, and a benchmark runs each command once, untimed, before timing it.
PROCESS_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def pipesched_command(folder: str, args: list[str]) -> list[str]:
    """The command running ``pipesched ARGS`` on the code in ``folder`` (run it with ``cwd=folder``)."""
    return [sys.executable, "-m", "pipesched", *args]


def python_in(folder: str, source: str) -> str:
    """Run ``source`` in a fresh process importing the code in ``folder``; its standard output."""
    return subprocess.run([sys.executable, "-c", source], cwd=folder, check=True, capture_output=True, text=True).stdout
