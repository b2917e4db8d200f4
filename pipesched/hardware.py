"""Device presets: peak FLOP/s per training precision, memory, and the links inside and between nodes.

The presets are data (``pipesched/hardware.toml``, in the package), each
with its vendor datasheet quoted beside the numbers; a user's own file
(``--hardware mine.toml``) has the keys of one preset at its top level and
is checked key by key (pipesched.schema). The achieved FLOP/s of a run is
the preset's peak in its training precision times an efficiency, the
fraction of peak that matrix multiplies reach (the file's default, with its
source: Narayanan et al. 2021, Megatron-LM, Table 1).

>>> h100 = load_hardware("h100-sxm")
>>> h100.peak_flops.bf16, h100.memory, h100.intra_node.name, h100.inter_node.bandwidth
(989500000000000.0, 80000000000.0, 'NVLink 4', 50000000000.0)
>>> "cpu" in preset_names() and DEFAULT_EFFICIENCY
0.5
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .cost import CostModel, FlopsCost, SpeedCost, make_cost_model, parse_device_speed
from .errors import ConfigError
from .files import read_toml
from .layout import total_devices
from .topology import LinkKind, make_topology

if TYPE_CHECKING:
    from .partition import Partition
    from .times import Times

if TYPE_CHECKING:
    from .pipeline import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "Link",
    "PeakFlops",
    "Hardware",
    "load_hardware",
    "preset_names",
    "run_hardware",
    "default_memory",
    "flops_model",
    "check_hardware",
    "cost_model",
    "describe",
    "DEFAULT_EFFICIENCY",
    "EFFICIENCY_SOURCE",
    "MLP_HARDWARE",
]

T = TypeVar("T")

#: The preset whose speeds and links the seed MLP runs on when no ``--hardware`` is named (issue 15).
MLP_HARDWARE = "cpu"


@dataclass(frozen=True, kw_only=True)
class Link:
    """One kind of link: bytes per second in each direction, seconds of latency, a name such as ``NVLink 4``."""

    name: str
    bandwidth: float
    latency: float
    source: str = ""


@dataclass(frozen=True, kw_only=True)
class PeakFlops:
    """Dense peak FLOP/s of the matrix units in each training precision (pipesched.precision's names)."""

    bf16: float
    fp16: float
    fp32: float
    fp64: float


@dataclass(frozen=True, kw_only=True)
class Hardware:
    """One device preset: the keys of a ``[preset.NAME]`` table, or of a user's whole file, once checked.

    A plain dataclass, so that a run on a built-in preset never imports pydantic (issue 20: start-up); a
    user's file is checked key by key by its pydantic model (``pipesched.hardware_file``) first.
    """

    description: str = ""
    source: str = ""
    fp32_kind: str = ""
    peak_flops: PeakFlops
    memory: float  # bytes per device
    devices_per_node: int
    intra_node: Link
    inter_node: Link
    name: str = ""  # the preset's name or the file's path, filled in by load_hardware


def _hardware(keys: dict[str, Any], name: str) -> Hardware:
    """``Hardware`` from one preset's keys as TOML reads them (or as its checked model dumps them).

    Numbers are made floats as pydantic's float fields make them, so that a preset read here equals the same
    preset read through the file's model (tests/test_hardware.py holds the two equal for every preset).
    """

    def link(table: dict[str, Any]) -> Link:
        return Link(
            name=table["name"],
            bandwidth=float(table["bandwidth"]),
            latency=float(table["latency"]),
            source=table.get("source", ""),
        )

    peak = keys["peak_flops"]
    return Hardware(
        description=keys.get("description", ""),
        source=keys.get("source", ""),
        fp32_kind=keys.get("fp32_kind", ""),
        peak_flops=PeakFlops(**{dtype: float(peak[dtype]) for dtype in ("bf16", "fp16", "fp32", "fp64")}),
        memory=float(keys["memory"]),
        devices_per_node=int(keys["devices_per_node"]),
        intra_node=link(keys["intra_node"]),
        inter_node=link(keys["inter_node"]),
        name=name,
    )


class _Presets(NamedTuple):
    """The package's preset file: the default efficiency, its source, and the presets by name."""

    efficiency: float
    efficiency_source: str
    preset: dict[str, Hardware]


@lru_cache(maxsize=1)
def _presets() -> _Presets:
    # read without pydantic: the file is the package's own, and tests/test_hardware.py checks it through the
    # same model as a user's file (every run reads a preset, and pydantic alone costs ~45 ms of start-up)
    text = resources.files(__package__).joinpath("hardware.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    presets = {name: _hardware(keys, name) for name, keys in data["preset"].items()}
    return _Presets(float(data["efficiency"]), data["efficiency_source"], presets)


#: The fraction of peak FLOP/s that matrix multiplies reach when none is given, and its source.
DEFAULT_EFFICIENCY: float = _presets().efficiency
EFFICIENCY_SOURCE: str = _presets().efficiency_source


def preset_names() -> list[str]:
    """The names of the built-in presets, in the file's order."""
    return list(_presets().preset)


def load_hardware(spec: str) -> Hardware:
    """A preset by name, or a user's file (``*.toml``, the keys of one preset) by path.

    Raises ``ConfigError`` naming the known presets for an unknown name, and
    the key's path for a bad value in a file.
    """
    presets = _presets().preset
    if spec in presets:
        return presets[spec]
    if not (spec.endswith(".toml") or os.sep in spec or os.path.exists(spec)):
        raise ConfigError(
            f"--hardware {spec!r} is not a preset; use one of {', '.join(presets)}, or the path of a .toml file "
            "with the keys of one preset"
        )
    from .hardware_file import Hardware as HardwareFile  # pydantic: imported when a user's file is read
    from .schema import validate

    data = read_toml(spec, "hardware")
    checked = validate(HardwareFile, data, os.path.basename(spec))
    return _hardware(checked.model_dump(), spec)


def _check_efficiency(efficiency: float | None) -> None:
    if efficiency is not None and not (math.isfinite(efficiency) and 0 < efficiency <= 1):
        raise ConfigError(
            f"--efficiency {efficiency:g} is not in (0, 1]; give the fraction of peak that matrix multiplies "
            f"reach, e.g. {DEFAULT_EFFICIENCY}"
        )


def run_hardware(config: RunConfig) -> Hardware | None:
    """The preset or file a run's devices are: ``config.hardware``, the seed MLP's ``cpu``, or None (a decoder's).

    Also checks the hardware flags that need no preset, so that a bad one fails before any work.
    """
    _check_efficiency(config.efficiency)
    # the inter-node link's numbers obey the rules of --link-bandwidth and --link-latency (pipesched.cost)
    bandwidth, latency = config.inter_node_bandwidth, config.inter_node_latency
    if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth >= 1):
        raise ConfigError(
            f"--inter-node-bandwidth {bandwidth:g} is not a finite rate of at least 1 per second; give e.g. 5e10"
        )
    if latency is not None and not (math.isfinite(latency) and 0 <= latency <= 1):
        raise ConfigError(f"--inter-node-latency {latency:g} is not between 0 and 1 second; give seconds, e.g. 1e-5")
    if config.devices_per_node is not None and (
        isinstance(config.devices_per_node, bool)
        or not isinstance(config.devices_per_node, int)
        or config.devices_per_node < 1
    ):
        raise ConfigError(f"--devices-per-node {config.devices_per_node!r} is not allowed; use 1 or more")
    if config.hardware is not None:
        return load_hardware(config.hardware)
    return load_hardware(MLP_HARDWARE) if config.model is None else None


def default_memory(config: RunConfig) -> int | None:
    """``--device-memory`` unless given: a named preset's memory (the seed MLP's implicit ``cpu`` sets none)."""
    if config.device_memory is not None or config.hardware is None:
        return config.device_memory
    return int(load_hardware(config.hardware).memory)


def flops_model(config: RunConfig, dtype: str) -> FlopsCost:
    """The ``flops`` cost model of ``config``'s devices, nodes and links, in training precision ``dtype``.

    Achieved FLOP/s = peak in ``dtype`` x efficiency (``--efficiency``, else
    the preset file's default). ``--device-flops`` replaces a named preset's
    peak; without ``--hardware`` it is an achieved rate already, as it always
    was, and ``--efficiency`` is refused (it would count twice). Without ``--hardware`` the seed MLP runs
    on the ``cpu`` preset's speed and links and a decoder on FlopsCost's own
    defaults, all devices on one node unless ``--devices-per-node`` or
    ``--node-map`` says otherwise; a named preset brings its own devices per
    node. Each ``--link-*``/``--inter-node-*`` flag replaces one link number.
    """
    hardware = run_hardware(config)
    named = config.hardware is not None
    if (hardware is None or config.device_flops is not None and not named) and config.efficiency is not None:
        # an achieved rate already: scaling it again would count the efficiency twice
        rate = config.device_flops if config.device_flops is not None else FlopsCost().device_flops
        raise ConfigError(
            f"--efficiency {config.efficiency:g} scales a preset's peak, but without --hardware the device rate "
            f"({rate:g} FLOP/s) is already what the device achieves; name --hardware, or give the achieved rate "
            f"as --device-flops {rate * config.efficiency:g}"
        )
    if hardware is None:
        base = FlopsCost()
        intra = LinkKind("link", base.link_bandwidth, base.link_latency)
        inter = LinkKind("inter-node link", base.link_bandwidth, base.link_latency)
        achieved = _given(config.device_flops, base.device_flops)
    else:
        intra = LinkKind(hardware.intra_node.name, hardware.intra_node.bandwidth, hardware.intra_node.latency)
        inter = LinkKind(hardware.inter_node.name, hardware.inter_node.bandwidth, hardware.inter_node.latency)
        if config.device_flops is not None and not named:
            achieved = config.device_flops
        else:
            peak = _given(config.device_flops, float(getattr(hardware.peak_flops, dtype)))
            achieved = peak * _given(config.efficiency, DEFAULT_EFFICIENCY)
    # a link keeps its preset's name only while its numbers are the preset's: "NVLink 4" at 1 GB/s would mislead
    if config.link_bandwidth is not None or config.link_latency is not None:
        intra = intra._replace(name="link")
    if config.inter_node_bandwidth is not None or config.inter_node_latency is not None:
        inter = inter._replace(name="inter-node link")
    intra = intra._replace(
        bandwidth=_given(config.link_bandwidth, intra.bandwidth), latency=_given(config.link_latency, intra.latency)
    )
    if hardware is None:  # no preset: one kind of link, so the flags that set it set the link between nodes too
        inter = inter._replace(bandwidth=intra.bandwidth, latency=intra.latency)
    inter = inter._replace(
        bandwidth=_given(config.inter_node_bandwidth, inter.bandwidth),
        latency=_given(config.inter_node_latency, inter.latency),
    )
    per_node = _given(
        config.devices_per_node,
        hardware.devices_per_node if named and hardware else total_devices(config) * config.tensor_parallel,
    )
    # every device of the run: K·D with data-parallel replicas, numbered as pipesched.layout says
    devices = total_devices(config)
    tensor = config.tensor_parallel
    if tensor > 1 and per_node % tensor:
        # Megatron-LM's tensor-parallel ranks are innermost (consecutive), and a group must share a node's link
        raise ConfigError(
            f"--tensor-parallel {tensor} does not divide the {per_node} devices of a node, so a tensor-parallel "
            f"group would leave its node; give a divisor of {per_node} (or --devices-per-node a multiple of {tensor})"
        )
    gpus = devices * tensor
    if (config.data_parallel > 1 or tensor > 1) and config.node_map is None and per_node < gpus and gpus % per_node:
        # make_topology's own sentence would name --devices K·D, a value the user did not give
        factors = f" x --tensor-parallel {tensor}" if tensor > 1 else ""
        raise ConfigError(
            f"--devices {config.devices} x --data-parallel {config.data_parallel}{factors} = {gpus} devices span "
            f"more than one node of {per_node} but do not fill whole nodes; make the product a multiple of "
            f"{per_node}, or give each device's node with --node-map"
        )
    # one representative per tensor-parallel group: the simulated device i is global rank i·T, so nodes hold
    # per_node / T of them and the link between two is the link between those ranks (--node-map: per group)
    topology = make_topology(devices, per_node // tensor, config.node_map, intra, inter)
    return FlopsCost(achieved, intra.bandwidth, intra.latency, config.overlap, topology=topology)


def _given(value: T | None, default: T) -> T:
    """``value`` unless it is None (a 0 given is kept, for its own check to refuse)."""
    return default if value is None else value


def check_hardware(config: RunConfig, dtype: str) -> None:
    """Every hardware flag checked (preset, nodes, links, efficiency, device speeds): cheap, before any planning."""
    flops_model(config, dtype)
    if config.device_speed is not None:
        parse_device_speed(config.device_speed, total_devices(config))


def cost_model(
    config: RunConfig, dtype: str, times: Times | None = None, partition: Partition | None = None
) -> CostModel:
    """The run's cost model: ``config.cost`` from the one registry, on its hardware, with its device speeds.

    ``times`` and ``partition`` are the measured model's (``pipesched.times``): its times per stage.
    """
    flops = flops_model(config, dtype)
    cost = make_cost_model(
        config.cost,
        flops.device_flops,
        flops.link_bandwidth,
        flops.link_latency,
        config.overlap,
        times,
        partition,
        flops.topology,
    )
    if config.device_speed is not None:
        cost = SpeedCost(cost, parse_device_speed(config.device_speed, total_devices(config)))
    if config.tensor_parallel > 1:
        from .decoder.tensor import TensorParallelCost
        from .precision import itemsize

        # the group's collectives run on the intra-node link; the unit model's communication is free
        link = None if config.cost == "unit" else flops.link_bandwidth
        cost = TensorParallelCost(
            cost, config.tensor_parallel, config.sequence_parallel, itemsize(dtype), link, flops.link_latency
        )
    return cost


def describe(config: RunConfig, dtype: str) -> str:
    """One line saying which hardware a run assumes: the preset, achieved FLOP/s, memory, nodes and links.

    >>> from pipesched.pipeline import RunConfig
    >>> print(describe(RunConfig(hardware="h100-sxm", devices=16), "bf16").replace("; ", ";\\n"))
    h100-sxm: 494.75 TFLOP/s per device (989.5 T peak bf16 x efficiency 0.5), 80 GB;
    2 nodes of 8, NVLink 4 inside (450 GB/s, 5 µs), InfiniBand NDR 400 Gb/s between (50 GB/s, 10 µs)
    """
    flops = flops_model(config, dtype)
    hardware = run_hardware(config)
    topology = flops.topology
    assert topology is not None  # flops_model always places devices on nodes
    rate = _rate(flops.device_flops)
    if hardware is not None and (config.hardware is not None or config.device_flops is None):
        peak = _given(config.device_flops, float(getattr(hardware.peak_flops, dtype)))
        efficiency = _given(config.efficiency, DEFAULT_EFFICIENCY)
        scale = 1e12 if peak >= 1e12 else 1e9
        of = f"({_number(peak / scale)} {'T' if scale == 1e12 else 'G'} peak {dtype} x efficiency {efficiency:g})"
        if config.hardware is not None:
            memory = _given(config.device_memory, int(hardware.memory))  # what the run checks against
            name = f"{config.hardware}: {rate} per device {of}, {_number(memory / 1e9)} GB"
        else:  # the seed MLP's own machine: the cpu preset's speed, without its memory
            name = f"no preset, the seed MLP on the {MLP_HARDWARE} preset's devices: {rate} per device {of}"
    else:
        name = f"no preset: {rate} per device"
    if config.cost == "measured":  # compute times are the file's: only the links are the hardware's
        name = f"compute times from {os.path.basename(config.times or '')}, sends it does not time over these links"
    if config.device_speed is not None:
        speeds = parse_device_speed(config.device_speed, total_devices(config))
        slow = ", ".join(f"device {d} at {f:g}x" for d, f in enumerate(speeds) if f != 1)
        name = f"{name}, {slow or 'every device at 1x'}"
    nodes = topology.node_count
    intra, inter = topology.intra, topology.inter

    def link(kind: LinkKind) -> str:
        return f"{_number(kind.bandwidth / 1e9)} GB/s, {_number(kind.latency * 1e6)} µs"

    if nodes == 1:
        return f"{name}; one node, {intra.name} ({link(intra)})"
    nodes_of = topology.nodes
    # GPUs per node: each simulated device stands for its tensor-parallel group of T
    sizes = [nodes_of.count(n) * config.tensor_parallel for n in sorted(set(nodes_of))]
    per = f"of {sizes[0]}" if len(set(sizes)) == 1 else f"({', '.join(map(str, sizes))} devices)"
    return f"{name}; {nodes} nodes {per}, {intra.name} inside ({link(intra)}), {inter.name} between ({link(inter)})"


def _number(value: float) -> str:
    return f"{value:,.5g}" if value < 1e4 else f"{value:,.0f}"


def _rate(flops: float) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if flops >= scale:
            return f"{_number(flops / scale)} {prefix}FLOP/s"
    return f"{_number(flops)} FLOP/s"
