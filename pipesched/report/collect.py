"""Run a study: the comparison, the sweeps, the partitions and the training curves, as plain numbers.

Every run is prepared (and so checked) before the first one is simulated, so
a bad combination fails at once, not after minutes of work. Long studies show
a progress bar on a terminal.

>>> from pipesched.report.study import Study, CompareSection, SweepSection, TrainSection
>>> small = Study(compare=CompareSection(strategies=("gpipe",), partitions=("uniform",)),
...               sweep=SweepSection(microbatches=(2,), devices=(1, 2), chunks=(2,)), train=TrainSection(steps=2))
>>> results = collect(small, progress=False)
>>> [r.config.strategy for r in results.compare], len(results.train["pipelined"])
(['gpipe'], 2)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from ..errors import PipeschedError, StrategyError
from ..files import progress_bar
from ..formulas import CLOSED_FORMS, LOOPED, pipeline_speedup
from ..limits import check_actions, check_memory
from ..partition import uniform
from ..pipeline import AUTO, COMPARE_DEFAULT, Prepared, RunResult, execute, model_graph, prepare, train
from ..strategy import default_chunks, load_strategy, make_plan
from .study import Study
from .study import trains as can_train

if TYPE_CHECKING:
    from ..balance import Balance

__all__ = ["StudyResults", "collect", "other_devices"]


@dataclass
class StudyResults:
    """Everything a report shows, before any figure is drawn."""

    study: Study
    compare: list[RunResult] = field(default_factory=list)
    sweep_microbatches: list[dict[str, Any]] = field(default_factory=list)
    sweep_devices: list[dict[str, Any]] = field(default_factory=list)
    partitions: dict[str, Balance] = field(default_factory=dict)
    train: dict[str, list[float]] = field(default_factory=dict)
    #: figures a study cannot draw, by file stem, each with the sentence the report prints instead
    left_out: dict[str, str] = field(default_factory=dict)
    #: a sentence the report prints under a figure (by file stem) about how its runs differ from the study's,
    #: or under the table (``auto``) why the default list left auto out
    notes: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """Every number in the report's tables and figures, as JSON-ready data."""
        return (
            {
                "title": self.study.title,
                "compare": [self._relative(r.to_dict()) for r in self.compare],
                "sweep_microbatches": self.sweep_microbatches,
                "sweep_devices": self.sweep_devices,
                "partitions": {name: b.to_dict() for name, b in self.partitions.items()},
                "train": self.train,
            }
            | ({"left_out": self.left_out} if self.left_out else {})
            | ({"notes": self.notes} if self.notes else {})
        )

    def _relative(self, row: dict[str, Any]) -> dict[str, Any]:
        """A run's row with the files it names inside the study's folder relative to it, as the study writes them.

        So metrics.json says the same wherever the study lies (a report's copied study.toml gives the same).
        """
        folder = self.study.folder
        for key in ("strategy", "times", "hardware", "model"):
            value = row.get(key)
            if folder and isinstance(value, str) and os.path.isabs(value):
                inside = os.path.relpath(value, folder)
                row[key] = value if inside.split(os.sep)[0] == ".." else inside
        return row


def _label(strategy: str, chunks: int | None) -> str:
    return f"{strategy} v={chunks}" if strategy in LOOPED else strategy


def _planned_by_name(strategy: str) -> bool:
    """Whether ``strategy`` names a strategy to load, not auto's search nor a schedule file."""
    return strategy != AUTO and not strategy.lower().endswith(".csv")


def _one_device(strategy: str, study: Study) -> str:
    """The strategy the single-device training reference runs: the study's own, or GPipe where that cannot
    plan one device (a bidirectional pipeline needs two). On one device every schedule is gradient
    accumulation over the same micro-batches, so the reference's loss is the same either way."""
    if not _planned_by_name(strategy):
        return strategy
    plug = load_strategy(strategy)
    try:
        make_plan(plug, 1, study.compare.microbatches, default_chunks(plug))
    except PipeschedError:
        return "gpipe"
    return strategy


def _check_limits(study: Study) -> None:
    """The limits of every run the study makes (``pipesched.limits``), by key, before any is prepared."""
    c, h = study.compare, study.hardware
    # the most chunks any run has: the looped schedules' [compare] and [sweep] values, two for the V schedules
    chunked = any(s in LOOPED or (_planned_by_name(s) and default_chunks(load_strategy(s)) > 1) for s in c.strategies)
    v = max(c.chunks, *study.sweep.chunks, 2) if chunked else 1
    sweeps = [("[sweep].microbatches", m) for m in study.sweep.microbatches]
    for where, m in [("[compare].microbatches", c.microbatches)] + sweeps:
        check_actions(h.devices, m, v, names=("[hardware].devices", where, "chunks"))
    for k in study.sweep.devices:
        check_actions(k, c.microbatches, 1, names=("[sweep].devices", "[compare].microbatches", "chunks"))
    if study.model.model is not None:
        return  # a decoder's arrays are checked run by run (pipesched.decoder.assemble.check_run)
    # every compared run's model, data and gradients stay alive until the last has run, and then a training run's
    check_memory(
        study.run_config(), copies=len(c.partitions) * len(c.strategies) + 1, names=("[model].layers", "[model].batch")
    )


def other_devices(study: Study, devices: int) -> dict[str, Any]:
    """The overrides of a run of the study's model on ``devices`` devices.

    ``[hardware].node_map`` and ``device_speed`` name the study's own devices
    one by one, so a run of another device count (the speedup sweep's K, the
    single-device training run) runs without them: on nodes of
    ``devices_per_node`` (the preset's, else one node) and at full speed.
    ``data_parallel`` and ``tensor_parallel`` stay as the study gives them (the
    speedup sweep varies the pipeline's K of that layout); only the
    single-device training run, the one-device reference, drops them (``collect``).
    """
    if devices == study.hardware.devices:
        return {"devices": devices}
    return {"devices": devices, "node_map": None, "device_speed": None}


def _per_device_note(study: Study, runs: str) -> str | None:
    """The sentence saying that ``runs`` (of other device counts) leave out the study's per-device keys."""
    h = study.hardware
    keys = [f"{k} = {v!r}" for k, v in (("node_map", h.node_map), ("device_speed", h.device_speed)) if v]
    if not keys:
        return None
    both = len(keys) > 1
    return (
        f"[hardware].{' and '.join(keys)} name{'' if both else 's'} the study's {h.devices} devices one by one, "
        f"so {runs} without {'them' if both else 'it'}: every device at full speed, on nodes of "
        "devices_per_node (the preset's, else one node)."
    )


def collect(study: Study, progress: bool = True) -> StudyResults:
    """Run every part of ``study``; ``progress`` shows a bar on a terminal."""
    _check_limits(study)
    jobs: list[tuple[str, Any, Prepared]] = []
    # the default list runs auto where the search can plan the study (as pipesched compare does), else says why
    left_out: dict[str, str] = {}
    for partition in study.compare.partitions:
        for strategy in study.compare.strategies:
            if strategy in left_out:
                continue
            chunks = study.compare.chunks if strategy in LOOPED else None
            config = study.run_config(strategy=strategy, partition=partition, chunks=chunks)
            try:
                jobs.append(("compare", None, prepare(config)))
            except PipeschedError as exc:  # say which part of the study it was
                if strategy == AUTO and tuple(study.compare.strategies) == COMPARE_DEFAULT:
                    left_out[strategy] = str(exc)
                    continue
                raise type(exc)(f"[compare] strategy {strategy!r} with partition {partition!r}: {exc}") from exc
    unit_costs = [("study", study.hardware.cost)] + ([("unit", "unit")] if study.hardware.cost != "unit" else [])
    for strategy in study.compare.strategies:
        if strategy.endswith(".csv") or strategy in left_out:
            continue  # a schedule file has its own M: nothing to sweep
        for chunks in study.sweep.chunks if strategy in LOOPED else [None]:
            for m in study.sweep.microbatches:
                for label, cost in unit_costs:
                    config = study.run_config(
                        strategy=strategy, chunks=chunks, microbatches=m, cost=cost, compute=False, allow_oom=True
                    )
                    try:
                        jobs.append(("sweep_m", (strategy, chunks, m, label), prepare(config)))
                    except StrategyError:  # it runs the compared M, so this M is one it refuses (dp: M < K)
                        break
    decoder = study.model.model is not None
    measured = study.hardware.cost == "measured"
    free = {"link_latency": 0.0, "link_bandwidth": 1e30, "inter_node_latency": 0.0, "inter_node_bandwidth": 1e30}
    # measured times are per stage as measured: they cannot say what a stage of another device count takes
    for k in study.sweep.devices if not measured else ():
        for label, links in (("study", {}), ("free links", free)):
            # speed only: no memory cap, which K=1 (the whole model on one device) may well exceed
            config = study.run_config(
                **other_devices(study, k),
                strategy="gpipe",
                partition="uniform" if decoder else "balanced",  # balanced decoder studies are not wired yet
                compute=False,
                device_memory=None,
                allow_oom=True,  # a preset's memory would cap it otherwise (pipesched.hardware.default_memory)
                **links,
            )
            jobs.append(("sweep_k", (k, label), prepare(config)))
    trains = []
    for name, devices in (("pipelined", study.hardware.devices), ("single device", 1)) if can_train(study) else ():
        # the single-device reference is one device in all: no replicas, no tensor-parallel group
        alone = {"data_parallel": 1, "tensor_parallel": 1, "sequence_parallel": False} if devices == 1 else {}
        config = study.run_config(
            **other_devices(study, devices),
            **alone,
            strategy=study.train.strategy if devices > 1 else _one_device(study.train.strategy, study),
            reference=False,
            device_memory=None,
            allow_oom=True,
        )
        if measured:  # the loss does not depend on the times, and one device has no measured stage of its own
            config = replace(config, cost="flops", times=None)
        prepare(config)  # checked now, not after every other run
        trains.append((name, config))
    results = StudyResults(study)
    results.notes |= {name: f"{name} is left out of the default comparison: {why}" for name, why in left_out.items()}
    bar = progress_bar(len(jobs) + len(trains) * study.train.steps, "pipesched report", "run", progress)
    sweep_m: dict[tuple, dict[str, Any]] = {}
    sweep_k: dict[int, dict[str, Any]] = {}
    for kind, key, prepared in jobs:
        result = execute(prepared)
        bar.update(1)
        if kind == "compare":
            results.compare.append(result)
        elif kind == "sweep_m":
            strategy, chunks, m, label = key
            row = sweep_m.setdefault(
                (strategy, chunks, m),
                {
                    "strategy": strategy,
                    "label": _label(strategy, result.config.chunks),
                    "chunks": result.config.chunks,
                    "microbatches": m,
                    "formula": CLOSED_FORMS[strategy].bubble(study.hardware.devices, m, result.config.chunks or 1)
                    if strategy in CLOSED_FORMS
                    else result.bubble_formula,
                },
            )
            row[f"bubble_{label.replace(' ', '_')}"] = result.metrics.bubble_fraction
            row[f"steady_bubble_{label.replace(' ', '_')}"] = result.metrics.steady_bubble_fraction
            row[f"peak_memory_{label.replace(' ', '_')}"] = max(result.metrics.peak_memory_bytes)
        else:
            k, label = key
            row = sweep_k.setdefault(k, {"devices": k, "formula": pipeline_speedup(k, study.compare.microbatches)})
            row[f"makespan_{label.replace(' ', '_')}"] = result.metrics.makespan
    for row in sweep_k.values():
        # unit cost charges K devices' model K units of forward (pipesched.cost): the same work on one device
        # takes K times that device's own step
        work = row["devices"] if study.hardware.cost == "unit" else 1
        for label in ("study", "free_links"):
            one = sweep_k[1][f"makespan_{label}"] * work if 1 in sweep_k else None  # the one-device step
            row[f"speedup_{label}"] = None if one is None else one / row[f"makespan_{label}"]
            row[f"efficiency_{label}"] = None if one is None else one / row[f"makespan_{label}"] / row["devices"]
    results.sweep_microbatches = list(sweep_m.values())
    results.sweep_devices = [sweep_k[k] for k in sorted(sweep_k)]
    if measured:
        results.left_out["stage-costs"] = (
            "Stage costs are left out: under measured times each stage costs what the times file says "
            f"({os.path.basename(study.cost.times or '')})."
        )
        results.left_out["speedup"] = (
            "Speedup against devices is left out: measured times belong to the stages they were measured on "
            "and do not say what a stage of another device count would take."
        )
    elif decoder:
        results.left_out["stage-costs"] = (
            "Stage costs are left out: a study of a decoder does not draw them yet "
            "(pipesched balance --model shows them)."
        )
    else:
        _partitions(study, results)
    others = [k for k in study.sweep.devices if k != study.hardware.devices]
    for stem, what, runs in (
        ("speedup", f"the runs of K = {', '.join(map(str, others))} devices run", others and not measured),
        ("training", "the single-device run runs", trains),
    ):
        note = _per_device_note(study, what) if runs else None
        h = study.hardware
        if stem == "training" and runs and (h.data_parallel > 1 or h.tensor_parallel > 1):
            layout = (
                f"[hardware].data_parallel = {h.data_parallel} and tensor_parallel = {h.tensor_parallel} lay out "
                "the pipelined run, so the single-device run runs without them: one device in all."
            )
            note = f"{note} {layout}" if note else layout
        if note:
            results.notes[stem] = note
    if not trains:
        results.left_out["training"] = (
            "The training loss is left out: a study of a decoder does not train yet (pipesched train --model does)."
            if decoder
            else "The training loss is left out: training needs real compute, and [model].compute is false."
        )
    for name, config in trains:
        # train stops with an error at a step without a finite loss, so every step has one
        results.train[name] = [cast(float, r.loss) for r in train(config, study.train.steps, study.train.lr)]
        bar.update(study.train.steps)
    bar.close()
    return results


def _partitions(study: Study, results: StudyResults) -> None:
    """The stage costs of the uniform, the balanced and the named partitions of the MLP, for the figure."""
    from ..balance import evaluate  # networkx, which a report without stage costs does not need

    graph, bandwidth = model_graph(study.run_config(device_memory=None))
    gpipe = study.run_config(strategy="gpipe", partition="balanced", compute=False, device_memory=None, allow_oom=True)
    balanced = prepare(gpipe).balance  # what GPipe's balanced run uses: the objective's optimum or a faster one
    assert balanced is not None
    results.partitions = {
        "uniform": evaluate(
            graph, [len(r) for r in uniform(graph.number_of_nodes(), study.hardware.devices)], link_bandwidth=bandwidth
        ),
        "balanced": balanced,
    }
    for name in study.compare.partitions:  # counts the study names: their stage costs too
        if name not in results.partitions:
            results.partitions[name] = evaluate(graph, [int(c) for c in name.split(",")], link_bandwidth=bandwidth)
    results.partitions = {name: results.partitions[name] for name in study.compare.partitions}  # what was asked
