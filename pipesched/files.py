"""Reading the files users write (TOML studies and sweeps) and showing progress, each failure in one sentence.

>>> import tempfile, os
>>> with tempfile.TemporaryDirectory() as folder:
...     path = os.path.join(folder, "s.toml")
...     _ = open(path, "w").write("[axes]\\ndevices = [2]\\n")
...     read_toml(path, "sweep")
{'axes': {'devices': [2]}}
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["read_toml", "progress_bar"]


def read_toml(path: str, what: str) -> dict[str, Any]:
    """The parsed TOML file at ``path``; ``what`` ("study", "sweep") names it in errors."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path!r} does not exist; give the path to a .toml file") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} file {path!r} is a folder; give the path to a .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, description: str, unit: str, show: bool = True) -> Any:
    """A tqdm bar on a terminal (nothing when output goes to a file or a CI log), or a silent stand-in."""
    if not show:
        return _NoBar()
    from tqdm import tqdm  # only long jobs show a bar: run and compare never import it

    return tqdm(total=total, desc=description, unit=unit, disable=None, leave=False)
