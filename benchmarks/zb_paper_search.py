"""``pipesched search`` on every profiled setting of the Zero Bubble paper, beside its ZB-1p and ZB-2p.

Qi et al., "Zero Bubble Pipeline Parallelism" (arXiv 2401.10241v1): Table 9's profiled T_F, T_B (pipesched's
I), T_W and T_comm (ms) for each model, p and m, and Table 5's bubble rates, (cost - m(F+B+W)) / cost with
cost the longest stage's time: pipesched's back-to-back bubble (``steady_bubble_fraction``). The search runs
with 1F1B's memory (p micro-batches in flight, ZB-1p's limit) and twice it (ZB-2p's), through
``--cost measured``; the p = 8 rows are also tests (tests/test_search_paper.py). Prints a Markdown table.

    python benchmarks/zb_paper_search.py
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

from pipesched.cli import main as cli

#: model, p, m, Table 9 (T_F, T_B, T_W, T_comm in ms), Table 5 (1F1B, ZB-H1, ZB-H2, ZB-1p, ZB-2p)
ROWS = [
    ("1.5B", 8, 24, (18.522, 18.086, 9.337, 0.601), (0.2431, 0.1585, 0.1083, 0.1585, 0.0433)),
    ("1.5B", 8, 32, (18.513, 18.086, 9.331, 0.626), (0.1985, 0.1242, 0.0837, 0.1242, 0.0039)),
    ("1.5B", 8, 64, (18.546, 18.097, 9.321, 0.762), (0.1240, 0.0674, 0.0444, 0.0674, 0.0026)),
    ("6.2B", 8, 24, (29.718, 29.444, 19.927, 0.527), (0.2347, 0.1323, 0.0698, 0.1323, 0.0029)),
    ("6.2B", 8, 32, (29.802, 29.428, 19.530, 0.577), (0.1898, 0.1045, 0.0559, 0.1045, 0.0022)),
    ("6.2B", 8, 64, (29.935, 29.621, 19.388, 0.535), (0.1091, 0.0554, 0.0294, 0.0554, 0.0010)),
    ("14.6B", 16, 48, (11.347, 11.248, 8.132, 0.377), (0.2552, 0.1397, 0.0672, 0.1397, 0.0066)),
    ("14.6B", 16, 64, (11.307, 11.254, 8.101, 0.379), (0.2082, 0.1088, 0.0516, 0.1088, 0.0054)),
    ("14.6B", 16, 128, (11.325, 11.308, 8.109, 0.378), (0.1251, 0.0576, 0.0266, 0.0576, 0.0028)),
    ("28.3B", 32, 96, (10.419, 10.207, 7.715, 0.408), (0.2646, 0.1421, 0.0641, 0.1421, 0.0038)),
    ("28.3B", 32, 128, (10.408, 10.204, 7.703, 0.408), (0.2168, 0.1106, 0.0490, 0.1106, 0.0029)),
    ("28.3B", 32, 256, (10.402, 10.248, 7.698, 0.460), (0.1352, 0.0594, 0.0257, 0.0594, 0.0018)),
]


def search(p: int, m: int, times: Path, inflight: int) -> dict:
    """``pipesched search --json`` for one setting, in this process."""
    argv = ["search", "--devices", str(p), "--microbatches", str(m), "--layers", f"8x{p + 1}", "--batch", str(m),
            "--no-compute", "--cost", "measured", "--times", str(times), "--max-inflight", str(inflight),
            "--json"]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(argv) == 0
    return json.loads(out.getvalue())


def main() -> None:
    """Print the table: the paper's five published rates, then the search's at p and 2p in flight."""
    head = ["model", "p", "m", "1F1B", "ZB-H1", "ZB-H2", "ZB-1p", "ZB-2p", "search, p in flight",
            "search, 2p in flight", "seconds"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for model, p, m, (f, b, w, comm), published in ROWS:
            times = Path(scratch) / f"{model}_{m}.toml"
            times.write_text(f'time_unit = "ms"\n[default]\nF = {f}\nI = {b}\nW = {w}\nsend = {comm}\n')
            start = time.perf_counter()
            found = [search(p, m, times, k) for k in (p, 2 * p)]
            seconds = time.perf_counter() - start
            cells = [f"{d['steady_bubble_fraction']:.4f} ({d['method'].removeprefix('built-in ')})" for d in found]
            rates = " | ".join(f"{r:.4f}" for r in published)
            print(f"| {model} | {p} | {m} | {rates} | {' | '.join(cells)} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
