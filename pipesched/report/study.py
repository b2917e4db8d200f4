"""A study: what a report compares, read from a TOML file and checked key by key.

Every key is optional; a missing one takes the default study's value. Each
section is a pydantic model checked by pipesched.schema, so an unknown key or
a bad value fails with the key's path: ``study.toml:
[hardware].link_bandwidth: -1 is not a positive finite number; fix it and run
again``. Checks over several keys, and the files a study names, follow once
the whole file is read (``_resolve_*``, ``_check_together``).

>>> study = default_study()
>>> study.hardware.devices, study.compare.strategies[:2], study.sweep.microbatches[:3]
(4, ('gpipe', '1f1b'), (1, 2, 4))
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator

from ..collectives import COLLECTIVE_ALGORITHMS, GRAD_SYNC_MODES
from ..cost import COST_MODELS, OVERLAP_RULES
from ..decoder.assemble import chain, check_run, default_seq_len, resolve
from ..decoder.config import load_config, preset_names
from ..engine import REMAT_MODES
from ..errors import ConfigError
from ..files import read_toml
from ..formulas import LOOPED
from ..hardware import check_hardware, load_hardware
from ..hardware import preset_names as hardware_presets
from ..model import LOSSES, parse_layers
from ..optimizer import OPTIMIZERS
from ..pipeline import COMPARE_DEFAULT, DEFAULT_LAYERS, RunConfig, training_precision
from ..precision import DTYPES
from ..schema import (
    STRICT,
    Count,
    Fraction,
    NonEmpty,
    NonNegativeNumber,
    PositiveNumber,
    Size,
    WholeNumber,
    one_of,
    reason,
    text,
    validate,
)
from ..times import STAGE_TIMES_ONLY, load_times

__all__ = [
    "Study",
    "ModelSection",
    "HardwareSection",
    "CompareSection",
    "SweepSection",
    "TrainSection",
    "CostSection",
    "load_study",
    "named_files",
    "trains",
    "layer_count",
    "default_study",
    "SCHEMA_EXAMPLE",
]


def _layers(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError('is not a width list; write one in quotes, e.g. "128,256x10,10"')
    try:
        parse_layers(value)
    except ConfigError as exc:
        raise ValueError(reason(str(exc), value, "--layers")) from None
    return value


def _strategies() -> tuple[str, ...]:
    from ..strategy import available_strategies  # the registry imports the report's neighbours: at check time

    return (*available_strategies(), "auto")  # auto: a search for the study's own costs (pipesched.search)


def _strategy(value: Any) -> str:
    """A registered strategy, or a schedule file in PyTorch's action CSV (``*.csv``)."""
    if isinstance(value, str) and value.endswith(".csv"):
        return value  # resolved against the study file's folder once the whole file is read
    if value not in _strategies():
        raise ValueError(f"is not one of {', '.join(_strategies())}, nor a schedule file (*.csv)")
    return value


def _title(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError('is not a title; write title = "..."')
    return value


class ModelSection(BaseModel):
    """[model]: the NumPy model and its synthetic data; its training precision and optimizer (None: its own).

    ``model`` names a decoder (a preset or a config.json, pipesched.decoder) instead of the MLP's ``layers``,
    with ``seq_len`` tokens per sequence (None: its context length); ``compute = false`` runs from shapes alone.
    """

    model_config = STRICT
    layers: Annotated[str, BeforeValidator(_layers)] = DEFAULT_LAYERS
    batch: Count = 32
    loss: Annotated[str, one_of(tuple(LOSSES))] = "cross_entropy"
    seed: WholeNumber = 0
    dtype: Annotated[str, one_of(tuple(DTYPES))] | None = None
    optimizer: Annotated[str, one_of(OPTIMIZERS)] | None = None
    model: Annotated[str, text("llama2-7b")] | None = None  # a preset or a config.json: resolved by _resolve_model
    seq_len: Count | None = None
    compute: bool = True


class HardwareSection(BaseModel):
    """Devices and links. Without a preset the machine is ``pipesched run``'s own default: the seed MLP on
    the ``cpu`` preset's speed and links (pipesched.hardware.MLP_HARDWARE), where its small matrices
    compute longer than they take to send, and a decoder on the flops cost model's defaults.
    ``preset`` names a device preset or file (pipesched.hardware): its peak FLOP/s times
    ``efficiency``, its memory, its links and devices per node, each replaced by the key that names it."""

    model_config = STRICT
    devices: Count = 4
    cost: Annotated[str, one_of(tuple(COST_MODELS))] = "flops"
    # None: the run's own default (the cpu preset's for the MLP, the named preset's); a given value replaces
    # it, achieved FLOP/s without a preset and peak with one, exactly as --device-flops and --link-* do
    device_flops: PositiveNumber | None = None
    link_bandwidth: PositiveNumber | None = None
    link_latency: NonNegativeNumber | None = None
    overlap: Annotated[str, one_of(OVERLAP_RULES)] = "sum"
    device_memory: Size | None = None  # None: the preset's memory
    # a preset or a file next to the study: resolved once the whole file is read (_resolve_hardware)
    preset: Annotated[str, text("h100-sxm")] | None = None
    devices_per_node: Count | None = None
    node_map: Annotated[str, text("0,0,1,1")] | None = None
    efficiency: Fraction | None = None
    inter_node_bandwidth: PositiveNumber | None = None
    inter_node_latency: NonNegativeNumber | None = None
    device_speed: Annotated[str, text("2=0.5")] | None = None
    # the layout around the pipeline, as pipesched run's --data-parallel and its kin: devices stays the
    # pipeline's K, and D x T x K devices run in all (pipesched.layout)
    data_parallel: Count = 1
    tensor_parallel: Count = 1
    sequence_parallel: bool = False
    grad_sync: Annotated[str, one_of(GRAD_SYNC_MODES)] = "allreduce"
    collective: Annotated[str, one_of(COLLECTIVE_ALGORITHMS)] = "auto"


class CostSection(BaseModel):
    """[cost]: measured times (``pipesched.times``) for ``[hardware].cost = "measured"``, relative to the study file.

    Giving ``times`` makes the study's cost model ``measured`` unless
    [hardware].cost names another (which is an error).
    """

    model_config = STRICT
    times: Annotated[str, text("times.toml")] | None = None  # resolved against the study's folder (_resolve_times)


class CompareSection(BaseModel):
    """[compare]: the main table, every strategy under every partition."""

    model_config = STRICT
    strategies: NonEmpty[Annotated[str, BeforeValidator(_strategy)]] = COMPARE_DEFAULT
    microbatches: Count = 8
    chunks: Count = 2
    remat: Annotated[str, one_of(REMAT_MODES)] = "never"
    partitions: NonEmpty[Annotated[str, text("2,3,3,3")]] = ("uniform", "balanced")  # checked in _check_together


class SweepSection(BaseModel):
    """[sweep]: bubble against M (per strategy, and per v for interleaved), speedup against K."""

    model_config = STRICT
    microbatches: NonEmpty[Count] = (1, 2, 4, 8, 16, 32)
    devices: NonEmpty[Count] = (1, 2, 3, 4, 6, 8)
    chunks: NonEmpty[Count] = (2,)


class TrainSection(BaseModel):
    """[train]: loss over the optimizer's steps ([model].optimizer, SGD by default), pipelined against one device."""

    model_config = STRICT
    steps: Count = 10
    lr: PositiveNumber = 0.01
    strategy: Annotated[str, one_of(_strategies)] = "gpipe"


TITLE = "Which schedule for the seed model on 4 CPU-class devices?"


class _File(BaseModel):
    """A study file: its title and sections, each optional (pipesched.schema checks them by key path)."""

    model_config = STRICT
    title: Annotated[str, BeforeValidator(_title)] = TITLE
    model: ModelSection = ModelSection()
    hardware: HardwareSection = HardwareSection()
    cost: CostSection = CostSection()
    compare: CompareSection = CompareSection()
    sweep: SweepSection = SweepSection()
    train: TrainSection = TrainSection()


@dataclass(frozen=True)
class Study:
    """Everything a report runs; ``run_config`` turns it into one run's config."""

    title: str = TITLE
    model: ModelSection = field(default_factory=ModelSection)
    hardware: HardwareSection = field(default_factory=HardwareSection)
    cost: CostSection = field(default_factory=CostSection)
    compare: CompareSection = field(default_factory=CompareSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    train: TrainSection = field(default_factory=TrainSection)
    #: the folder of the study file, which its relative paths start from (None: the built-in study)
    folder: str | None = field(default=None, compare=False)

    def run_config(self, **overrides: Any) -> RunConfig:
        """The run config of the main comparison, with ``overrides``."""
        m, h, c = self.model, self.hardware, self.compare
        base = RunConfig(
            layers=m.layers,
            batch=m.batch,
            loss=m.loss,
            seed=m.seed,
            dtype=m.dtype,
            optimizer=m.optimizer,
            model=m.model,
            seq_len=m.seq_len,
            compute=m.compute,
            devices=h.devices,
            cost=h.cost,
            hardware=h.preset,
            devices_per_node=h.devices_per_node,
            node_map=h.node_map,
            efficiency=h.efficiency,
            inter_node_bandwidth=h.inter_node_bandwidth,
            inter_node_latency=h.inter_node_latency,
            device_speed=h.device_speed,
            data_parallel=h.data_parallel,
            tensor_parallel=h.tensor_parallel,
            sequence_parallel=h.sequence_parallel,
            grad_sync=h.grad_sync,
            collective=h.collective,
            overlap=h.overlap,
            device_memory=h.device_memory,
            allow_oom=h.device_memory is not None or h.preset is not None,  # a report marks an OOM, never stops
            microbatches=c.microbatches,
            remat=c.remat,
            device_flops=h.device_flops,
            link_bandwidth=h.link_bandwidth,
            link_latency=h.link_latency,
        )
        config = replace(base, **overrides)
        # the times file belongs to the measured model only (a report's unit-cost sweep runs without it)
        return replace(config, times=self.cost.times if config.cost == "measured" else None)


def default_study() -> Study:
    """The built-in study: the seed model on 4 devices, every built-in strategy."""
    return Study()


#: A complete study file with every key, as documented.
SCHEMA_EXAMPLE = """\
title = "Which schedule for the seed model on 4 CPU-class devices?"

[model]                      # the NumPy model and its data
layers = "128,256x10,10"     # widths; WxN repeats W N times
batch = 32
loss = "cross_entropy"       # or "mse"
seed = 0
# dtype = "fp64"             # optional: the precision memory and links count, bf16, fp16, fp32 or fp64
# optimizer = "sgd"          # optional: "adam" holds its state on every device, and [train] runs it
# model = "llama2-7b"        # optional, instead of layers: a decoder preset or a config.json (relative to this file)
# seq_len = 4096             # optional with model: tokens per sequence; default its context length
# compute = true             # false: timing and memory from shapes alone (no NumPy, no grad error, no [train])

[hardware]
devices = 4
cost = "flops"               # or "unit", or "measured" with [cost].times
# device_flops = 1e10        # optional: FLOP per second achieved (a preset's peak with one); default
                             # pipesched run's: the MLP on the cpu preset, 36.8 GFLOP/s (73.6 peak x 0.5)
# link_bandwidth = 1e10      # optional: bytes per second; default the cpu preset's 5.12e9 (a preset's own)
# link_latency = 1e-6        # optional: seconds; default the cpu preset's 1e-6 (a preset's own)
overlap = "sum"              # an overlapped F&B pair (dualpipev, dualpipe) lasts the sum of its parts, or "max"
# device_memory = "16GB"     # optional: out-of-memory points are marked
# preset = "h100-sxm"        # optional: a device preset or a .toml file of one (relative to this file); then
                             # device_flops is its peak (times efficiency), link_* its intra-node link and
                             # device_memory its memory unless given
# devices_per_node = 8       # optional: default the preset's (one node without a preset)
# node_map = "0,0,1,1"       # optional: each device's node
# efficiency = 0.5           # optional: fraction of peak FLOP/s reached; default the preset file's
# inter_node_bandwidth = 5e10  # optional: bytes per second between nodes; default the preset's
# inter_node_latency = 1e-5  # optional: seconds; default the preset's
# device_speed = "2=0.5"     # optional: device 2 at half speed, or one factor per device
data_parallel = 1            # D pipeline replicas of the devices above: D x T x devices in all
tensor_parallel = 1          # T devices per stage (Megatron-LM's split; a decoder's heads and hidden size)
sequence_parallel = false    # true: with T > 1, activations outside attention and MLP split over T too
grad_sync = "allreduce"      # how replicas sum gradients, or "sharded" (distributed optimizer, ZeRO-1)
collective = "auto"          # or "ring", "hierarchical" (intra-node then inter-node)

# [cost]                     # optional: measured times instead of FLOP counts (see 'Measured times')
# times = "times.toml"       # relative to this file; makes [hardware].cost "measured"

[compare]                    # the main table: every strategy x every partition
strategies = [
    "gpipe", "1f1b", "interleaved", "looped-bfs", "interleaved-zb", "zb-h1", "zb-h2", "zb-v", "v-half", "v-min",
    "dualpipev", "dualpipe", "chimera", "dp", "auto",
]
microbatches = 8
chunks = 2                   # v, for strategies that interleave
remat = "never"              # or "always", "except_last"
partitions = ["uniform", "balanced"]   # or counts such as "2,3,3,3"

[sweep]
microbatches = [1, 2, 4, 8, 16, 32]    # bubble against M
devices = [1, 2, 3, 4, 6, 8]           # speedup against K, at compare.microbatches
chunks = [2]                           # v values drawn for interleaved in the M sweep

[train]                      # loss over steps, pipelined against one device
steps = 10
lr = 0.01
strategy = "gpipe"
"""


def named_files(data: dict[str, Any]) -> list[str]:
    """The files a parsed study names by path, as written: [cost].times, a [hardware].preset file, a
    [model].model config.json and the schedule CSVs of [compare].strategies (names of presets are not files).
    """
    sections = {key: value for key, value in data.items() if isinstance(value, dict)}
    times, preset, model = (
        sections.get(k, {}).get(v) for k, v in (("cost", "times"), ("hardware", "preset"), ("model", "model"))
    )
    strategies = sections.get("compare", {}).get("strategies")
    named = [times]
    named += [preset] if isinstance(preset, str) and preset not in hardware_presets() else []
    named += [model] if isinstance(model, str) and model not in preset_names() else []
    named += (
        [s for s in strategies if isinstance(s, str) and s.endswith(".csv")] if isinstance(strategies, list) else []
    )
    return [name for name in named if isinstance(name, str)]


def load_study(path: str) -> Study:
    """Read and check a study file; every problem names the key's path."""
    data = read_toml(path, "study")
    checked = validate(_File, data, path)
    study = Study(**dict(checked), folder=os.path.dirname(os.path.abspath(path)))
    study = _resolve_schedule_files(study, path)
    study = _resolve_model(study, path, data)
    study = _resolve_times(study, path, data)
    study = _resolve_hardware(study, path, set(data.get("hardware", {})))
    _check_together(study, path)
    return study


def _resolve_hardware(study: Study, path: str, given: set[str]) -> Study:
    """[hardware].preset found next to the study (a file) or by name, and the machine it makes checked.

    With a preset, device_flops and the link keys the file leaves out are the preset's.
    """
    preset = study.hardware.preset  # device_flops and link_* stay None unless given: the preset's then
    if preset is not None and preset not in hardware_presets() and (preset.endswith(".toml") or os.sep in preset):
        preset = os.path.join(os.path.dirname(os.path.abspath(path)), preset)
    study = replace(study, hardware=study.hardware.model_copy(update={"preset": preset}))
    config = study.run_config()
    flags = {f"--{key.replace('_', '-')} ": f"[hardware].{key}: " for key in HardwareSection.model_fields}
    flags.update({"--hardware ": "[hardware].preset: ", "--devices ": "[hardware].devices: "})
    try:
        _check_nodes(study, path, "devices_per_node" in given)
        check_hardware(config, training_precision(config)[0])
    except ConfigError as exc:
        message = str(exc)
        for flag, key in flags.items():
            message = message.replace(flag, key)
        raise ConfigError(message if message.startswith(f"{path}: ") else f"{path}: {message}") from None
    return study


def _check_nodes(study: Study, path: str, per_node_given: bool) -> None:
    """Every device count the study runs fills whole nodes when it spans more than one (pipesched.topology).

    [hardware].devices unless node_map places its devices; each K of [sweep].devices, which runs without
    node_map when it is not the study's own count (``collect.other_devices``). A run of K pipeline devices
    uses D x T x K devices in all (pipesched.layout; [hardware].data_parallel and tensor_parallel, which the
    sweep keeps), so that product is what must fill whole nodes, as ``pipesched run`` checks it
    (``hardware.flops_model``).
    """
    h = study.hardware
    per_node = h.devices_per_node
    if per_node is None and h.preset is not None:
        per_node = load_hardware(h.preset).devices_per_node  # a named preset's nodes; without one, one node
    if per_node is None or per_node % h.tensor_parallel:
        return  # one node; or a tensor-parallel group that leaves its node, which check_hardware says next
    counts = [] if h.node_map is not None else [("[hardware].devices", h.devices)]
    counts += [("[sweep].devices", k) for k in study.sweep.devices if h.node_map is None or k != h.devices]
    fix = "leave devices_per_node out" if per_node_given else f"give devices_per_node (the preset's is {per_node})"
    # the devices each pipeline device stands for: its D replicas, each a tensor-parallel group of T
    width = h.data_parallel * h.tensor_parallel
    factors = "".join(
        f" x [hardware].{key} {size}"
        for key, size in (("data_parallel", h.data_parallel), ("tensor_parallel", h.tensor_parallel))
        if size > 1
    )
    for where, k in counts:
        if k * width > per_node and k * width % per_node:
            also = ", or give each device's node in [hardware].node_map" if where == "[hardware].devices" else ""
            if width == 1:
                raise ConfigError(
                    f"{path}: {where}: {k} spans more than one node of {per_node} devices but is not a multiple of "
                    f"{per_node}; use multiples of {per_node} (or fewer than {per_node}), or {fix}{also}"
                )
            # K x width fills whole nodes exactly when K is a multiple of per_node / gcd(per_node, width)
            step = per_node // math.gcd(per_node, width)
            few = f" (or at most {per_node // width})" if per_node > width else ""
            few = f" (or fewer than {step})" if per_node % width == 0 else few
            raise ConfigError(
                f"{path}: {where}: {k}{factors} = {k * width} devices span more than one node of {per_node} but do "
                f"not fill whole nodes; use multiples of {step}{few}, or {fix}{also}"
            )


def trains(study: Study) -> bool:
    """Whether the study's model can train ([train]): the MLP with real compute; not yet a decoder."""
    return study.model.model is None and study.model.compute


def _resolve_model(study: Study, path: str, data: dict[str, Any]) -> Study:
    """A decoder named in [model].model: its file found next to the study, its seq_len and the rest checked."""
    m, given, train_given = study.model, set(data.get("model", {})), "train" in data
    if m.model is None:
        if "seq_len" in given:
            raise ConfigError(
                f"{path}: [model].seq_len: only a decoder has a sequence length; "
                "give [model].model or leave seq_len out"
            )
    else:
        if "layers" in given:
            raise ConfigError(
                f"{path}: [model].layers: a decoder's layers come from [model].model; give either layers or model"
            )
        spec = m.model
        if spec not in preset_names() and not os.path.isabs(spec):
            folder = os.path.dirname(os.path.abspath(path))
            if os.path.exists(os.path.join(folder, spec)) or spec.endswith(".json") or os.sep in spec:
                spec = os.path.join(folder, spec)  # a config.json, found next to the study like a schedule file
        try:
            config = load_config(spec)
        except ConfigError as exc:
            raise ConfigError(f"{path}: [model].model: {exc}") from None
        try:
            config.check_sequence(default_seq_len(config) if m.seq_len is None else m.seq_len)
        except ConfigError as exc:
            raise ConfigError(f"{path}: [model].seq_len: {exc}") from None
        if m.loss != "cross_entropy":
            raise ConfigError(
                f"{path}: [model].loss: {m.loss!r} is the MLP's; a decoder's loss is next-token cross-entropy: "
                "leave loss out"
            )
        if "partitions" not in data.get("compare", {}):  # a decoder study's balanced is not wired yet
            study = replace(study, compare=study.compare.model_copy(update={"partitions": ("uniform",)}))
        if "balanced" in study.compare.partitions:
            raise ConfigError(
                f"{path}: [compare].partitions: 'balanced' is not wired into studies of a decoder ([model].model) "
                f"yet (pipesched run --model ... --partition balanced has it); use uniform or counts over its "
                f"{len(chain(config))} layers (embedding, blocks, final norm, output)"
            )
        if m.compute:  # this machine's memory for the float64 arrays, before any run is prepared
            try:
                check_run(config, m.seq_len or default_seq_len(config), m.batch, True, m.loss)
            except ConfigError as exc:
                words = {"--no-compute": "compute = false", "--batch": "[model].batch", "--model ": ""}
                message = str(exc)
                for flag, key in words.items():
                    message = message.replace(flag, key)
                raise ConfigError(f"{path}: [model].compute: {message}") from None
        study = replace(study, model=m.model_copy(update={"model": spec}))
    if train_given and not trains(study):
        why = (
            "a study does not train a decoder ([model].model) yet (pipesched train --model does)"
            if m.model is not None
            else "training needs real compute ([model].compute = false)"
        )
        raise ConfigError(f"{path}: [train]: {why}; leave [train] out, and the report leaves out its training figure")
    return study


def layer_count(study: Study) -> tuple[int, str]:
    """The layers a partition of the study's model splits, and the key that gives them."""
    if study.model.model is not None:
        return len(chain(resolve(study.model.model, study.model.seq_len))), "[model].model"
    return len(parse_layers(study.model.layers)) - 1, "[model].layers"


def _resolve_times(study: Study, path: str, data: dict[str, Any]) -> Study:
    """[cost].times found next to the study and read; the cost model measured exactly when it is given."""
    h, times = study.hardware, study.cost.times
    named = "cost" in data.get("hardware", {})
    if times is None:
        if h.cost == "measured":
            raise ConfigError(
                f'{path}: [hardware].cost: "measured" needs the measured times; add [cost] with times = "times.toml"'
            )
        return study
    if named and h.cost != "measured":
        raise ConfigError(
            f'{path}: [cost].times gives measured times, which [hardware].cost = "{h.cost}" does not read; '
            'set [hardware].cost = "measured" or leave [cost] out'
        )
    full = times if os.path.isabs(times) else os.path.join(os.path.dirname(os.path.abspath(path)), times)
    try:
        per_layer = load_times(full).per_layer  # per-layer times balance; per-stage ones belong to their stages
    except ConfigError as exc:
        raise ConfigError(f"{path}: [cost].times: {exc}") from None
    compare = study.compare
    if "partitions" not in data.get("compare", {}) and not per_layer:
        compare = compare.model_copy(update={"partitions": ("uniform",)})
    if "balanced" in compare.partitions and not per_layer:
        raise ConfigError(f"{path}: [compare].partitions: {STAGE_TIMES_ONLY}")
    return replace(
        study, hardware=h.model_copy(update={"cost": "measured"}), cost=CostSection(times=full), compare=compare
    )


def _resolve_schedule_files(study: Study, path: str) -> Study:
    """Schedule files named in [compare].strategies, relative to the study file, must exist."""
    folder = os.path.dirname(os.path.abspath(path))
    resolved = []
    for name in study.compare.strategies:
        if name.endswith(".csv"):
            full = name if os.path.isabs(name) else os.path.join(folder, name)
            if not os.path.isfile(full):
                raise ConfigError(
                    f"{path}: [compare].strategies: schedule file {name!r} does not exist next to the study"
                )
            name = full
        resolved.append(name)
    return replace(study, compare=study.compare.model_copy(update={"strategies": tuple(resolved)}))


def _check_together(study: Study, path: str) -> None:
    """Checks that need several keys: each must still fail with a path."""
    layers, source = layer_count(study)
    for where, devices in [("[hardware].devices", study.hardware.devices)] + [
        ("[sweep].devices", d) for d in study.sweep.devices
    ]:
        if devices > layers:
            raise ConfigError(f"{path}: {where}: {devices} devices are more than the {layers} layers of {source}")
    chunked = any(s in LOOPED for s in study.compare.strategies)
    for where, v in [("[compare].chunks", study.compare.chunks)] + [("[sweep].chunks", v) for v in study.sweep.chunks]:
        if chunked and study.hardware.devices * v > layers:
            raise ConfigError(
                f"{path}: {where}: {v} chunks on {study.hardware.devices} devices make "
                f"{study.hardware.devices * v} stages, more than the {layers} layers of {source}"
            )
    strategies = study.compare.strategies
    if len(set(strategies)) < len(strategies):
        raise ConfigError(f"{path}: [compare].strategies: {list(strategies)} names a strategy twice; name each once")
    if "dp" in strategies and study.compare.microbatches < study.hardware.devices:
        raise ConfigError(
            f"{path}: [compare].microbatches: dp gives every device its own micro-batches, so "
            f"{study.compare.microbatches} are fewer than [hardware].devices = {study.hardware.devices}"
        )
    for partition in study.compare.partitions:
        if partition in ("uniform", "balanced"):
            continue
        if not re.fullmatch(r"\d+(,\d+)*", partition.replace(" ", "")) or "0" in partition.split(","):
            raise ConfigError(
                f"{path}: [compare].partitions: {partition!r} is neither 'uniform', 'balanced' nor positive layer "
                "counts such as '2,3,3,3'"
            )
        if sum(int(c) for c in partition.split(",")) != layers:
            raise ConfigError(
                f"{path}: [compare].partitions: {partition!r} does not sum to the {layers} layers; "
                f"give counts that sum to {layers}"
            )
    for where, m in [("[compare].microbatches", study.compare.microbatches)] + [
        ("[sweep].microbatches", m) for m in study.sweep.microbatches
    ]:
        if m > study.model.batch:
            raise ConfigError(f"{path}: {where}: {m} micro-batches are more than [model].batch = {study.model.batch}")
