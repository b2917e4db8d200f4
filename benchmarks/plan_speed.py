"""Plan speed: ``pipesched plan`` for 64 GPUs and LLaMA-2-7B, configurations and seconds per configuration.

64 H100s (8 per node), global batch 512 sequences of 4096 tokens, micro-batch
size 1: every layout ``pipesched.plan.candidates`` lists, run into a fresh
results file on the local pool (one worker per core, no Dask). Prints the
count of configurations, how many the static memory bound decided without
simulating, the wall time and the time per configuration, and the best
layout. Goal (issue 17): under a minute on 2 cores.

    python benchmarks/plan_speed.py
"""

import os
import platform
import tempfile
import time

from pipesched.plan import Cluster, plan

CLUSTER = Cluster(gpus=64, model="llama2-7b", hardware="h100-sxm", global_batch=512, micro_batch_size=1, seq_len=4096)


def main() -> None:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = plan(CLUSTER, os.path.join(folder, "plan.jsonl"), workers=cores)
        seconds = time.perf_counter() - start
    count = len(result.records)
    best = result.ranked[0]
    print(f"machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}")
    print(
        f"{count} configurations ({result.skipped} decided by weights and optimizer state alone, "
        f"{len(result.failed)} cannot run, {len(result.ranked)} fit) in {seconds:.1f} s: "
        f"{seconds / count * 1000:.0f} ms per configuration, {seconds * cores / count * 1000:.0f} ms per "
        "configuration per core"
    )
    p = best["point"]
    print(
        f"best: D={p['data_parallel']} T={p['tensor_parallel']} K={p['devices']} {p['strategy']} chunks={p['chunks']} "
        f"remat={p['remat']} {p['grad_sync']}: {best['tokens_per_second']:.4g} tokens/s, MFU {best['mfu']:.1%}"
    )


if __name__ == "__main__":
    main()
