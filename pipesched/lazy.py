"""A package's public names, each imported from its submodule the first time it is asked for (PEP 562).

A plain run must not pay for what it does not use (networkx for balancing, a
decoder's modules for the MLP); a package that re-exports such names from
its submodules gives itself a module ``__getattr__`` that imports them on
first use.

>>> import types
>>> package = types.ModuleType("pipesched.example")
>>> package.__getattr__ = lazy_attributes("pipesched", {"format_bytes": "units"})
>>> package.__getattr__("format_bytes")(2048)
'2.00 KiB'
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, home: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``name`` from ``package.home[name]``, kept once imported.

    Raises ``AttributeError`` for a name ``home`` does not list, as a module does.
    """

    def __getattr__(name: str) -> Any:
        where = home.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where}"), name)
        if package in sys.modules:  # the next look-up finds it without coming here
            setattr(sys.modules[package], name, value)
        return value

    return __getattr__
