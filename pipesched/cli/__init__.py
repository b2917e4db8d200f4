"""The ``pipesched`` command: the parser and the dispatch; each command lives in a module of its own.

Bad input ends in one sentence on stderr and exit status 2, never a traceback.

    pipesched run --strategy gpipe --devices 4 --microbatches 8
    pipesched run --json --cost unit
    pipesched compare --strategies gpipe,1f1b,interleaved,zb-h1,dp
    pipesched train --steps 10
    pipesched profile --model tiny-gpt -o times.toml
    pipesched strategies

>>> main(["formulas", "--devices", "0"])  # bad input: one line on stderr, status 2
2
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import re
import sys
from typing import Any, Callable, Sequence

from .. import __version__
from ..cost import COST_MODELS
from ..errors import PipeschedError
from ..hardware import DEFAULT_EFFICIENCY, preset_names
from ..pipeline import DEFAULT_LAYERS, RunConfig
from .common import COMPARE_DEFAULT

__all__ = ["main", "console"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"pipesched: error: {message}\n")


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give e.g. 4") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give e.g. 1e12") from None


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model and its batch: ``run``'s flags that ``profile`` shares."""
    p.add_argument("--layers", default=DEFAULT_LAYERS, help="layer widths, WxN repeats (default %(default)s)")
    p.add_argument(
        "--model", help="a transformer decoder instead of --layers: a preset (tiny-gpt, llama2-7b, ...) or config.json"
    )
    p.add_argument("--seq-len", type=_whole, help="tokens per sequence of --model (default: its context length)")
    p.add_argument("--batch", type=_whole, default=RunConfig.batch, help="samples per step (default %(default)s)")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument(
        "--devices", type=_whole, help=f"K, pipeline devices (default {d.devices}, or a CSV schedule's ranks)"
    )
    p.add_argument(
        "--microbatches", type=_whole, help=f"M, micro-batches per step (default {d.microbatches}, or a CSV schedule's)"
    )
    p.add_argument(
        "--chunks",
        type=_whole,
        help="model chunks (stages) per device, v (default: the strategy's, 2 for interleaved and the V schedules, "
        "else 1; for auto and search, 2 plans a V)",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        help="--strategy auto and search: micro-batches of a stage one device may hold at once, a V's half-stages "
        "as halves (default: what --device-memory or a preset's memory allows, else K, 1F1B's and ZB-H1's)",
    )
    p.add_argument(
        "--data-parallel",
        type=_whole,
        default=d.data_parallel,
        help="D, pipeline replicas of --devices each, K·D devices in all; --batch is their global batch "
        "(default %(default)s)",
    )
    p.add_argument(
        "--tensor-parallel",
        type=_whole,
        default=d.tensor_parallel,
        help="T, devices of one stage's tensor-parallel group (Megatron-LM), a decoder's only: compute, weights "
        "and activations divided over T, collectives inside every pass; K·D·T devices in all (default %(default)s)",
    )
    p.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="with --tensor-parallel: split the activations a group keeps whole over T as well (Korthikanti "
        "et al. 2022), reduce-scatter plus all-gather instead of each all-reduce",
    )
    p.add_argument(
        "--grad-sync",
        default=d.grad_sync,
        help="how replicas sum gradients: allreduce, or sharded (the distributed optimizer / ZeRO-1: "
        "reduce-scatter, optimizer state / D, all-gather of the weights) (default %(default)s)",
    )
    p.add_argument(
        "--collective",
        default=d.collective,
        help="ring, hierarchical (inside nodes, then across) or auto (two levels where a ring spans nodes "
        "evenly) (default %(default)s)",
    )
    _add_model_flags(p)
    p.add_argument(
        "--partition",
        default=d.partition,
        help="'uniform', 'balanced' (the strategy's optimal split, then the fastest simulated) or layer counts per "
        "stage, e.g. 2,3,3,3",
    )
    p.add_argument("--balance-by", default=d.balance_by, help="layer costs for 'balanced': flops or measured")
    p.add_argument("--remat", default=d.remat, help="never, always or except_last (default %(default)s)")
    p.add_argument("--cost", default=d.cost, help=f"{', '.join(COST_MODELS)}: the cost model (default %(default)s)")
    p.add_argument("--times", metavar="FILE", help="measured times (TOML) for --cost measured; see 'Measured times'")
    p.add_argument(
        "--hardware",
        help=f"a device preset ({', '.join(preset_names())}) or a .toml file of one: its peak FLOP/s, memory "
        "and links (default: the seed MLP on the cpu preset's speed and links, a decoder on the flags' defaults)",
    )
    p.add_argument(
        "--device-flops",
        type=_number,
        help="peak device FLOP/s, replacing the preset's; without --hardware the achieved rate (default: the "
        "preset's; 1e14 for a decoder without --hardware)",
    )
    p.add_argument(
        "--efficiency",
        type=_number,
        help=f"fraction of peak FLOP/s matrix multiplies reach, in (0, 1] (default {DEFAULT_EFFICIENCY} with a preset)",
    )
    p.add_argument(
        "--link-bandwidth", type=_number, help="intra-node link bytes/s per direction (default: the preset's)"
    )
    p.add_argument("--link-latency", type=_number, help="intra-node link latency in seconds (default: the preset's)")
    p.add_argument(
        "--devices-per-node", type=_whole, help="devices per node (default: the preset's; one node without --hardware)"
    )
    p.add_argument(
        "--node-map", help="each device's node, e.g. 0,0,1,1 (default: contiguous blocks of devices per node)"
    )
    p.add_argument(
        "--inter-node-bandwidth", type=_number, help="inter-node link bytes/s per direction (default: the preset's)"
    )
    p.add_argument(
        "--inter-node-latency", type=_number, help="inter-node link latency in seconds (default: the preset's)"
    )
    p.add_argument(
        "--device-speed",
        help="devices of unequal speed: 2=0.5 (device 2 at half speed) or one factor per device, e.g. 1,1,0.5,1",
    )
    p.add_argument(
        "--overlap",
        default=d.overlap,
        help="an overlapped F&B pair (dualpipev, dualpipe) lasts the sum or the max of its parts (default %(default)s)",
    )
    p.add_argument(
        "--p2p",
        default=d.p2p,
        help="point-to-point semantics: async (PyTorch's isend/irecv) or blocking (rendezvous sends, "
        "which can deadlock) (default %(default)s)",
    )
    p.add_argument("--loss", default=d.loss, help="cross_entropy or mse (default %(default)s)")
    p.add_argument(
        "--dtype",
        help="training precision that memory and links count: bf16, fp16, fp32 or fp64; NumPy still computes in "
        "float64 (default: the model's own, fp64 for the MLP)",
    )
    p.add_argument(
        "--optimizer",
        help="sgd or adam: the optimizer whose state each device holds, and that train runs "
        "(default: the model's own, sgd for the MLP)",
    )
    p.add_argument(
        "--device-memory",
        help="memory per device, e.g. 16GB (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB): more is an OOM "
        "(default: a named --hardware preset's memory)",
    )
    p.add_argument("--allow-oom", action="store_true", help="report an OOM (oom: true) instead of stopping")
    p.add_argument("--no-compute", action="store_true", help="timing and memory from the cost model alone, no NumPy")
    p.add_argument("--no-reference", action="store_true", help="skip the full-batch reference pass")
    p.add_argument("--seed", type=_whole, default=d.seed, help="seed for weights and data (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


_STRATEGY_HELP = "registered name or path/to/file.py:ClassName (default %(default)s)"


def _run_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", default=RunConfig.strategy, help=_STRATEGY_HELP)
    _add_run_flags(p)
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace (opens in Perfetto) to FILE")
    p.add_argument("--profile", metavar="FILE", help="profile the run with cProfile: stats to FILE, top 15 to stderr")
    p.add_argument("--schedule", metavar="FILE.csv", help="simulate a schedule in PyTorch's action CSV (as --strategy)")


def _compare_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strategies", default=",".join(COMPARE_DEFAULT), help="comma-separated strategies (default %(default)s)"
    )
    p.add_argument("--schedule", metavar="FILE.csv", help="add a schedule in PyTorch's action CSV to the rows")
    _add_run_flags(p)


def _train_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", default=RunConfig.strategy, help=_STRATEGY_HELP)
    _add_run_flags(p)
    p.add_argument("--steps", type=_whole, default=10, help="training steps (default %(default)s)")
    p.add_argument("--lr", type=_number, default=0.01, help="learning rate, Adam's step size (default %(default)s)")


def _balance_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--costs", help="plain per-layer costs, e.g. 5,1,1,1,1,1,1,5, instead of the model flags")
    p.add_argument("--strategy", default=RunConfig.strategy, help="the strategy whose stages to balance")
    _add_run_flags(p)


def _report_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", nargs="?", help="a study TOML file (default: the built-in study)")
    p.add_argument("-o", "--output", default="pipesched-report", help="the folder to write (default %(default)s)")


def _sweep_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the sweep file (TOML): [model], [axes], [constraints]")
    p.add_argument("-o", "--output", default="results.jsonl", help="JSON-lines results file (default %(default)s)")
    p.add_argument("--workers", type=_whole, help="local worker processes (default: one per core)")
    p.add_argument("--scheduler", help="a Dask distributed scheduler, tcp://HOST:PORT (pip install 'pipesched[dask]')")
    p.add_argument("--report", metavar="DIR", help="write heat maps and the Pareto plot to DIR")


def _plan_parser(p: argparse.ArgumentParser) -> None:
    from .plan import add_plan_flags

    add_plan_flags(p, _whole, "a decoder preset (llama2-7b, gpt3-175b, tiny-gpt, ...) or config.json")


def _search_parser(p: argparse.ArgumentParser) -> None:
    from .search import add_search_flags

    add_search_flags(p, _whole, _add_run_flags)


def _export_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", default=RunConfig.strategy, help=_STRATEGY_HELP)
    p.add_argument("--devices", type=_whole, default=RunConfig.devices, help="K (default %(default)s)")
    p.add_argument("--microbatches", type=_whole, default=RunConfig.microbatches, help="M (default %(default)s)")
    p.add_argument("--chunks", type=_whole, help="v (default: the strategy's)")
    p.add_argument(
        "--format",
        default="torch-csv",
        choices=("torch-csv", "text"),
        help="torch-csv: one row per rank; text: the step-by-rank table (default %(default)s)",
    )
    p.add_argument("--model", help="a decoder (preset or config.json) whose layers the stages must cover")
    p.add_argument("--seq-len", type=_whole, help="tokens per sequence of --model (checked against it)")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")


def _formulas_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=_whole, default=RunConfig.devices, help="K (default %(default)s)")
    p.add_argument("--microbatches", type=_whole, default=RunConfig.microbatches, help="M (default %(default)s)")
    p.add_argument("--chunks", type=_whole, default=2, help="v for interleaved (default %(default)s)")
    p.add_argument("--layers", default=DEFAULT_LAYERS, help="the model, for the all-reduce time")
    p.add_argument("--link-bandwidth", type=_number, help="link bytes/s (default 1e11)")
    p.add_argument("--link-latency", type=_number, help="link latency in seconds (default 5e-6)")
    p.add_argument(
        "--data-parallel", type=_whole, help="D, the replicas whose gradients the collectives sum (default: K, dp's)"
    )
    p.add_argument("--hardware", help="a preset or file: its intra-node link, and two-level collectives over its nodes")
    p.add_argument(
        "--model", help="a decoder preset (tiny-gpt, gpt3-175b, llama2-7b, ...) or config.json: its closed forms too"
    )
    p.add_argument("--seq-len", type=_whole, help="tokens per sequence for --model (default: its context length)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _profile_parser(p: argparse.ArgumentParser) -> None:
    # the profiler's defaults live beside its timing code, which imports NumPy's timing helpers: only here
    from ..profile import DEFAULT_REPEATS, DEFAULT_THREADS, DEFAULT_WARMUP

    _add_model_flags(p)
    p.add_argument(
        "--microbatches",
        type=_whole,
        default=RunConfig.microbatches,
        help="M: the micro-batch timed is the run's, batch/M rows (default %(default)s)",
    )
    p.add_argument(
        "--devices", type=_whole, help="time the stages of K devices ([stage.N] tables) instead of each layer"
    )
    p.add_argument("--chunks", type=_whole, help="v, stages per device with --devices (default 1)")
    p.add_argument(
        "--partition", default="uniform", help="with --devices, or alone: layer counts per stage, e.g. 2,3,3,3"
    )
    p.add_argument("--loss", default=RunConfig.loss, help="cross_entropy or mse (default %(default)s)")
    p.add_argument(
        "--dtype", help="training precision activation_bytes counts (default: the model's own, fp64 for the MLP)"
    )
    p.add_argument("--seed", type=_whole, default=RunConfig.seed, help="seed of weights and data (default 0)")
    p.add_argument("--warmup", type=_whole, default=DEFAULT_WARMUP, help="untimed runs first (default %(default)s)")
    p.add_argument(
        "--repeats", type=_whole, default=DEFAULT_REPEATS, help="timed runs, of which the median (default %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=_whole,
        default=DEFAULT_THREADS,
        help="BLAS threads while timing (default %(default)s: steady timings on shared cores)",
    )
    p.add_argument("-o", "--output", help="write the times file here instead of standard output")


def _no_flags(p: argparse.ArgumentParser) -> None:
    """A command without flags of its own."""


#: Each command: its one line of help and the function adding its flags, in the order ``--help`` lists them.
_COMMAND_PARSERS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "run": ("simulate one training step and print its metrics", _run_parser),
    "compare": ("run several strategies on one configuration, one row each", _compare_parser),
    "train": ("run several simulated steps with SGD or Adam and print the loss", _train_parser),
    "balance": ("the partition --partition balanced runs, against uniform", _balance_parser),
    "report": ("run a study and write a report folder with one HTML page", _report_parser),
    "sweep": ("run the product of a sweep file's axes, locally or on a Dask cluster", _sweep_parser),
    "plan": ("simulate every data x tensor x pipeline layout of a model on N GPUs and rank them", _plan_parser),
    "search": ("synthesise the fastest schedule for this configuration and a memory limit", _search_parser),
    "export": ("write a strategy's schedule in PyTorch's action format", _export_parser),
    "formulas": ("the closed forms for a configuration", _formulas_parser),
    "profile": (
        "time the real NumPy layers on this machine and write a times file for --cost measured",
        _profile_parser,
    ),
    "strategies": ("list every strategy found, built-in and plug-in", _no_flags),
}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: every command with its flags, or ``command`` alone.

    A run needs its own command only: building every command's parser and its flags (about 280) cost each
    run about 5 ms of its start-up, and ``profile``'s defaults import its timing module (issue 20). The other
    commands appear only in the usage that lists them all, printed when the command is missing or unknown,
    and then ``main`` builds them all.
    """
    parser = _Parser(prog="pipesched", description="Simulate pipeline-parallel training schedules.")
    parser.add_argument("--version", action="version", version=f"pipesched {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, add_flags) in _COMMAND_PARSERS.items():
        if command is None or command == name:
            add_flags(sub.add_parser(name, help=help_text))
    return parser


#: Each command's module in this package and its function. A command's module is imported when it runs, so
#: ``run`` does not pay for the planner's, the reports' or the search's imports (issue 20: start-up).
_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("runs", "_cmd_run"),
    "compare": ("runs", "_cmd_compare"),
    "train": ("runs", "_cmd_train"),
    "balance": ("tools", "_cmd_balance"),
    "formulas": ("tools", "_cmd_formulas"),
    "report": ("studies", "_cmd_report"),
    "export": ("tools", "_cmd_export"),
    "sweep": ("studies", "_cmd_sweep"),
    "strategies": ("tools", "_cmd_strategies"),
    "profile": ("profile", "_cmd_profile"),
    "plan": ("plan", "_cmd_plan"),
    "search": ("search", "_cmd_search"),
}


def _command(name: str) -> Any:
    """The function that runs command ``name``, its module imported now."""
    module, function = _COMMANDS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


#: A value that starts like a negative number: argparse would read it as an option (it does so for
#: anything starting with "-" but plain -5 or -.5), so ``--device-memory -5GB`` would never reach its check.
_NEGATIVE = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _value_options(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """The long options of ``parser`` and its commands: those that take a value, and all of them."""
    valued: set[str] = set()
    every: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub_valued, sub_every = _value_options(sub)
                valued |= sub_valued
                every |= sub_every
            continue
        longs = {o for o in action.option_strings if o.startswith("--")}
        every |= longs
        if action.nargs != 0:
            valued |= longs
    return valued, every


def _attach_negative_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--flag -5GB`` as ``--flag=-5GB``, so that a negative value reaches the flag's own check.

    Only after a long option that takes a value (or an abbreviation of such
    options only), and only for a value that starts like a number: no option
    of pipesched starts with a digit, so nothing else changes meaning.

    >>> _attach_negative_values(["run", "--device-memory", "-5GB", "--no-compute"], _parser())
    ['run', '--device-memory=-5GB', '--no-compute']
    """
    valued, every = _value_options(parser)
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # what follows is positional
            return out + list(argv[i:])
        named = {o for o in every if o.startswith(token)} if token.startswith("--") and "=" not in token else set()
        if named and named <= valued and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipesched`` command; returns the exit status.

    Bad input exits 2; a command may return its own status (``sweep``: 1 when every point failed).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # a command first: only its parser is built (issue 20: start-up); anything else meets the whole parser
    parser = _parser(argv[0] if argv and argv[0] in _COMMAND_PARSERS else None)
    try:
        args = parser.parse_args(_attach_negative_values(argv, parser))
    except SystemExit as exc:  # argparse has printed its one line (or --help)
        return int(exc.code or 0)
    try:
        status = _command(args.command)(args)
    except PipeschedError as exc:
        print(f"pipesched: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into head: not an error of the user's
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        print(
            f"pipesched: error: {exc.strerror or exc} ({exc.filename}); check the path and permissions", file=sys.stderr
        )
        return 2
    except MemoryError:  # past the checks made up front (pipesched.limits), which bound what they can
        print(
            "pipesched: error: this run does not fit in this machine's memory; use --no-compute, fewer or narrower "
            "--layers, a smaller --batch, or fewer devices or micro-batches",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    return status or 0


def console() -> int:
    """The ``pipesched`` command itself (and ``python -m pipesched``): ``main``, just before the process ends."""
    status = main()
    # As Python shuts down it runs the cyclic collector over every object still alive, several times: a large
    # step's plan and trace are hundreds of thousands, and nothing they hold needs the collector. Frozen, the
    # collections skip them (a tenth of a second of a K=64, M=1024 run). Not in main: a caller lives on
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(console())
