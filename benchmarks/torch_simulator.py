"""pipesched.run against PyTorch's own schedule simulator, in one process, on the same schedule.

PyTorch's ``_simulate_comms_compute`` (torch.distributed.pipelining.schedules) steps through a schedule's
actions, sends and receives included, one unit step at a time, and flags deadlocks; it has no durations,
memory or metrics, so it is the floor a user sees, not a like-for-like peer. The same GPipe and 1F1B orders
(pipesched's plans, equal to PyTorch's for these schedules) are lowered to PyTorch's actions with its own
``_add_send_recv``, outside the timing; ``pipesched.run`` is timed shape-only under unit cost. Median of
``--repeat`` rounds, both in this process, taking turns within each round (the machine's speed drifts).
Where torch is not installed the comparison is skipped with a note:
torch is never a dependency of pipesched (install both in a scratch environment to run it). The same
``pipesched.run`` of the code before issue 20 (``revision.BEFORE``) is timed the same way in a process of its
own, in the same run, for the speed-up.

    python benchmarks/torch_simulator.py --devices 32 --microbatches 512
"""

import argparse
import os
import platform
import sys

from pipesched import RunConfig, load_strategy, make_plan, run
from revision import python_in, revision
from rounds import medians

#: ``pipesched.run`` timed in-process on another revision's code: the median of its runs, printed
TIMED = """
import statistics, time
from pipesched import RunConfig, run
config = RunConfig(strategy={name!r}, devices={k}, microbatches={m}, batch={m}, layers="8x{k1}", cost="unit",
                   remat="never", compute=False, reference=False)
times = []
for _ in range({repeat}):
    start = time.perf_counter()
    run(config)
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--microbatches", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    k, m = args.devices, args.microbatches
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    try:
        import torch
        from torch.distributed.pipelining import schedules as torch_schedules
    except ImportError:
        print("torch is not installed here: PyTorch's simulator is skipped (pip install torch in a scratch venv)")
        return
    simulate = torch_schedules._simulate_comms_compute
    print(f"torch {torch.__version__}; K={k} ranks, M={m} micro-batches, one stage per rank")
    with revision() as folder:
        for name in ("gpipe", "1f1b"):
            compare(name, k, m, args.repeat, simulate, torch_schedules, folder)


def compare(name: str, k: int, m: int, repeat: int, simulate, torch_schedules, folder: str | None) -> None:
    """One schedule: PyTorch's simulator, this code's pipesched.run and (if ``folder``) the code before's."""
    schedule = make_plan(load_strategy(name), k, m)
    compute = {d: [torch_schedules._Action.from_str(str(a)) for a in row] for d, row in enumerate(schedule.actions)}
    lowered = torch_schedules._add_send_recv(compute, lambda s: s, k)  # stage s on rank s
    config = RunConfig(
        strategy=name, devices=k, microbatches=m, batch=m, layers=f"8x{k + 1}", cost="unit",
        remat="never", compute=False, reference=False,
    )  # fmt: skip
    theirs, ours = medians([lambda: simulate(lowered, lambda s: s, k), lambda: run(config)], repeat)
    ratio = ours / theirs
    print(f"{name:5s}  PyTorch's simulator {theirs:7.3f} s   pipesched.run {ours:7.3f} s   ratio {ratio:5.2f}x")
    if folder is not None:
        before = float(python_in(folder, TIMED.format(name=name, k=k, m=m, k1=k + 1, repeat=repeat)))
        print(f"       the code before issue 20: pipesched.run {before:7.3f} s   ratio {before / theirs:5.2f}x")


if __name__ == "__main__":
    sys.exit(main())
