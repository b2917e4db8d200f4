"""What tensor parallelism, sequence parallelism and a sharded optimizer leave each device: held against whole.

Per device and role, ``held`` is what the device holds and ``whole`` what it
would hold with the same stages undivided (T = 1, no sequence parallelism,
each replica keeping all of its optimizer state):

- ``parameters`` and ``gradients``: Megatron-LM splits attention by heads
  and the MLP by columns over T, norms and row-parallel biases stay whole on
  every device (Shoeybi et al. 2019, section 3; ``pipesched.decoder.tensor``);
- ``optimizer``: that share again, and 1/D of it with a sharded optimizer
  (ZeRO-1, Rajbhandari et al. 2020, section 5.1; ``collectives.optimizer_share``);
- ``activations_per_microbatch``: what one micro-batch keeps from its forward
  to its backward without recompute, divided as Korthikanti et al. 2022
  divide it (section 4.2.2, Table 2: sbh(10 + 24/t + 5as/ht) per block, or
  34/t + 5as/ht with sequence parallelism); decoders only.

``held / whole`` is the device's share: the JSON of ``pipesched run`` lists
both (``memory_division``), the run's text and a study's report name the
shares (``describe_division``).

>>> from pipesched import RunConfig, run
>>> r = run(RunConfig(model="tiny-gpt", seq_len=16, devices=2, tensor_parallel=2, batch=4, microbatches=2,
...                   compute=False))
>>> d = r.memory_division[1]  # the last device: blocks, final norm and the tied output layer
>>> d["parameters"]["whole"] / d["parameters"]["held"] > 1.9  # nearly halved: norms and biases stay whole
True
"""

from __future__ import annotations

from typing import Any

from .collectives import optimizer_share
from .schedule import Schedule, expand
from .units import format_bytes

__all__ = ["memory_division", "causes", "describe_division"]


def memory_division(work: Any, schedule: Schedule, grad_sync: str) -> list[dict[str, dict[str, int]]]:
    """Per device of ``schedule``, each role's ``held`` and ``whole`` bytes (see the module's text).

    ``work`` is the run's workload: a decoder's states its undivided self
    (``undivided()``) and a micro-batch's kept bytes (``microbatch_bytes``);
    the MLP's holds every layer whole, so only a sharded optimizer divides it.
    """
    undivided = work.undivided() if hasattr(work, "undivided") else work
    replicas = {s: len(ds) for s, ds in schedule.placement().items()}
    out = []
    for actions in schedule.actions:
        stages = sorted({a.stage for a in expand(actions)})
        held = sum(work.param_bytes(s) for s in stages)
        whole = sum(undivided.param_bytes(s) for s in stages)
        division = {
            "parameters": {"held": held, "whole": whole},
            "gradients": {"held": held, "whole": whole},
            "optimizer": {
                "held": sum(optimizer_share(work.optimizer_bytes(s), replicas[s], grad_sync) for s in stages),
                "whole": sum(undivided.optimizer_bytes(s) for s in stages),
            },
        }
        if hasattr(work, "microbatch_bytes"):
            division["activations_per_microbatch"] = {
                "held": sum(work.microbatch_bytes(s, 0) for s in stages),
                "whole": sum(undivided.microbatch_bytes(s, 0) for s in stages),
            }
        out.append(division)
    return out


def causes(tensor_parallel: int, sequence_parallel: bool, data_parallel: int, grad_sync: str) -> dict[str, str]:
    """What divides each role, in words, for ``describe_division``.

    >>> causes(4, True, 8, "sharded")["optimizer"]
    'T=4, sharded over D=8'
    """
    t = f"T={tensor_parallel}"
    sharded = f"sharded over D={data_parallel}" if grad_sync == "sharded" and data_parallel > 1 else ""
    return {
        "parameters": t,
        "optimizer": ", ".join(x for x in (t if tensor_parallel > 1 else "", sharded) if x),
        "activations_per_microbatch": t + (" with sequence parallelism" if sequence_parallel else ""),
    }


def describe_division(division: dict[str, dict[str, int]], why: dict[str, str]) -> str:
    """One device's shares as a sentence: each divided role, its share and its bytes held of whole.

    ``why`` names what divides each role (e.g. ``{"parameters": "T=2"}``);
    roles held whole are left out, and the sentence is empty if none is divided.

    >>> describe_division({"optimizer": {"held": 250, "whole": 1000}}, {"optimizer": "sharded over D=4"})
    'optimizer state 1/4.00 (250 B of 1000 B; sharded over D=4)'
    """
    names = {
        "parameters": "parameters and gradients",
        "optimizer": "optimizer state",
        "activations_per_microbatch": "a micro-batch's activations",
    }
    parts = []
    for role, name in names.items():
        shares = division.get(role)
        if shares is None or shares["held"] in (0, shares["whole"]):
            continue
        ratio = shares["whole"] / shares["held"]
        parts.append(
            f"{name} 1/{ratio:.2f} ({format_bytes(shares['held'])} of {format_bytes(shares['whole'])}; {why[role]})"
        )
    return ", ".join(parts)
