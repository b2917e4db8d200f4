"""Search speed: time to the schedule `pipesched search` keeps, its gap to the lower bound, candidates per second.

LLaMA-2-7B (sequences of 1024 tokens, one per micro-batch) on H100s, K in flight per device, for K=4/M=8
(exact: CP-SAT, 2 work units), K=8/M=24 and K=32/M=256 (the list scheduler and the built-ins), with one
stage per device and on a V (two half-stages per device, 2K stage-micro-batches in flight; at K=32 the V's
64 stages are LLaMA-2-70B's, the 7B having 35 layers). Baseline in
the same run: the engine's simulation of the schedule kept, against the fast evaluator's timing of it.

    python benchmarks/search_speed.py
"""

import itertools
import os
import platform
import time

from pipesched import RunConfig
from pipesched.engine import simulate
from pipesched.pipeline import prepare
from pipesched.search import evaluate, from_prepared
from pipesched.search.exact import search

SIZES = [(4, 8), (8, 24), (32, 256)]
PLACEMENTS = [("1f1b", 1), ("zb-v", 2)]  # one stage per device; a V (ZB-V's placement)


def main() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for (k, m), (base, held) in itertools.product(SIZES, PLACEMENTS):
        model = "llama2-7b" if k * held <= 35 else "llama2-70b"  # 64 stages need more than the 7B's 35 layers
        config = RunConfig(strategy=base, devices=k, microbatches=m, batch=m, compute=False, model=model,
                           hardware="h100-sxm", seq_len=1024, chunks=held)  # fmt: skip
        prepared = prepare(config)
        times = from_prepared(prepared)
        start = time.perf_counter()
        found = search(times, k * held)
        seconds = time.perf_counter() - start
        tick = time.perf_counter()
        evaluate(found.schedule, times, check=False)
        fast = time.perf_counter() - tick
        tick = time.perf_counter()
        from pipesched.decoder.workload import DecoderShapeWorkload
        from pipesched.pipeline import training_sizes

        size, state = training_sizes(prepared.config)
        rows = [s.stop - s.start for s in prepared.slices]
        work = DecoderShapeWorkload(prepared.layers, prepared.partition, rows, 1024, size, state)
        simulate(found.schedule, work, prepared.cost, config.remat)
        engine = time.perf_counter() - tick
        where = (" (V" + (", LLaMA-2-70B" if model != "llama2-7b" else "") + ")") if held == 2 else ""
        why = found.bound.reason.split(":")[0]
        print(
            f"K={k} M={m}{where}: {found.method}, gap {found.gap:.2%} to the bound ({why}), "
            f"{seconds:.2f} s for {found.candidates} candidates ({found.candidates / seconds:.1f} per s); "
            f"one evaluation {fast * 1000:.1f} ms against the engine's {engine * 1000:.1f} ms ({engine / fast:.0f}x)"
        )


if __name__ == "__main__":
    main()
