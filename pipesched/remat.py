"""Re-materialization (activation checkpointing): which forwards keep their activations.

GPipe (Huang et al. 2019, section 2.3) keeps only each stage's input and
recomputes the forward during the backward. torchgpipe's ``checkpoint``
argument (Kim et al. 2020; its API reference) names the choices: ``always`` keeps only the
stage input, ``except_last`` does so for all but the last micro-batch (whose
backward comes first in F-then-B), ``never`` keeps all.

>>> [remat_keeps("except_last", m, 4) for m in range(4)]
[False, False, False, True]
"""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["REMAT_MODES", "remat_keeps", "check_remat"]

#: torchgpipe's checkpoint modes: ``always`` keeps only each stage input and
#: recomputes in backward, ``except_last`` does so for all but the last
#: micro-batch (whose backward comes first in F-then-B), ``never`` keeps all.
REMAT_MODES = ("never", "always", "except_last")


def remat_keeps(remat: str, microbatch: int, microbatches: int) -> bool:
    """Whether a forward keeps its activations (else only its input, recomputed in backward).

    ``microbatch`` counts one pipeline replica's ``microbatches`` from 0.

    >>> remat_keeps("except_last", 3, 4), remat_keeps("except_last", 2, 4), remat_keeps("always", 3, 4)
    (True, False, False)
    """
    return remat == "never" or (remat == "except_last" and microbatch == microbatches - 1)


def check_remat(remat: str) -> None:
    """Raise ``ConfigError`` unless ``remat`` is one of ``REMAT_MODES``.

    >>> check_remat("sometimes")
    Traceback (most recent call last):
        ...
    pipesched.errors.ConfigError: --remat 'sometimes' is unknown; use one of never, always, except_last
    """
    if remat not in REMAT_MODES:
        raise ConfigError(f"--remat {remat!r} is unknown; use one of {', '.join(REMAT_MODES)}")
