"""Write a report folder: index.html (self-contained), report.md with PNG figures, metrics.json, traces.

Everything is written to a temporary folder beside the target and moved into
place at the end, so a failure never leaves a half-written report.

>>> from pipesched.report.study import default_study
>>> study_text(default_study())[:48]
'Model 128,256x10,10 (cross_entropy), batch 32, s'
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable

from ..decoder.assemble import MODEL_DTYPE, MODEL_OPTIMIZER
from ..division import causes, describe_division
from ..errors import ConfigError
from ..files import read_toml
from ..hardware import default_memory, describe
from ..pipeline import AUTO, auto_limit, training_precision
from ..trace import to_chrome
from ..units import format_bytes, format_time
from .collect import StudyResults
from .study import Study, named_files

__all__ = [
    "write_report",
    "write_folder",
    "is_report",
    "copied_files",
    "COLUMNS",
    "comparison_columns",
    "comparison_rows",
    "study_text",
    "PAGE_WIDTH_PX",
    "BODY_FONT_PX",
]

#: The comparison table's columns by name, in order (``comparison_columns`` gives a study's headings).
COLUMNS = (
    "strategy",
    "partition",
    "chunks",
    "step",
    "bubble",
    "formula",
    "back to back",
    "throughput",
    "peak activations",
    "peak memory",
    "in flight",
    "grad error",
    "fits memory",
)

#: The page's column and body text, in CSS px. The figures are drawn for them (see ``style``): none is
#: wider than the column, so each shows at its natural size and its text as large as this body text.
PAGE_WIDTH_PX, BODY_FONT_PX = 1100, 16


def comparison_columns(results: StudyResults) -> tuple[str, ...]:
    """The comparison table's headings: throughput in the study's time unit, memory fit only under a cap."""
    per = "s" if results.study.hardware.cost != "unit" else "unit"
    capped = default_memory(results.study.run_config()) is not None  # given, or a named preset's
    return tuple(
        f"throughput (samples/{per})" if c == "throughput" else c for c in COLUMNS if capped or c != "fits memory"
    )


def _notes(results: StudyResults) -> str:
    """What the table's columns mean, in one paragraph."""
    pairs = any(r.schedule.overlaps for r in results.compare)
    rule = results.study.hardware.overlap
    return (
        "Bubble is the idle share of K × step; the formula is the strategy's closed form under unit cost; back to "
        "back is the bubble when steps follow each other with no synchronising optimizer step between them, "
        "each device starting the next step as soon as it has finished this one."
        + (f" An overlapped F&B pair lasts the {rule} of its parts (--overlap {rule})" if pairs else "")
        + ("; the formulas are stated for the sum." if pairs and rule != "sum" else "." if pairs else "")
        + _division_note(results)
        + _auto_note(results)
    )


def _auto_note(results: StudyResults) -> str:
    """Which memory limit the ``auto`` rows were searched within (``pipeline.auto_limit``), why none ran, or ''."""
    if AUTO in results.notes:  # left out of the default list (collect): why
        return f" {results.notes[AUTO].rstrip('.')}."
    if not any(r.label == AUTO for r in results.compare):
        return ""
    limit = auto_limit(results.study.run_config(), keys=("[hardware].device_memory",))
    return f" auto is the fastest schedule pipesched search found for the study's costs, {limit}."


def _division_note(results: StudyResults) -> str:
    """What tensor and sequence parallelism and a sharded optimizer leave the first run's fullest device, or ''."""
    first = next((r for r in results.compare if r.memory_division), None)
    if first is None:
        return ""
    c, peaks = first.config, first.metrics.peak_memory_bytes
    fullest = peaks.index(max(peaks))
    why = causes(c.tensor_parallel, c.sequence_parallel, c.data_parallel, c.grad_sync)
    shares = describe_division(first.memory_division[fullest], why)
    return (
        f" Memory per device is divided: {first.label}'s fullest device ({fullest}) holds {shares}." if shares else ""
    )


def comparison_rows(results: StudyResults) -> list[tuple[str, ...]]:
    """The comparison table, one row per (partition, strategy), as text cells."""
    rows = []
    for r in results.compare:
        m, unit = r.metrics, r.trace.time_unit
        sizes = ",".join(str(len(s)) for s in r.partition)
        named = r.config.partition in ("uniform", "balanced")
        rows.append(
            (
                r.label,
                f"{r.config.partition} {sizes}" if named else sizes,
                str(r.config.chunks),
                format_time(m.makespan, unit),
                f"{m.bubble_fraction:.4f}",
                "-" if r.bubble_formula is None else f"{r.bubble_formula:.4f}",
                f"{m.steady_bubble_fraction:.4f}",
                f"{m.throughput:,.0f}" if unit == "s" and m.throughput >= 100 else f"{m.throughput:.4g}",
                format_bytes(max(m.peak_activation_bytes)),
                format_bytes(max(m.peak_memory_bytes)),
                "/".join(map(str, m.peak_inflight_microbatches)),
                "-" if r.grad_rel_err is None else f"{r.grad_rel_err:.1e}",
            )
            + (() if default_memory(results.study.run_config()) is None else ("no" if r.trace.oom else "yes",))
        )
    return rows


def study_text(study: Study) -> str:
    h, m, c = study.hardware, study.model, study.compare
    config = study.run_config()
    hardware = f"hardware {describe(config, training_precision(config)[0])}"
    link = (
        "free links"
        if h.cost == "unit"
        else f"times measured in {os.path.basename(study.cost.times or '')}; where it gives no send time, {hardware}"
        if h.cost == "measured"
        else hardware
    )
    memory = "" if h.device_memory is None else f", {format_bytes(h.device_memory)} per device"
    # named only where the study names them: otherwise the model's own (fp64 and sgd for the MLP)
    given = [f"{key} {value}" for key, value in (("precision", m.dtype), ("optimizer", m.optimizer)) if value]
    if m.model is None:
        model = f"Model {m.layers} ({', '.join([m.loss, *given])}), batch {m.batch}"
    else:  # a decoder: its name (a config.json by its file name), sequences of seq_len tokens
        name = os.path.basename(m.model)
        tokens = "its context length" if m.seq_len is None else f"{m.seq_len} tokens"
        own = f"{MODEL_DTYPE} and {MODEL_OPTIMIZER}, a decoder's own"
        model = f"Model {name} ({', '.join(given) or own}), batch {m.batch} sequences of {tokens}"
    shapes = "" if m.compute else " (shapes only: no NumPy)"
    return (
        f"{model}{shapes}, seed {m.seed}; K={h.devices} devices, "
        f"M={c.microbatches} micro-batches, v={c.chunks} chunks for the looped schedules, remat {c.remat}; "
        f"cost model {h.cost}: {link}{memory}."
    )


def _markdown(results: StudyResults, figures: list[tuple[str, str]]) -> str:
    rows, columns = comparison_rows(results), comparison_columns(results)
    lines = [
        f"# {results.study.title}",
        "",
        study_text(results.study),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        _notes(results),
        "Every number is in `metrics.json`; `trace-<strategy>.json` opens in https://ui.perfetto.dev.",
        "",
    ]
    for stem, caption in figures:
        lines += [f"## {caption}", "", f"![{caption}](figures/{stem}.png)", ""]
        lines += [results.notes[stem], ""] if stem in results.notes else []
    lines += [f"{note}\n" for note in results.left_out.values()]
    return "\n".join(lines)


#: Columns whose cells may break inside (after a comma or slash), as long counts lists do.
_WRAPPED = ("partition", "in flight")


def _cell(text: str, column: str) -> str:
    """A table cell; in a wrapped column, a line may break after each comma or slash."""
    if column not in _WRAPPED:
        return f"<td>{html.escape(text)}</td>"
    return '<td class="wrap">' + html.escape(text).replace(",", ",<wbr>").replace("/", "/<wbr>") + "</td>"


def _html(results: StudyResults, figures: list[tuple[str, str, str]], traces: list[str], config: str) -> str:
    head = "".join(f"<th>{html.escape(c).replace('/', '/<wbr>')}</th>" for c in comparison_columns(results))
    body = "".join(
        "<tr>" + "".join(_cell(c, name) for c, name in zip(row, COLUMNS)) + "</tr>" for row in comparison_rows(results)
    )
    sections = "".join(
        f"<section><h2>{html.escape(caption)}</h2>{svg}"
        + (f"<p>{html.escape(results.notes[stem])}</p>" if stem in results.notes else "")
        + "</section>"
        for stem, caption, svg in figures
    )
    links = " ".join(f'<a href="{html.escape(t)}">{html.escape(t)}</a>' for t in traces)
    # the column (the body's content box) is PAGE_WIDTH_PX wide; the table fits it, its headings and partition
    # cells wrapping, and scrolls inside its own box rather than being cut off on a narrower window; a figure
    # shows at its natural size (never enlarged), scaled down only on a window narrower than it
    style = (
        f"body{{font:{BODY_FONT_PX}px/1.45 system-ui,sans-serif;max-width:{PAGE_WIDTH_PX}px;margin:2em auto;"
        "padding:0 1em;color:#222}.table{overflow-x:auto;max-width:100%}"
        "table{border-collapse:collapse;font-size:15px}td,th{border:1px solid #ccc;padding:3px 4px;"
        "text-align:right;white-space:nowrap}th{background:#f3f3f3;white-space:normal;vertical-align:bottom}"
        "td:first-child{text-align:left}td.wrap{white-space:normal}"
        "svg{display:block;max-width:100%;height:auto}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:14px}"
    )
    title = html.escape(results.study.title)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head><body><h1>{title}</h1><p>{html.escape(study_text(results.study))}</p>"
        f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
        f"<p>{html.escape(_notes(results))} Traces for Perfetto (ui.perfetto.dev): {links}</p>{sections}"
        + "".join(f"<p>{html.escape(note)}</p>" for note in results.left_out.values())
        + f"<h2>Configuration</h2><pre>{html.escape(config)}</pre></body></html>"
    )


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: no XML prolog or doctype inside HTML


#: What every report folder holds; a folder with these and nothing else is safe to replace.
REPORT_FILES = {"index.html", "report.md", "metrics.json", "study.toml", "figures"}


def _report_name(name: str) -> bool:
    """Whether a report writes ``name`` at its top level itself."""
    return name in REPORT_FILES or (name.startswith("trace-") and name.endswith(".json"))


def copied_files(study_path: str) -> list[str]:
    """The files the study at ``study_path`` names that its report copies beside its study.toml.

    Those named by a relative path that stays inside the folder (no ``..``,
    not absolute), at that same path, so the copied study.toml runs again;
    a path the report writes itself (metrics.json, figures/...) is not copied.
    """
    try:
        data = read_toml(study_path, "study")
    except ConfigError:
        return []
    copied = []
    for name in named_files(data):
        parts = os.path.normpath(name).split(os.sep)
        if os.path.isabs(name) or ".." in parts or _report_name(parts[0]):
            continue
        if os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(study_path)), name)):
            copied.append(os.path.normpath(name))
    return sorted(set(copied))


def is_report(folder: str) -> bool:
    """Whether ``folder`` holds an earlier report and nothing else (so replacing it loses nothing).

    The files its study.toml names and the report copied (``copied_files``) belong to it.
    """
    names = set(os.listdir(folder))
    if not {"metrics.json", "study.toml"} <= names:
        return False
    ours = {name.split(os.sep)[0] for name in copied_files(os.path.join(folder, "study.toml"))}
    return not {n for n in names - ours if not _report_name(n)}


def write_folder(out_dir: str, fill: Callable[[str], None]) -> str:
    """Build a folder with ``fill(work)`` beside ``out_dir``, then move it into place whole; returns its path.

    A failure leaves nothing behind; an earlier folder is replaced only once the new one is complete.
    """
    target = os.path.abspath(out_dir)
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".pipesched-report-", dir=parent)
    except OSError as exc:  # name the user's folder, not the one this would have built aside
        raise OSError(exc.errno, exc.strerror, out_dir) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp makes it private; the report is an ordinary folder
    try:
        fill(work)
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=".pipesched-old-", dir=parent)
            os.rename(target, os.path.join(old, "report"))
            os.rename(work, target)
            shutil.rmtree(old)
        else:
            os.rename(work, target)
    except OSError as exc:  # a full disk, say: the error names the folder asked for, not the one built aside
        shutil.rmtree(work, ignore_errors=True)
        raise OSError(exc.errno, exc.strerror, out_dir) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def write_report(
    results: StudyResults,
    out_dir: str,
    config_text: str,
    progress: Callable[[str], None] | None = None,
    study_path: str | None = None,
) -> str:
    """Render ``results`` into ``out_dir`` (replaced whole); returns the path of index.html.

    ``study_path``, the study file ``config_text`` was read from: the files it names inside its folder are
    copied at the same relative paths (``copied_files``), so the report's study.toml runs again.
    """
    copies = [] if study_path is None else copied_files(study_path)
    source = os.path.dirname(os.path.abspath(study_path or "."))
    import matplotlib.pyplot as plt

    from .figures import FIGURES  # matplotlib loads here, for reports only

    def fill(work: str) -> None:
        os.makedirs(os.path.join(work, "figures"))
        inline, listed = [], []
        for stem, caption, draw in FIGURES:
            if stem in results.left_out:  # the report says why instead (StudyResults.left_out)
                continue
            if progress:
                progress(stem)
            fig = draw(results)
            fig.savefig(os.path.join(work, "figures", f"{stem}.png"), dpi=110, metadata={"Software": None})
            inline.append((stem, caption, _svg(fig)))
            listed.append((stem, caption))
            plt.close(fig)
        traces = []
        first = results.study.compare.partitions[0]
        for r in results.compare:
            if r.config.partition == first:
                name = f"trace-{re.sub(r'[^A-Za-z0-9_.-]', '_', r.label.removesuffix('.csv'))}.json"
                with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                    json.dump(to_chrome(r.trace), f)
                traces.append(name)
        with open(os.path.join(work, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(results.metrics(), f, indent=1, sort_keys=True)
            f.write("\n")
        with open(os.path.join(work, "report.md"), "w", encoding="utf-8") as f:
            f.write(_markdown(results, listed))
        with open(os.path.join(work, "index.html"), "w", encoding="utf-8") as f:
            f.write(_html(results, inline, traces, config_text))
        with open(os.path.join(work, "study.toml"), "w", encoding="utf-8") as f:
            f.write(config_text)
        for name in copies:  # inside the folder built aside: a failure leaves nothing half-copied
            target = os.path.join(work, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(source, name), target)

    return os.path.join(write_folder(out_dir, fill), "index.html")
