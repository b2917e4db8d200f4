"""Plan speed: ``pipesched plan`` for 64 GPUs and LLaMA-2-7B, against simulating every configuration in full.

64 H100s (8 per node), global batch 512 sequences of 4096 tokens, micro-batch
size 1: every configuration ``pipesched.plan.candidates`` lists (data x tensor
x pipeline sizes, strategies, chunks, recompute, grad sync), run into a fresh
results file on the local pool (one worker per core, no Dask). Goal (issue
17): under a minute on 2 cores.

Baseline, in the same run: a full simulation (every replica, one run per
grad sync, as ``pipesched run`` would do it) of every 12th configuration, in
this process; the ratio compares time per configuration per core, since the
plan's figure spreads over every core.

    python benchmarks/plan_speed.py
"""

import os
import platform
import tempfile
import time

from pipesched import RunConfig, run
from pipesched.plan import Cluster, candidates, grad_syncs, plan

CLUSTER = Cluster(gpus=64, model="llama2-7b", hardware="h100-sxm", global_batch=512, micro_batch_size=1, seq_len=4096)
SAMPLE = 12  # every SAMPLE-th configuration for the baseline


def baseline() -> tuple[int, float]:
    """(configurations, seconds) of full simulations of a sample of the plan's configurations."""
    points = [{**p, "grad_sync": s} for p in candidates(CLUSTER) for s in grad_syncs(p)][::SAMPLE]
    start = time.perf_counter()
    for point in points:
        run(RunConfig(compute=False, reference=False, allow_oom=True, **point))
    return len(points), time.perf_counter() - start


def main() -> None:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = plan(CLUSTER, os.path.join(folder, "plan.jsonl"), workers=cores)
        seconds = time.perf_counter() - start
    count = len(result.records)
    per_core = seconds * cores / count
    sampled, full = baseline()
    print(f"machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}")
    print(
        f"plan: {count} configurations from {result.layouts} layouts ({result.skipped} decided by weights and "
        f"optimizer state alone, {len(result.failed)} cannot run, {len(result.ranked)} fit) in {seconds:.1f} s: "
        f"{seconds / count * 1000:.0f} ms per configuration, {per_core * 1000:.0f} ms per configuration per core"
    )
    print(
        f"baseline: {sampled} of them simulated in full in {full:.1f} s, {full / sampled * 1000:.0f} ms each: "
        f"the plan takes {per_core / (full / sampled):.2f}x the time per configuration per core"
    )
    best = result.ranked[0]
    p = best["point"]
    print(
        f"best: D={p['data_parallel']} T={p['tensor_parallel']} K={p['devices']} {p['strategy']} chunks={p['chunks']} "
        f"remat={p['remat']} {p['grad_sync']}: {best['tokens_per_second']:.4g} tokens/s, MFU {best['mfu']:.1%}"
    )


if __name__ == "__main__":
    main()
