"""Training precision: the bytes per element that memory and links account, whatever NumPy computes in.

NumPy always computes in float64, so that every schedule's gradients can be
checked against one full-batch pass to round-off. The precision a real
training run would use (``--dtype``) decides only what the engine counts:
every byte of parameters, gradients, activations, deferred-W buffers, link
buffers and transfers (and so every transfer time) is elements × the dtype's
size, for real arrays and ``--no-compute`` stand-ins alike, through one
function, ``nbytes``.

The default is the model's own: ``fp64`` for the seed MLP, whose NumPy arrays
are float64, so every number pipesched printed before ``--dtype`` existed is
unchanged. (Transformer decoders, a later model, default to ``bf16``, the
precision they are trained in.)

>>> [itemsize(d) for d in DTYPES]
[2, 2, 4, 8]
>>> import numpy as np
>>> nbytes(np.zeros((5, 3)), itemsize("bf16"))  # 15 elements of 2 bytes, whatever NumPy holds them in
30
>>> check_dtype("int8")
Traceback (most recent call last):
    ...
pipesched.errors.ConfigError: --dtype 'int8' is unknown; use one of bf16, fp16, fp32, fp64
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["DTYPES", "MLP_DTYPE", "check_dtype", "itemsize", "nbytes"]

#: Bytes per element of each training precision: bfloat16 and IEEE half, single and double precision.
DTYPES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}

#: The seed MLP's own precision: its NumPy arrays are float64.
MLP_DTYPE = "fp64"


def check_dtype(dtype: str) -> None:
    """Raise ``ConfigError`` unless ``dtype`` is one of ``DTYPES``."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is unknown; use one of {', '.join(DTYPES)}")


def itemsize(dtype: str) -> int:
    """Bytes per element of ``dtype`` (checked)."""
    check_dtype(dtype)
    return DTYPES[dtype]


def nbytes(array: Any, itemsize: int) -> int:
    """The bytes the engine counts for ``array`` in a precision of ``itemsize`` bytes per element.

    A NumPy array of floats counts its elements × ``itemsize``, whatever NumPy
    holds them in; an array of integers (a decoder's token ids) keeps its own
    size, as it does in any precision of training. A stand-in (``pipesched.compute.Buffer``) already states its bytes in
    that precision: the shape-only workload builds each as elements ×
    ``itemsize``, and a ring all-reduce chunk is 1/R of a stage's gradient
    bytes, rounded up to a byte. So both counts agree exactly in any dtype.
    """
    # exact type, not isinstance: a stand-in is never an ndarray, and this runs for every array a device holds
    if type(array) is np.ndarray:
        return array.size * itemsize if array.dtype.kind == "f" else array.nbytes
    return array.nbytes
