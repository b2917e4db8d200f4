"""The commands that plan without simulating: ``balance``, ``formulas``, ``export``, ``strategies``.

>>> from pipesched.balance import chain_graph, balance
>>> print(_balance_table(balance(chain_graph([2, 1, 1]), 2), in_seconds=False))
stage  layers  size  cost  memory
0      0-0     1     2     -
1      1-2     2     2     -
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from .. import formulas
from ..balance import Balance, balance, chain_graph, evaluate
from ..cost import FlopsCost
from ..errors import ConfigError, PipeschedError
from ..limits import check_actions, check_listing, check_memory
from ..model import layers_from_widths, parse_layers
from ..partition import uniform
from ..pipeline import check_limits, model_graph
from ..strategy import available_strategies, load_strategy, make_plan
from ..units import count, format_bytes, format_time
from .common import _config, _table, _check_output_path, _write_atomic

__all__ = ["_cmd_balance", "_cmd_formulas", "_cmd_export", "_cmd_strategies"]


def _balance_table(result: Balance, in_seconds: bool) -> str:
    """Per stage: its layers, cost (seconds for a model, plain for --costs) and memory."""
    rows = [("stage", "layers", "size", "cost", "memory")]
    for index, (stage, cost, memory) in enumerate(zip(result.stages, result.stage_costs, result.stage_memory)):
        rows.append((
            str(index), f"{stage[0]}-{stage[-1]}", str(len(stage)),
            format_time(cost, "s") if in_seconds else f"{cost:g}",
            format_bytes(int(memory)) if in_seconds else "-",
        ))
    return _table(rows)


def _cmd_balance(args: argparse.Namespace) -> None:
    config = _config(args)
    cap = config.device_memory
    if args.costs is not None:
        try:
            costs = [float(c) for c in args.costs.split(",")]
        except ValueError:
            raise ConfigError(f"--costs {args.costs!r} is not a list of numbers; write e.g. 5,1,1,1,1,1,1,5") from None
        if config.devices < 1:
            raise ConfigError(f"--devices {config.devices} is not allowed; use 1 or more")
        graph, links, stages = chain_graph(costs), {}, config.devices * (config.chunks or 1)
    else:
        strategy = load_strategy(config.strategy)
        chunks = config.chunks or getattr(strategy, "default_chunks", 1)
        check_limits(replace(config, chunks=chunks, compute=False), strategy)  # a run's, but no arrays: see below
        if config.balance_by == "measured":  # timing the layers builds the weights, one layer's work at a time
            check_memory(config, roles=("parameters",))
        stages = make_plan(strategy, config.devices, config.microbatches, chunks).num_stages
        graph, links = model_graph(config)
    result = balance(graph, stages, memory_cap=cap, **links)
    uniform_sizes = [len(r) for r in uniform(graph.number_of_nodes(), stages)]
    baseline = evaluate(graph, uniform_sizes, **links)
    if args.json:
        data = {**result.to_dict(), "uniform": baseline.to_dict()}
        if args.costs is not None:  # plain costs carry no memory: say unknown, not zero
            data["stage_memory"] = data["uniform"]["stage_memory"] = None
        print(json.dumps(data, indent=2))
        return
    seconds = args.costs is None
    what = "--costs" if not seconds else f"layers {config.layers}, batch {config.batch}, by {config.balance_by}"
    print(f"{graph.number_of_nodes()} layers into {stages} stages ({what})\n")
    print(_balance_table(result, in_seconds=seconds))
    show = (lambda v: format_time(v, "s")) if seconds else (lambda v: f"{v:g}")
    print(f"\nbottleneck {show(result.bottleneck)}; uniform {','.join(map(str, uniform_sizes))} gives "
          f"{show(baseline.bottleneck)}")


def _cmd_formulas(args: argparse.Namespace) -> None:
    k, m, v = args.devices, args.microbatches, args.chunks
    for flag, value in (("--devices", k), ("--microbatches", m), ("--chunks", v)):
        if value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; use 1 or more")
    check_actions(k, m, v)  # the configurations pipesched would plan, as every command
    check_listing(k)
    links = FlopsCost(**{name: value for name, value in (("link_bandwidth", args.link_bandwidth),
                                                         ("link_latency", args.link_latency)) if value is not None})
    params = sum(layer.param_count for layer in layers_from_widths(parse_layers(args.layers))) * 8
    allreduce = formulas.ring_allreduce_time(k, params, links.link_bandwidth, links.link_latency)
    rows_out = {}
    for name, form in formulas.CLOSED_FORMS.items():
        chunks = v if name == "interleaved" else 1
        rows_out[name] = {
            "bubble": form.bubble(k, m, chunks), "bubble_formula": form.bubble_text,
            "peak_inflight_microbatches": form.peak_inflight(k, m, chunks),  # None: the strategy cannot run it
            "inflight_formula": form.inflight_text, "source": form.source,
        }
    speedup = formulas.pipeline_speedup(k, m)
    if args.json:
        print(json.dumps({"devices": k, "microbatches": m, "chunks": v, "strategies": rows_out,
                          "pipeline_speedup": speedup, "allreduce_bytes": params, "allreduce_time": allreduce},
                         indent=2))
        return
    print(f"K={k} devices, M={m} micro-batches, v={v} chunks for interleaved; bubble under unit cost\n")
    table = [("strategy", "bubble", "formula", "peak in flight", "formula", "source")]
    for name, row in rows_out.items():
        bubble = "-" if row["bubble"] is None else f"{row['bubble']:.4f}"
        inflight = row["peak_inflight_microbatches"]
        table.append((name, bubble, row["bubble_formula"], "-" if inflight is None else "/".join(map(str, inflight)),
                      row["inflight_formula"], row["source"]))
    print(_table(table))
    print(f"\npipeline speedup over one device, K/(1+(K-1)/M): {speedup:.4f}")
    print(f"ring all-reduce of {format_bytes(params)} of gradients (--layers {args.layers}) over {k} devices, "
          f"2(K-1)/K*bytes/bandwidth + 2(K-1)*latency: {format_time(allreduce, 's')}")
    print("bubble = idle share of K x makespan; Megatron's bubble/ideal ratio r is the fraction r/(1+r)")
    print("found by simulation: read off the simulator, not derived; regression tests hold it (pipesched/formulas.py)")


def _cmd_export(args: argparse.Namespace) -> None:
    from ..exchange import to_torch_csv

    for flag, value in (("--devices", args.devices), ("--microbatches", args.microbatches), ("--chunks", args.chunks)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; use 1 or more")
    if args.output is not None:
        _check_output_path("-o", args.output)
    strategy = load_strategy(args.strategy)
    chunks = args.chunks or getattr(strategy, "default_chunks", 1)
    check_actions(args.devices, args.microbatches, chunks)  # no model here: stages and memory do not apply
    schedule = make_plan(strategy, args.devices, args.microbatches, chunks)
    text = to_torch_csv(schedule) if args.format == "torch-csv" else schedule.table() + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write_atomic(args.output, text)
        print(f"{args.format} schedule of {strategy.name} ({count(args.devices, 'rank')}, "
              f"{count(args.microbatches, 'micro-batch')}) written to {args.output}")


def _cmd_strategies(args: argparse.Namespace) -> None:
    rows = [("name", "source", "description")]
    for name, source in available_strategies().items():
        try:
            doc = (type(load_strategy(name)).__doc__ or "").strip().splitlines()[0]
        except PipeschedError as exc:
            doc = f"fails to load: {exc}"
        rows.append((name, source, doc))
    print(_table(rows))
    print("\nany path/to/file.py:ClassName works too")
