"""Every docstring example in the package and the built-in strategies runs and holds."""

import doctest
import importlib
import pkgutil

import pytest

import pipesched
import pipesched.strategies

MODULES = sorted(
    (
        {m.name for m in pkgutil.walk_packages(pipesched.__path__, "pipesched.")}
        | {m.name for m in pkgutil.iter_modules(pipesched.strategies.__path__, "pipesched.strategies.")}
        | {"pipesched"}
    )
    - {"pipesched.__main__"}  # importing it runs the command
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failures, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
    assert attempted > 0 or name == "pipesched.strategies", f"{name} shows no example"


@pytest.mark.parametrize("name", MODULES)
def test_public_modules_declare_their_api(name):
    module = importlib.import_module(name)
    if name == "pipesched.strategies":
        return
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    assert all(hasattr(module, attr) for attr in module.__all__)
