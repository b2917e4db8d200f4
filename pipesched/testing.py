"""Testing tools for strategy authors: hypothesis strategies and ``check_strategy``.

Before you trust a schedule, check that it is complete, deadlock-free,
numerically exact and as fast and lean as its theory says:

>>> from pipesched import Action, Schedule
>>> class EagerGPipe:
...     name = "eager"
...     def plan(self, devices, microbatches, chunks=1):
...         return Schedule([[Action(d, "F", m) for m in range(microbatches)]
...                          + [Action(d, "B", m) for m in range(microbatches)] for d in range(devices)])
>>> check_strategy(EagerGPipe(), bubble=lambda K, M, v: (K - 1) / (K - 1 + M),
...                inflight=lambda K, M, v, d: M, max_examples=10)

``check_strategy`` runs some draws on tiny transformer decoders too (MHA and
GQA, tied and untied embeddings, GELU and SwiGLU): their gradients must be
the full-batch pass's, and the shape-only memory timeline (``--no-compute``)
must be the real arrays' byte for byte. ``configs()`` draws configurations
(``decoders=True`` for decoders too) and ``schedules()`` complete, valid,
deadlock-free schedules, for your own property tests. Requires hypothesis
(``pip install pipesched[test]``).

Real schedules run where F, I and W differ and sends take time, so every
MLP draw of ``check_strategy`` also runs under the ``measured`` cost model
with drawn times (``measured_times``: F, I, W unequal, per stage or alike,
sends free or not). Unit-cost closed forms cannot hold there; what must
hold is what the times imply (``timeline_problem``): each action lasts
exactly its stage's time (a pair as the overlap rule says), and starts the
moment its device is free and its input has arrived, each send taking its
time on its link in order. A formula of idle time that holds only when
F = I = W is caught by the optional ``idle(K, M, v, F, I, W)``, checked on
the draws whose stages are alike and whose links are free.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

try:
    from hypothesis import HealthCheck, assume, given, settings
    from hypothesis import strategies as st
except ImportError as exc:  # a library module, so say what to install rather than fail obscurely
    raise ImportError("pipesched.testing needs hypothesis; install it with pip install 'pipesched[test]'") from exc

from .compute import ShapeWorkload
from .cost import MeasuredCost, UnitCost, overlapped_time
from .decoder import DecoderConfig, DecoderModel, make_tokens
from .decoder.assemble import MODEL_DTYPE, MODEL_OPTIMIZER
from .decoder.workload import DecoderShapeWorkload, DecoderWorkload, full_batch_gradients, grad_rel_err
from .engine import simulate
from .errors import ConfigError, PipeschedError
from .microbatch import split
from .model import layers_from_widths
from .optimizer import state_bytes_per_parameter
from .partition import uniform
from .pipeline import RunConfig, run
from .precision import itemsize
from .schedule import Action, Overlap, Schedule
from .strategy import Strategy, closed_form_bubble, load_strategy, make_plan
from .times import StageTimes
from .trace import Trace

__all__ = [
    "Config",
    "configs",
    "decoder_configs",
    "measured_times",
    "schedules",
    "check_strategy",
    "timeline_problem",
    "StrategyCheckFailed",
]


#: The drawn decoders' sizes: tiny, so real NumPy runs each in milliseconds, yet every part is there.
DECODER_HIDDEN, DECODER_HEADS, DECODER_VOCAB, DECODER_MAX_BLOCKS = 16, 4, 32, 4


@dataclass(frozen=True)
class Config:
    """A drawn configuration: K devices, M micro-batches, v chunks, layer widths, batch, remat.

    A decoder draw has ``model`` (a tiny ``DecoderConfig``) and ``seq_len``
    instead of widths (``widths`` is empty).
    """

    devices: int
    microbatches: int
    chunks: int
    widths: tuple[int, ...]
    batch: int
    remat: str
    model: DecoderConfig | None = None
    seq_len: int = 0
    times: tuple[StageTimes, ...] = ()  # measured times per stage (``configs(measured=True)``); () for none

    def describe_model(self) -> str:
        """``layers=...`` for the MLP, else the decoder's shape and sequence length, for messages."""
        if self.model is None:
            return f"layers={','.join(map(str, self.widths))}"
        m = self.model
        return (
            f"model=decoder({m.num_layers} blocks, hidden {m.hidden_size}, {m.num_heads} heads, "
            f"{m.num_kv_heads} KV heads, {'swiglu' if m.activation == 'silu' else 'gelu'}, "
            f"{'tied' if m.tie_embeddings else 'untied'}), seq_len={self.seq_len}"
        )

    def run_config(self, strategy: Any, cost: str = "unit", remat: str | None = None) -> RunConfig:
        if self.model is not None:
            raise ConfigError(
                "a drawn decoder has no RunConfig (RunConfig.model names a preset or a config.json); "
                "check it with check_strategy, or draw with configs(decoders=False)"
            )
        return RunConfig(
            strategy=strategy,
            devices=self.devices,
            microbatches=self.microbatches,
            chunks=self.chunks,
            layers=",".join(map(str, self.widths)),
            batch=self.batch,
            remat=remat or self.remat,
            cost=cost,
        )


@st.composite
def configs(
    draw: Callable[..., Any],
    max_devices: int = 4,
    max_microbatches: int = 8,
    chunks: tuple[int, ...] = (1,),
    microbatches_per_device: int = 0,
    decoders: bool = False,
    measured: bool = False,
) -> Config:
    """Configurations with enough layers for ``devices × chunks`` stages.

    Layer widths 1 to 9, batch at least M (micro-batches of uneven sizes
    included), every remat mode; at least ``microbatches_per_device × K``
    micro-batches (1 for data parallelism, which gives every device its own).
    With ``decoders``, about half the draws whose stages a decoder of at most
    ``DECODER_MAX_BLOCKS`` blocks can fill are tiny decoders instead
    (``decoder_configs``). With ``measured``, the MLP draws carry measured
    times for their stages too (``measured_times``).
    """
    devices = draw(st.integers(1, max_devices))
    v = draw(st.sampled_from(chunks))
    fewest = max(1, microbatches_per_device * devices)
    microbatches = draw(st.integers(fewest, max(max_microbatches, fewest)))
    stages = devices * v
    if decoders and stages <= DECODER_MAX_BLOCKS + 3 and draw(st.booleans()):  # + embedding, final norm, output
        model = draw(decoder_configs(stages))
        batch = draw(st.integers(microbatches, microbatches + 3))
        remat = draw(st.sampled_from(["never", "always", "except_last"]))
        return Config(devices, microbatches, v, (), batch, remat, model, draw(st.integers(4, 6)))
    widths = tuple(draw(st.lists(st.integers(1, 9), min_size=stages + 1, max_size=stages + 3)))
    batch = draw(st.integers(microbatches, microbatches + 5))
    remat = draw(st.sampled_from(["never", "always", "except_last"]))
    times = tuple(draw(measured_times(stages))) if measured else ()
    return Config(devices, microbatches, v, widths, batch, remat, times=times)


#: Measured times are drawn in halves: every sum of them is exact in floating point, so timelines compare exactly.
_HALVES = st.integers(1, 12).map(lambda n: n / 2)


@st.composite
def measured_times(draw: Callable[..., Any], stages: int) -> list[StageTimes]:
    """Measured times for ``stages`` stages: F, I, W from 0.5 to 6 with I != W, recompute R = F.

    Half the draws give every stage the same times (where closed forms are
    stated), the rest each stage its own; half have free links (send 0),
    the rest a drawn send time per boundary.
    """

    def one() -> tuple[float, float, float]:
        i = draw(_HALVES)
        return draw(_HALVES), i, draw(_HALVES.filter(lambda w: w != i))

    alike, free = draw(st.booleans()), draw(st.booleans())
    first = one()
    times = []
    for _ in range(stages):
        f, i, w = first if alike else one()
        times.append(StageTimes(F=f, I=i, W=w, R=f, send=0.0 if free else draw(_HALVES)))
    return times


def timeline_problem(
    schedule: Schedule, trace: Trace, stages: Sequence[StageTimes], overlap: str = "sum"
) -> str | None:
    """The first way ``trace`` departs from what the measured ``stages`` times imply for ``schedule``; None if none.

    For a run without remat under asynchronous sends (PyTorch's isend and
    irecv), as the engine runs it (``pipesched.engine``):

    - each action lasts exactly its stage's time (B = I + W); an overlapped
      pair lasts ``overlapped_time(overlap, F, B)``;
    - each action starts at the later of its device's previous action's end
      (0 for the first) and its input's arrival: stage s-1's forward output
      for F of s > 0, stage s+1's backward output for B or I of s < S-1; on
      one device an output is there when its producer ends;
    - a boundary's transfer takes its ``send`` time on the link and lands
      at its end, starting when its producer ends or, sooner sent ones
      queued on that link, when the link is free.

    Schedules with explicit SEND or RECV actions are checked for the first rule only.
    """
    spans: dict[int, list[Any]] = {}
    for span in trace.spans:
        spans.setdefault(span.device, []).append(span)
    end = {(s.stage, s.op, s.microbatch): (s.device, s.end) for s in trace.spans}
    for row in schedule.actions:  # a pair's outputs both leave when the pair ends
        for pair in (item for item in row if isinstance(item, Overlap)):
            pieces: list[Any] = [tuple(pair.forward), tuple(pair.backward)]
            if all(piece in end for piece in pieces):
                done = max(end[piece][1] for piece in pieces)
                for piece in pieces:
                    end[piece] = (end[piece][0], done)
    sent = {(t.stage, t.op, t.microbatch): t for t in trace.transfers}
    num_stages = schedule.num_stages
    timed = all(isinstance(a, Overlap) or a.op in "FBIW" for row in schedule.actions for a in row)

    def arrival(producer: tuple[int, str, int], device: int) -> float:
        src, finished = end[producer]
        return finished if src == device else sent[producer].arrival

    def inputs(action: Action) -> list[float]:
        s, op, m = action
        assert m is not None
        if op == "F" and s > 0:
            return [arrival((s - 1, "F", m), device)]
        if op in "BI" and s < num_stages - 1:
            return [arrival(p, device) for p in ((s + 1, "B", m), (s + 1, "I", m)) if p in end]
        return []

    for device, row in enumerate(schedule.actions):
        mine = sorted(spans.get(device, []), key=lambda span: span.start)
        free, at = 0.0, 0
        for item in row:
            if isinstance(item, Overlap):
                parts = mine[at : at + 2]
                expected = overlapped_time(
                    overlap, stages[item.forward.stage].F, stages[item.backward.stage].time(item.backward.op)
                )
                ready = inputs(item.forward) + inputs(item.backward)
            elif item.op in "FBIW":
                parts = mine[at : at + 1]
                expected = stages[item.stage].time(item.op)
                ready = inputs(item)
            else:
                continue
            at += len(parts)
            name = str(item)
            start, finish = parts[0].start, parts[-1].end
            if not math.isclose(finish - start, expected, rel_tol=1e-9, abs_tol=1e-12):
                return f"{name} on device {device} lasted {finish - start:g}, but its measured time is {expected:g}"
            if timed and not math.isclose(start, max([free, *ready]), rel_tol=1e-9, abs_tol=1e-12):
                return (
                    f"{name} on device {device} started at {start:g}, but its device was free and its input there "
                    f"at {max([free, *ready]):g}"
                )
            free = finish
    link_free: dict[tuple[int, int], float] = {}
    for t in sorted(trace.transfers, key=lambda t: t.start):
        if t.op not in ("F", "B", "I"):  # an all-reduce chunk: the links' own times; it holds its link
            link_free[(t.src, t.dst)] = t.end
            continue
        boundary = t.stage if t.op == "F" else t.stage - 1
        send = stages[boundary].send
        if send is not None and not (math.isclose(t.end - t.start, send, abs_tol=1e-12) and t.arrival == t.end):
            return f"{t.name} took {t.end - t.start:g} on link {t.src} -> {t.dst}, but its measured send is {send:g}"
        leaves = max(end[(t.stage, t.op, t.microbatch)][1], link_free.get((t.src, t.dst), 0.0))
        if timed and not math.isclose(t.start, leaves, rel_tol=1e-9, abs_tol=1e-12):
            return f"{t.name} left at {t.start:g}, but its producer had ended and its link was free at {leaves:g}"
        link_free[(t.src, t.dst)] = t.end
    return None


@st.composite
def decoder_configs(draw: Callable[..., Any], stages: int = 1) -> DecoderConfig:
    """Tiny decoders (hidden 16, 4 heads, vocabulary 32) with a layer for each of ``stages`` stages.

    1 to 4 blocks (at least ``stages - 3``: the embedding, final norm and
    output layer are layers too), multi-head or grouped-query (2 KV heads)
    attention, tied or untied embeddings, GPT-style (learned positions,
    LayerNorm, GELU) or LLaMA-style (rotary positions, RMSNorm, SwiGLU).
    """
    blocks = draw(st.integers(max(1, stages - 3), DECODER_MAX_BLOCKS))
    gqa, swiglu, tied = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    gpt = DecoderConfig(
        hidden_size=DECODER_HIDDEN,
        num_layers=blocks,
        num_heads=DECODER_HEADS,
        num_kv_heads=DECODER_HEADS // 2 if gqa else DECODER_HEADS,
        intermediate_size=24,
        vocab_size=DECODER_VOCAB,
        max_positions=8,
        tie_embeddings=tied,
    )
    return replace(gpt, activation="silu", position="rotary", norm="rmsnorm", bias=False) if swiglu else gpt


@st.composite
def schedules(draw: Callable[..., Any], devices: int, microbatches: int, chunks: int = 1) -> Schedule:
    """A random complete, valid and deadlock-free schedule: stage s on device s mod K.

    Each stage takes a full backward or a split I and W at random; the actions
    follow a random order that respects every dependency (a linear extension),
    so running them in that order would never wait: no deadlock.
    """
    stages = devices * chunks
    split = [draw(st.booleans()) for _ in range(stages)]
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    done: set[tuple[int, str, int]] = set()
    todo = {(s, op, m) for s in range(stages) for m in range(microbatches) for op in ("FIW" if split[s] else "FB")}

    def ready(action: tuple[int, str, int]) -> bool:
        s, op, m = action
        if op == "F":
            return s == 0 or (s - 1, "F", m) in done
        if op == "W":
            return (s, "I", m) in done
        after = (s + 1, "I" if s + 1 < stages and split[s + 1] else "B", m)
        return (s, "F", m) in done and (s == stages - 1 or after in done)

    per_device: list[list[Action]] = [[] for _ in range(devices)]
    while todo:
        action = rng.choice(sorted(a for a in todo if ready(a)))
        todo.remove(action)
        done.add(action)
        per_device[action[0] % devices].append(Action(*action))
    return Schedule(per_device)


class StrategyCheckFailed(AssertionError):
    """``check_strategy`` found a configuration that breaks the strategy; the message shows it."""


def _check_one(
    strategy: Strategy,
    config: Config,
    bubble: Callable[[int, int, int], float | None] | bool | None,
    inflight: Callable[[int, int, int, int], int] | None,
    steady: Callable[[int, int, int], float | None] | None = None,
    idle: Callable[[int, int, int, float, float, float], float | None] | None = None,
) -> None:
    label = (
        f"{strategy.name!r} with devices={config.devices}, microbatches={config.microbatches}, "
        f"chunks={config.chunks}, {config.describe_model()}, batch={config.batch}, "
        f"remat={config.remat}"
    )
    try:
        schedule = make_plan(strategy, config.devices, config.microbatches, config.chunks)
    except PipeschedError as exc:
        raise StrategyCheckFailed(f"{label}: {exc}") from None
    table = schedule.table()
    if config.model is not None:
        _check_decoder(schedule, config, f"{label}: ", f"\n{table}")
        return
    try:
        result = run(config.run_config(strategy))
    except PipeschedError as exc:
        raise StrategyCheckFailed(f"{label}: {exc}\n{table}") from None
    assert result.grad_rel_err is not None  # run_config computes, and checks against the reference pass
    if not result.grad_rel_err <= 1e-10:
        raise StrategyCheckFailed(
            f"{label}: gradients differ from the full-batch pass by {result.grad_rel_err:.3g}\n{table}"
        )
    if config.times:
        _check_measured(schedule, config, idle, label, f"\n{table}")
    if bubble is None and inflight is None and steady is None:
        return
    timing = result if config.remat == "never" else run(config.run_config(strategy, remat="never"))
    expected = (
        closed_form_bubble(strategy, config.devices, config.microbatches, config.chunks)
        if bubble is True
        else bubble(config.devices, config.microbatches, config.chunks)
        if bubble
        else None
    )
    measured = timing.metrics.bubble_fraction
    if expected is not None and abs(measured - expected) > 1e-9:
        raise StrategyCheckFailed(
            f"{label}: bubble {measured:.6g} under unit cost, but the formula gives {expected:.6g}\n{table}"
        )
    back_to_back = steady(config.devices, config.microbatches, config.chunks) if steady else None
    if back_to_back is not None and abs(timing.metrics.steady_bubble_fraction - back_to_back) > 1e-9:
        raise StrategyCheckFailed(
            f"{label}: bubble back to back {timing.metrics.steady_bubble_fraction:.6g} under unit cost, but the "
            f"formula gives {back_to_back:.6g}\n{table}"
        )
    if inflight is not None:
        want = [inflight(config.devices, config.microbatches, config.chunks, d) for d in range(config.devices)]
        got = timing.metrics.peak_inflight_microbatches
        if got != want:
            raise StrategyCheckFailed(f"{label}: peak in-flight micro-batches {got}, the formula gives {want}\n{table}")


def _check_measured(
    schedule: Schedule,
    config: Config,
    idle: Callable[[int, int, int, float, float, float], float | None] | None,
    label: str,
    table: str,
) -> None:
    """A draw's measured times: the shape-only timeline is what they imply, and ``idle`` holds where stated."""
    times = config.times
    shown = ", ".join(f"{s}: F={t.F:g} I={t.I:g} W={t.W:g} send={t.send:g}" for s, t in enumerate(times))
    label = f"{label}, measured times ({shown})"
    layers = layers_from_widths(list(config.widths))
    rows = [s.stop - s.start for s in split(config.batch, config.microbatches)]
    work = ShapeWorkload(layers, uniform(len(layers), schedule.num_stages), rows)
    try:
        trace = simulate(schedule, work, MeasuredCost(times), remat="never")
    except PipeschedError as exc:
        raise StrategyCheckFailed(f"{label}: {exc}{table}") from None
    problem = timeline_problem(schedule, trace, times)
    if problem is not None:
        raise StrategyCheckFailed(f"{label}: {problem}{table}")
    first = times[0]
    if idle is None or any(t != first for t in times) or first.send != 0:
        return  # closed forms are stated for alike stages and free links
    expected = idle(config.devices, config.microbatches, config.chunks, first.F, first.I, first.W)
    if expected is None:
        return
    busy = trace.busy_time()
    for device, used in enumerate(busy):
        if not math.isclose(trace.makespan - used, expected, rel_tol=1e-9, abs_tol=1e-12):
            raise StrategyCheckFailed(
                f"{label}: device {device} idles {trace.makespan - used:g} in the step, but the formula gives "
                f"{expected:g}{table}"
            )


def _check_decoder(schedule: Schedule, config: Config, label: str, table: str) -> None:
    """A decoder draw: exact gradients, and shape-only memory and transfers equal the real arrays'.

    In the decoder's own training precision (bf16, mixed-precision Adam), as
    ``pipesched run --model`` counts it; NumPy computes in float64 whatever it is.
    """
    assert config.model is not None
    model = DecoderModel.from_config(config.model, seed=0)
    inputs, labels = make_tokens(config.model, config.batch, config.seq_len, seed=0)
    slices = split(config.batch, config.microbatches)
    size, state = itemsize(MODEL_DTYPE), state_bytes_per_parameter(MODEL_OPTIMIZER, MODEL_DTYPE)
    try:
        stages = uniform(len(model.layers), schedule.num_stages)
        work = DecoderWorkload(model, stages, inputs, labels, slices, size, state)
        real = simulate(schedule, work, UnitCost(), remat=config.remat)
        rows = [s.stop - s.start for s in slices]
        shapes = DecoderShapeWorkload(model.layers, stages, rows, config.seq_len, size, state)
        shape = simulate(schedule, shapes, UnitCost(), remat=config.remat)
    except PipeschedError as exc:
        raise StrategyCheckFailed(f"{label}{exc}{table}") from None
    error = grad_rel_err(work.model_gradients(), full_batch_gradients(model, inputs, labels)[1])
    if not error <= 1e-10:
        raise StrategyCheckFailed(f"{label}gradients differ from the full-batch pass by {error:.3g}{table}")
    for device, (got, want) in enumerate(zip(shape.memory, real.memory)):
        if list(got) != list(want):
            at = next((g, w) for g, w in zip([*got, None], [*want, None]) if g != w)
            raise StrategyCheckFailed(
                f"{label}shape-only memory on device {device} differs from the real arrays': "
                f"{at[0]} against {at[1]}{table}"
            )
    if list(shape.transfers) != list(real.transfers):
        raise StrategyCheckFailed(f"{label}shape-only transfers differ from the real arrays'{table}")


def check_strategy(
    strategy: Strategy | str,
    *,
    bubble: Callable[[int, int, int], float | None] | bool | None = None,
    inflight: Callable[[int, int, int, int], int] | None = None,
    steady: Callable[[int, int, int], float | None] | None = None,
    idle: Callable[[int, int, int, float, float, float], float | None] | None = None,
    chunks: tuple[int, ...] = (1,),
    max_devices: int = 4,
    max_microbatches: int = 8,
    microbatches_per_device: int = 0,
    max_examples: int = 50,
    decoders: bool = True,
    runs: Callable[[int, int, int], bool] | None = None,
) -> None:
    """Assert, over drawn configurations, that ``strategy`` plans valid, exact, deadlock-free schedules.

    Every configuration must plan a schedule that validates, simulates without
    deadlock, and gives the full-batch gradients (relative error at most
    1e-10), under every remat mode and uneven micro-batches. Optionally the
    measured bubble under unit cost (no remat) must equal ``bubble(K, M, v)``
    (``True``: the strategy's own ``bubble()``; ``None`` from a formula skips
    that configuration), the peak in-flight micro-batches of device d must
    equal ``inflight(K, M, v, d)``, and the bubble with steps back to back
    (``Metrics.steady_bubble_fraction``) must equal ``steady(K, M, v)``.
    With ``decoders`` (the default), about half the configurations whose
    stages a 4-block decoder can fill run a tiny transformer decoder instead
    of the MLP (``decoder_configs``): there the gradients must be exact and
    the shape-only memory timeline the real arrays' byte for byte (the
    formulas are checked on the MLP draws).

    Every MLP draw also runs shape-only under the ``measured`` cost model
    with drawn times (``measured_times``: F, I, W unequal, sends free or
    not), where the unit-cost formulas above cannot hold. There the
    timeline must be exactly what the times imply (``timeline_problem``:
    each action lasts its stage's time and starts the moment its device is
    free and its input has arrived, no idle the times do not explain), and,
    on draws with alike stages and free links, each device's idle time in
    the step must equal ``idle(K, M, v, F, I, W)`` (``None`` skips), e.g.
    ``lambda K, M, v, F, I, W: (K - 1) * (F + I + W)`` for 1F1B.

    Args:
        strategy: an instance, or a name or ``path/file.py:Class`` to load.
        chunks: the values of v to draw.
        microbatches_per_device: draw at least this many micro-batches per device.
        runs: keep only the draws ``runs(K, M, v)`` accepts, for a strategy that refuses some on purpose
            (``formulas.ClosedForm.runs``: DualPipe needs K and M even, Chimera K even and K | M); None keeps
            every draw.
        max_examples: configurations to try (derandomized: the same ones every run).

    Raises:
        StrategyCheckFailed: naming the smallest failing configuration hypothesis
            found, and showing the schedule table.
    """
    instance = load_strategy(strategy) if isinstance(strategy, str) else strategy

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        report_multiple_bugs=False,  # one failure, the smallest: an MLP draw and a decoder draw may fail alike
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(configs(max_devices, max_microbatches, chunks, microbatches_per_device, decoders, measured=True))
    def check(config: Config) -> None:
        assume(runs is None or runs(config.devices, config.microbatches, config.chunks))
        _check_one(instance, config, bubble, inflight, steady, idle)

    check()
