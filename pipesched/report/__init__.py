"""Comparison reports: run a study, draw its figures, write one folder with a page that opens from disk.

- ``study``: what a report compares, read from TOML and checked key by key.
- ``collect``: run it, as plain numbers.
- ``figures``: the study's matplotlib figures; the Gantt chart in ``gantt``, a sweep's in ``sweep_figures``,
  what they share (page size, text, palette) in ``style``: the report's only modules that import matplotlib.
- ``render``: write index.html, report.md, metrics.json and the traces.

>>> strategies = default_study().compare.strategies  # every built-in, then auto
>>> len(strategies), strategies[:3], strategies[-2:]
(15, ('gpipe', '1f1b', 'interleaved'), ('dp', 'auto'))
"""

from .collect import StudyResults, collect
from .render import write_report
from .study import Study, default_study, load_study

__all__ = ["Study", "StudyResults", "default_study", "load_study", "collect", "write_report"]
