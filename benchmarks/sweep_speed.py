"""Sweep rate: points per second of a sweep of small points, this code against the code before issue 20.

A sweep of small points (the seed model's size, --no-compute) run into a fresh
results file, each run a fresh process of the same Python: with ``--workers 1``
and with one worker per core, for this source tree and for the baseline
revision (``BASELINE``, the last commit before issue 20's work, taken out of
the repository with ``git archive`` into a temporary folder), alternately,
three times each (``--repeat``), keeping each one's best rate (single runs
vary by a fifth on a shared machine, and the machine's speed drifts by a
third over minutes, so only figures of the same run compare). A run's rate is its points over
the time of the ``sweep`` call: the pool's start-up is in it, the
interpreter's is not. The results files of the two codes' single-process runs
are compared byte for byte, their pools' line for line.

Goals: this code at least 1.5x the baseline's points per second (issue 20),
and the pool at least 1.7x one process on 2 cores. The baseline is skipped
with a note where git or the revision is not at hand (e.g. a copy without
its history).

    python benchmarks/sweep_speed.py
"""

import argparse
import filecmp
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time

#: The code "today" means in issue 20's goal 4: its last commit before that issue's work.
BASELINE = "9c9063a"

STUDY = {
    "model": {"layers": "128,256x10,10", "batch": 64},
    "axes": {
        "strategy": ["gpipe", "1f1b", "zb-h1", "interleaved"],
        "devices": [2, 3, 4, 5],
        "microbatches": [4, 8, 12, 16, 24, 32],
        "remat": ["never", "always", "except_last"],
        "link_latency": [1e-6, 5e-6, 2e-5],
    },
    "constraints": {"where": ["microbatches >= devices"]},
}

HERE = os.path.dirname(os.path.abspath(__file__))


def rate(workers: int, output: str) -> None:
    """One timed sweep of ``STUDY`` into ``output`` with the pipesched this process imports; prints a JSON line."""
    import pipesched
    from pipesched.sweep import Results, parse_sweep, sweep

    study = parse_sweep(STUDY, "benchmark")
    results = Results(output)
    start = time.perf_counter()
    count = sweep(study, results, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"count": count, "rate": count / seconds, "package": os.path.abspath(pipesched.__file__)}))


def measure(tree: str, workers: int, output: str) -> tuple[float, int]:
    """(points per second, points) of one sweep in a fresh process that imports pipesched from ``tree``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, *filter(None, [os.environ.get("PYTHONPATH")])])}
    if os.path.exists(output):
        os.remove(output)
    command = [sys.executable, os.path.abspath(__file__), "--rate", str(workers), "--output", output]
    done = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True)
    line = json.loads(done.stdout.strip().splitlines()[-1])
    # an installed pipesched must not stand in for the tree's: PYTHONPATH comes first, and this says so
    if not os.path.realpath(line["package"]).startswith(os.path.join(os.path.realpath(tree), "")):
        raise SystemExit(f"the run imported {line['package']}, not the code in {tree}")
    return line["rate"], line["count"]


def baseline_tree(repo: str | None, folder: str) -> tuple[str | None, str]:
    """The baseline's source extracted into ``folder``, or None and why not."""
    if repo is None:
        return None, "this folder is not in a git repository (or git is not installed)"
    try:
        archive = subprocess.run(["git", "-C", repo, "archive", "--format=tar", BASELINE], capture_output=True)
    except OSError as exc:
        return None, f"git did not run ({exc})"
    if archive.returncode != 0:
        return None, f"the repository has no revision {BASELINE} ({archive.stderr.decode().strip()})"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return os.path.realpath(folder), ""


def repository() -> str | None:
    """The git repository this benchmark file is in, wherever it was cloned."""
    try:
        top = subprocess.run(["git", "-C", HERE, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    except OSError:
        return None
    return top.stdout.strip() if top.returncode == 0 else None


def main(repeat: int) -> None:
    cores = os.cpu_count() or 1
    current = os.path.realpath(os.path.dirname(HERE))  # this source tree: benchmarks/ sits beside pipesched/
    with tempfile.TemporaryDirectory() as scratch:
        base, why = baseline_tree(repository(), os.path.join(scratch, "baseline"))
        trees = {"this code": current, **({f"baseline {BASELINE}": base} if base else {})}
        best: dict[tuple[str, int], float] = {}
        count = 0
        for _ in range(repeat):
            for workers in sorted({1, cores}):
                for name, tree in trees.items():
                    output = os.path.join(scratch, f"{name.split()[0]}-{workers}.jsonl")
                    points, count = measure(tree, workers, output)
                    best[name, workers] = max(points, best.get((name, workers), 0.0))
        print(f"machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}")
        print(f"{count} points, best of {repeat} per figure, alternated in this run:")
        for name in trees:
            figures = ", ".join(f"{w} worker{'s' * (w > 1)} {best[name, w]:.1f} points/s" for w in sorted({1, cores}))
            print(f"  {name}: {figures}")
        one, many = best["this code", 1], best["this code", cores]
        print(f"ratio pool / one process (this code): {many / one:.2f}x")
        if base is None:
            print(f"baseline {BASELINE} skipped: {why}")
            return
        for workers in sorted({1, cores}):
            ratio = best["this code", workers] / best[f"baseline {BASELINE}", workers]
            print(f"ratio this code / baseline {BASELINE}, {workers} worker{'s' * (workers > 1)}: {ratio:.2f}x")
        ours, theirs = (os.path.join(scratch, f"{code}-1.jsonl") for code in ("this", "baseline"))
        same = filecmp.cmp(ours, theirs, shallow=False)
        print(f"single-process results files {'byte for byte the same' if same else 'DIFFER'} for both codes")
        if cores > 1:  # a pool writes each chunk as it finishes: the same lines, in the order they came
            ours, theirs = (os.path.join(scratch, f"{code}-{cores}.jsonl") for code in ("this", "baseline"))
            same = sorted_lines(ours) == sorted_lines(theirs)
            print(f"pool results files: {'the same lines' if same else 'DIFFERENT LINES'} for both codes")


def sorted_lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return sorted(f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, metavar="WORKERS", help="time one sweep in this process (internal)")
    parser.add_argument("--output", help="the results file of --rate")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each code and worker count (default 3)")
    args = parser.parse_args()
    if args.rate is not None:
        rate(args.rate, args.output or os.path.join(tempfile.mkdtemp(), "r.jsonl"))
    else:
        main(args.repeat)
