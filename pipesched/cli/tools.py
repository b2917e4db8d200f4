"""The commands that plan without simulating: ``balance``, ``formulas``, ``export``, ``strategies``.

>>> from pipesched.balance import chain_graph, balance
>>> print(_balance_table(balance(chain_graph([2, 1, 1]), 2), in_seconds=False))
stage  device  layers  size  compute  memory
0      0       0-0     1     2        -
1      1       1-2     2     2        -
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, cast

from .. import formulas
from ..cost import FlopsCost
from ..errors import ConfigError, PipeschedError, ScheduleError
from ..hardware import load_hardware
from ..limits import check_actions, check_listing, check_memory
from ..model import layers_from_widths, parse_layers
from ..partition import uniform
from ..pipeline import _check_counts, model_graph, prepare
from ..strategy import available_strategies, default_chunks, load_strategy, make_plan
from ..units import count, format_bytes, format_time
from .common import _check_output_path, _config, _table, _write_atomic

if TYPE_CHECKING:  # networkx loads with pipesched.balance, which only `balance` needs (issue 20: start-up)
    import networkx as nx

    from ..balance import Balance, Placement

__all__ = ["_cmd_balance", "_cmd_formulas", "_cmd_export", "_cmd_strategies"]


def _balance_table(
    result: Balance, in_seconds: bool, placement: Placement | None = None, blocks: int | None = None
) -> str:
    """Per stage: its device(s), layers, compute (seconds for a model, plain for --costs) and memory.

    ``blocks``: a decoder's block count, to name what each stage holds (its layers are embedding, blocks,
    final norm, output).
    """
    from ..balance import Placement

    placement = placement or Placement.one_per_device(len(result.stages))
    rows = [("stage", "device", "layers", "size", "compute", "memory") + (("holds",) if blocks is not None else ())]
    for index, (stage, cost, memory) in enumerate(zip(result.stages, result.stage_costs, result.stage_memory)):
        devices = [d for d, share in enumerate(placement.shares[index]) if share > 0]
        rows.append(
            (
                str(index),
                ",".join(map(str, devices)),
                f"{stage[0]}-{stage[-1]}",
                str(len(stage)),
                format_time(cost, "s") if in_seconds else f"{cost:g}",
                format_bytes(int(memory)) if in_seconds else "-",
            )
            + ((_decoder_holds(cast(list[int], stage), blocks),) if blocks is not None else ())
        )
    return _table(rows)


def _decoder_holds(stage: list[int], blocks: int) -> str:
    """What a run of a decoder's layers is: layer 0 the embedding, 1..L the blocks, then final norm and output."""
    parts = ["embedding"] if stage[0] == 0 else []
    inner = [i - 1 for i in stage if 1 <= i <= blocks]
    if inner:
        parts.append(f"block {inner[0]}" if len(inner) == 1 else f"blocks {inner[0]}-{inner[-1]} ({len(inner)})")
    parts += [name for i, name in ((blocks + 1, "final norm"), (blocks + 2, "output")) if i in stage]
    return ", ".join(parts)


def _decoder_why(graph: nx.DiGraph, blocks: int, sequences: int, seq_len: int) -> str:
    """Why a decoder's end stages want fewer blocks: its embedding, a block and its output layer side by side.

    Each row is a node of the balancer's layer graph (``pipesched.balance.layer_graph``): its compute per
    micro-batch (forward + backward under the flops model: the output layer's 2 t h V FLOPs forward) and
    its memory (weights, gradients and optimizer state, the embedding's V h parameters among them, and
    GPipe's activations of the whole batch), each also in blocks' worth.
    """
    block = graph.nodes[1]
    rows = [("layer", "compute", "in blocks", "memory", "in blocks")]
    for name, node in (("embedding", 0), ("block", 1), ("final norm", blocks + 1), ("output layer", blocks + 2)):
        data = graph.nodes[node]
        rows.append(
            (
                name,
                format_time(data["cost"], "s"),
                f"{data['cost'] / block['cost']:.2f}",
                format_bytes(int(data["memory"])),
                f"{data['memory'] / block['memory']:.2f}",
            )
        )
    return f"per layer, micro-batches of {count(sequences, 'sequence')} of {seq_len} tokens:\n{_table(rows)}"


def _device_table(result: Balance, placement: Placement, show: Callable[[float], str]) -> str:
    """Per device: the stages it runs and its load per micro-batch (their compute, by share)."""
    rows = [("device", "stages", "load")]
    for d, load in enumerate(result.device_loads):
        rows.append((str(d), ",".join(map(str, placement.stages_on(d))), show(load)))
    return _table(rows)


def _cmd_balance(args: argparse.Namespace) -> None:
    from ..balance import Placement, balance, chain_graph, evaluate

    config = _config(args)
    if args.costs is not None:
        try:
            costs = [float(c) for c in args.costs.split(",")]
        except ValueError:
            raise ConfigError(f"--costs {args.costs!r} is not a list of numbers; write e.g. 5,1,1,1,1,1,1,5") from None
        _check_counts(config)
        strategy = load_strategy(str(config.strategy))
        chunks = config.chunks if config.chunks is not None else default_chunks(strategy)
        check_actions(config.devices, config.microbatches, chunks)  # the balancer itself says if the layers are too few
        schedule = make_plan(strategy, config.devices, config.microbatches, chunks)
        graph, bandwidth = chain_graph(costs), math.inf
        result: Balance | None = balance(graph, Placement.of(schedule))
    else:  # what --partition balanced runs, every check first
        if config.balance_by == "measured":  # timing the layers builds the weights, one layer's work at a time
            check_memory(config, roles=("parameters",))
        prepared = prepare(replace(config, partition="balanced", compute=False))
        # the balancer places one pipeline replica's stages: --data-parallel copies the partition it finds
        config, schedule, result = prepared.config, prepared.plan or prepared.schedule, prepared.balance
        graph, bandwidth = model_graph(config)
    assert result is not None
    placement = Placement.of(schedule)
    uniform_sizes = [len(r) for r in uniform(graph.number_of_nodes(), placement.stages)]
    baseline = evaluate(graph, uniform_sizes, placement, link_bandwidth=bandwidth)
    if args.json:
        data = {**result.to_dict(), "uniform": baseline.to_dict()}
        if args.costs is not None:  # plain costs carry no memory: say unknown, not zero
            data["stage_memory"] = data["uniform"]["stage_memory"] = None
        print(json.dumps(data, indent=2))
        return
    seconds = args.costs is None
    name = config.strategy if isinstance(config.strategy, str) else config.strategy.name
    model = f"layers {config.layers}" if config.model is None else f"model {config.model}, seq-len {config.seq_len}"
    what = "--costs" if not seconds else f"{model}, batch {config.batch}, by {config.balance_by}"
    print(
        f"{count(graph.number_of_nodes(), 'layer')} into {count(placement.stages, 'stage')} on "
        f"{count(placement.devices, 'device')} as {name} places them ({what})\n"
    )
    blocks = None if config.model is None else graph.number_of_nodes() - 3  # embedding, final norm, output
    print(_balance_table(result, in_seconds=seconds, placement=placement, blocks=blocks))
    show = (lambda v: format_time(v, "s")) if seconds else (lambda v: f"{v:g}")
    if not placement.exclusive or any(max(row) < 1 for row in placement.shares):
        print()
        print(_device_table(result, placement, show))
    sims = result.simulated
    best = (
        result
        if sims is None or sims.optimum == result.sizes
        else (evaluate(graph, sims.optimum, placement, link_bandwidth=bandwidth))
    )
    loads = [f"{show(best.bottleneck)} at best ({_sizes(best.sizes)}: {_busiest(best)}; {result.status})"]
    if best is not result:
        loads.append(f"{show(result.bottleneck)} balanced")
    loads.append(f"{show(baseline.bottleneck)} uniform ({_sizes(uniform_sizes)})")
    if blocks is not None:
        print()
        rows = -(-config.batch // (config.data_parallel * config.microbatches))  # the largest micro-batch
        print(_decoder_why(graph, blocks, rows, config.seq_len or 0))
    print(f"\nbusiest device or link per micro-batch: {', '.join(loads)}")
    if args.costs is not None:
        return
    if sims is None:
        why = (
            "measured costs are not the simulator's" if config.balance_by != "flops" else "there is only one partition"
        )
        print(f"not simulated: {why}")
        return
    unit = "unit" if config.cost == "unit" else "s"
    steps = [f"{format_time(sims.makespan, unit)} balanced" + (" (out of memory)" if sims.oom else "")]
    steps.append(
        "uniform does not fit --device-memory"
        if sims.uniform_makespan is None
        else f"{format_time(sims.uniform_makespan, unit)} uniform"
    )
    searched = (
        f"every one of the {count(sims.candidates, 'partition')} that fit simulated"
        if sims.exhaustive
        else f"{count(sims.candidates, 'partition')} simulated, from the best and uniform"
    )
    print(
        f"simulated step of {name} ({count(config.microbatches, 'micro-batch')}, cost {config.cost}): "
        f"{', '.join(steps)}; {searched}"
    )


def _busiest(result: Balance) -> str:
    """The resource that sets the bottleneck: a device, or a link as src -> dst."""

    for d, load in enumerate(result.device_loads):
        if load == result.bottleneck:
            return f"device {d}"
    src, dst = next(link for link, load in result.link_loads.items() if load == result.bottleneck)
    return f"link {src} -> {dst}"


def _sizes(sizes: list[int]) -> str:
    return ",".join(map(str, sizes))


def _decoder_forms(spec: str, seq_len: int | None) -> dict[str, Any]:
    """A decoder's closed forms (``pipesched.decoder.accounting``) for one sequence, with their sources."""
    from ..decoder import accounting as acc
    from ..decoder.config import load_config, preset_names, preset_source

    config = load_config(spec)
    s = config.max_positions if seq_len is None else seq_len
    config.check_sequence(s)
    h, a = config.hidden_size, config.num_heads
    flops = acc.block_flops(config, 1, s)
    per = acc.adam_bytes_per_parameter("bf16")
    total = acc.total_parameters(config)
    return {
        "model": config.name,
        "source": preset_source(spec) if spec in preset_names() else spec,
        "seq_len": s,
        "blocks": config.num_layers,
        "parameters_per_block": acc.block_parameters(config),
        "parameters": total,
        "block_flops_per_sequence": {"forward": flops.forward, "input_gradient": flops.backward_input,
                                     "weight_gradient": flops.backward_weight},
        "model_flops_per_sequence": acc.model_flops(config, 1, s)._asdict(),
        "block_activation_bytes_per_sequence_bf16": {
            mode: acc.block_kept_bytes(config, 1, s, 2, mode) for mode in ("none", "selective", "full")
        },
        "korthikanti_block_bytes_per_sequence": {
            mode: acc.korthikanti_block_bytes(s, 1, h, a, mode) for mode in ("none", "selective", "full")
        },
        "bytes_per_parameter_mixed_precision_adam": per.weights + per.gradients + per.optimizer,
        "weights_gradients_optimizer_bytes": total * (per.weights + per.gradients + per.optimizer),
    }  # fmt: skip


def _print_decoder_forms(forms: dict[str, Any]) -> None:
    f, kept, kor = (
        forms["block_flops_per_sequence"],
        forms["block_activation_bytes_per_sequence_bf16"],
        (forms["korthikanti_block_bytes_per_sequence"]),
    )
    print()
    print(
        f"model {forms['model']} ({forms['source']}), {forms['blocks']} blocks, one sequence of "
        f"{forms['seq_len']} tokens"
    )
    print(_table([
        ("quantity", "value", "formula (t tokens, h hidden, f MLP, V vocabulary, a heads)"),
        ("parameters per block", f"{forms['parameters_per_block']:,}", "4h^2 with MHA (h(h + 2 h_kv) + h^2), "
         "+ 2hf (GELU) or 3hf (SwiGLU), + norms and biases"),
        ("parameters in all", f"{forms['parameters']:,}", "embedding + L blocks + final norm + output (tied: once)"),
        ("block forward FLOPs", f"{f['forward']:.4g}", "2t(4h^2 + 2hf or 3hf) + 4 t s h (attention scores, values)"),
        ("block I / W FLOPs", f"{f['input_gradient']:.4g} / {f['weight_gradient']:.4g}",
         "I: projections + twice the attention core; W: the projections"),
        ("block activations, bf16", " / ".join(format_bytes(kept[m]) for m in ("none", "selective", "full")),
         "kept for backward: no recompute / selective (attention core) / full"),
        ("Korthikanti et al. Table 2", " / ".join(format_bytes(kor[m]) for m in ("none", "selective", "full")),
         "34sbh + 5as^2b / 34sbh / 2sbh (they count dropout masks; pipesched has no dropout)"),
        ("weights + grads + Adam", format_bytes(forms["weights_gradients_optimizer_bytes"]),
         f"{forms['bytes_per_parameter_mixed_precision_adam']} bytes per parameter: 2 + 2 + 12, mixed precision "
         "(ZeRO, Rajbhandari et al. 2020, section 3.1)"),
    ]))  # fmt: skip


def _cmd_formulas(args: argparse.Namespace) -> None:
    k, m, v = args.devices, args.microbatches, args.chunks
    for flag, value in (("--devices", k), ("--microbatches", m), ("--chunks", v)):
        if value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; use 1 or more")
    check_actions(k, m, v)  # the configurations pipesched would plan, as every command
    check_listing(k)
    links = FlopsCost(
        **{
            name: value
            for name, value in (("link_bandwidth", args.link_bandwidth), ("link_latency", args.link_latency))
            if value is not None
        }
    )
    model = None if args.model is None else _decoder_forms(args.model, args.seq_len)
    if model is None:
        params = sum(layer.param_count for layer in layers_from_widths(parse_layers(args.layers))) * 8
        gradients = f"--layers {args.layers}"
    else:  # the decoder's gradients in bf16, its own training precision
        params, gradients = 2 * model["parameters"], f"--model {args.model}, bf16"
    ring = k if args.data_parallel is None else args.data_parallel  # D replicas; without it, dp's K
    if ring < 1:
        raise ConfigError(f"--data-parallel {ring} is not allowed; use 1 or more")
    hardware = None if args.hardware is None else load_hardware(args.hardware)
    if hardware is not None and (args.link_bandwidth is None and args.link_latency is None):
        links = FlopsCost(link_bandwidth=hardware.intra_node.bandwidth, link_latency=hardware.intra_node.latency)
    allreduce = formulas.ring_allreduce_time(ring, params, links.link_bandwidth, links.link_latency)
    collectives = _collectives(ring, params, links, hardware)
    rows_out: dict[str, dict[str, Any]] = {}
    for name, form in formulas.CLOSED_FORMS.items():
        chunks = v if name in formulas.LOOPED else 1
        rows_out[name] = {
            "bubble": form.bubble(k, m, chunks),
            "bubble_formula": form.bubble_text,
            "peak_inflight_microbatches": form.peak_inflight(k, m, chunks),  # None: the strategy cannot run it
            "inflight_formula": form.inflight_text,
            "source": form.source,
        }
    speedup = formulas.pipeline_speedup(k, m)
    if args.json:
        print(
            json.dumps(
                {
                    "devices": k,
                    "microbatches": m,
                    "chunks": v,
                    "strategies": rows_out,
                    "pipeline_speedup": speedup,
                    "allreduce_bytes": params,
                    "allreduce_devices": ring,
                    "allreduce_time": allreduce,
                    "collectives": collectives,
                    "model": model,
                },
                indent=2,
            )
        )
        return
    print(f"K={k} devices, M={m} micro-batches, v={v} chunks for the looped schedules; bubble under unit cost\n")
    table = [("strategy", "bubble", "formula", "peak in flight", "formula", "source")]
    for name, row in rows_out.items():
        bubble = "-" if row["bubble"] is None else f"{row['bubble']:.4f}"
        inflight = row["peak_inflight_microbatches"]
        table.append(
            (
                name,
                bubble,
                row["bubble_formula"],
                "-" if inflight is None else "/".join(map(str, inflight)),
                row["inflight_formula"],
                row["source"],
            )
        )
    print(_table(table))
    print(f"\npipeline speedup over one device, K/(1+(K-1)/M): {speedup:.4f}")
    two = collectives["hierarchical"]
    if collectives["uneven"] is not None:
        assert hardware is not None  # nodes come from a hardware
        print(
            f"gradient collectives of {format_bytes(params)} ({gradients}) over {ring} devices: on nodes of "
            f"{hardware.devices_per_node} some pipeline device's {ring} replicas sit unevenly on two nodes, so they "
            f"run one flat ring whose {hardware.inter_node.name} edges carry all 2(D-1) chunks in turn: at least "
            f"{format_time(collectives['uneven']['flat_ring_at_least'], 's')} (a D that divides or is a multiple of "
            f"{hardware.devices_per_node} runs in one node or in two levels)"
        )
    elif two is None:
        half = format_time(collectives["ring"]["reduce_scatter"], "s")
        print(
            f"ring all-reduce of {format_bytes(params)} of gradients ({gradients}) over {ring} devices, "
            f"2(D-1)(latency + ceil(bytes/D)/bandwidth): {format_time(allreduce, 's')}; with a sharded optimizer "
            f"a reduce-scatter then an all-gather, (D-1)(latency + ceil(bytes/D)/bandwidth) each: {half} + {half}"
        )
    else:
        assert hardware is not None  # two levels come from a hardware's nodes
        print(
            f"gradient collectives of {format_bytes(params)} ({gradients}) over {ring} devices, {two['nodes']} nodes "
            f"of {two['per_node']} ({hardware.intra_node.name} inside, {hardware.inter_node.name} between), in two "
            f"levels as --collective auto runs them: all-reduce {format_time(two['allreduce'], 's')}; with a sharded "
            f"optimizer a reduce-scatter then an all-gather, {format_time(two['reduce_scatter'], 's')} each; one flat "
            f"ring across the nodes takes at least {format_time(two['flat_ring_at_least'], 's')}"
        )
    print("bubble = idle share of K x makespan; Megatron's bubble/ideal ratio r is the fraction r/(1+r)")
    print("found by simulation: read off the simulator, not derived; regression tests hold it (pipesched/formulas.py)")
    if model is not None:
        _print_decoder_forms(model)


def _collectives(ring: int, nbytes: int, links: FlopsCost, hardware: Any) -> dict[str, Any]:
    """The gradient collectives' closed forms over ``ring`` devices (``pipesched.formulas``): one flat ring on
    ``links``, and with ``hardware`` two levels where the ring fills whole nodes of its devices per node (the
    D replicas of one pipeline device sit side by side, ``pipesched.layout``), as ``--collective auto`` runs it."""
    b, lat = links.link_bandwidth, links.link_latency
    out: dict[str, Any] = {
        "ring": {
            "allreduce": formulas.ring_allreduce_time(ring, nbytes, b, lat),
            "reduce_scatter": formulas.ring_reduce_scatter_time(ring, nbytes, b, lat),
            "all_gather": formulas.ring_all_gather_time(ring, nbytes, b, lat),
        },
        "hierarchical": None,
        "uneven": None,
    }
    if hardware is None or (ring <= hardware.devices_per_node and hardware.devices_per_node % ring == 0):
        return out  # no nodes, or every pipeline device's replicas inside one node: the flat ring above
    p = hardware.devices_per_node
    inter_b = hardware.inter_node.bandwidth
    if ring < p or ring % p:
        # some pipeline device's replicas sit unevenly on two or more nodes (device d's are d·D .. d·D+D-1):
        # one flat ring, whose inter-node edges carry every one of its 2(D-1) chunks in turn
        out["uneven"] = {"flat_ring_at_least": 2 * (ring - 1) * -(-nbytes // ring) / inter_b}
        return out
    n = ring // p
    inter = (hardware.inter_node.bandwidth, hardware.inter_node.latency)
    args = (n, p, nbytes, b, lat, *inter)
    out["hierarchical"] = {
        "nodes": n,
        "per_node": p,
        "allreduce": formulas.hierarchical_allreduce_time(*args),
        "reduce_scatter": formulas.hierarchical_reduce_scatter_time(*args),
        "all_gather": formulas.hierarchical_all_gather_time(*args),
        # a flat ring over the same devices sends 2(pn-1) chunks of ceil(S/(pn)) over each inter-node link
        "flat_ring_at_least": 2 * (ring - 1) * -(-nbytes // ring) / inter[0],
    }
    return out


def _cmd_export(args: argparse.Namespace) -> None:
    from ..exchange import to_torch_csv

    for flag, value in (("--devices", args.devices), ("--microbatches", args.microbatches), ("--chunks", args.chunks)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; use 1 or more")
    if args.output is not None:
        _check_output_path("-o", args.output, "schedule.csv")
    strategy = load_strategy(args.strategy)
    chunks = args.chunks or default_chunks(strategy)
    check_actions(args.devices, args.microbatches, chunks)  # no arrays here: memory does not apply
    if args.model is not None:  # the schedule is the model's to run: every stage needs one of its layers
        from ..decoder import assemble
        from ..limits import check_stages
        from ..strategy import planned_stages

        layers = len(assemble.chain(assemble.resolve(args.model, args.seq_len)))
        stages = planned_stages(strategy, args.devices, chunks)
        check_stages(strategy.name, stages, args.devices, chunks, layers, f"--model {args.model}")
    schedule = make_plan(strategy, args.devices, args.microbatches, chunks)
    try:
        text = to_torch_csv(schedule) if args.format == "torch-csv" else schedule.table() + "\n"
    except ScheduleError as exc:  # a replicated stage: say which strategy made it
        raise ScheduleError(f"--strategy {args.strategy} cannot be exported: {exc}") from None
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write_atomic(args.output, text)
        print(
            f"{args.format} schedule of {strategy.name} ({count(args.devices, 'rank')}, "
            f"{count(args.microbatches, 'micro-batch')}) written to {args.output}"
        )


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
