"""Baseline: a minimal hand-written SimPy program of the GPipe F-then-B schedule.

Each device is a process with one timeout per action; stores carry activations
forward and gradients back between neighbours. No links, memory or trace.

    python benchmarks/handwritten_gpipe.py 64 1024
"""

import sys

import simpy


def main(devices: int, microbatches: int) -> float:
    env = simpy.Environment()
    fwd = [simpy.Store(env) for _ in range(devices + 1)]  # fwd[d]: activations into device d
    bwd = [simpy.Store(env) for _ in range(devices + 1)]  # bwd[d]: gradients into device d

    def device(d):
        for m in range(microbatches):
            if d > 0:
                yield fwd[d].get()
            yield env.timeout(1)
            fwd[d + 1].put(m)
        for m in reversed(range(microbatches)):
            if d < devices - 1:
                yield bwd[d].get()
            yield env.timeout(2)
            if d > 0:
                bwd[d - 1].put(m)

    for d in range(devices):
        env.process(device(d))
    env.run()
    return env.now


if __name__ == "__main__":
    k, m = int(sys.argv[1]), int(sys.argv[2])
    print(f"makespan {main(k, m):g}")
