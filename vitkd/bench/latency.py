"""Latency and throughput, following timm's benchmark conventions.

One measurement = a fixed random input, `warmup_iterations` untimed forwards (allocator warm-up, oneDNN/cuDNN
algorithm choice, torch.compile), then timed *rounds* of `iterations_per_round` forwards each. Every forward is
timed on its own, with `torch.cuda.synchronize()` before reading the clock on CUDA, under `torch.inference_mode()`.

Rounds repeat until the round medians agree (relative spread at most `target_relative_spread`) after at least
`min_rounds` rounds, or the time budget for timed rounds is spent, or `max_rounds` is reached. The budget is soft:
`min_rounds` rounds always run, so a model whose single forward exceeds the budget still gets a figure.

Reported: the median and 90th percentile of all timed forwards (ms per batch), the relative spread of the round
medians, `(max - min) / median`, so a noisy figure shows as noisy, and throughput = batch size / median (images/s).
Several models measured in one report are timed in interleaved rounds (`time_interleaved`: round r times model 1,
model 2, ... in turn), so drift of the machine during the measurement shows in every model alike instead of
reading as a speed difference between models timed one after the other.
The clock is injectable (`clock=`) so tests can check the mechanics without wall time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from vitkd.bench.input_size import InputSize
from vitkd.bench.runtime import RuntimeOptions, example_batch, inference_context, prepare_model, synchronize

__all__ = ["Clock", "TimedForward", "TimingResult", "TimingSettings", "measure_latency", "percentile", "time_forward",
           "time_interleaved"]

Clock = Callable[[], float]
"""Returns the current time in seconds (monotonic), like `time.perf_counter`."""


@dataclass(frozen=True)
class TimingSettings:
    """How long and how often to time.

    Attributes:
        warmup_iterations: untimed forwards before timing starts.
        iterations_per_round: forwards per round; `None` sizes rounds from the last warmup forward so that one round
            lasts about `time_budget_s / 10`.
        min_rounds: rounds always run (at least 2, so a spread exists).
        max_rounds: hard cap on rounds.
        target_relative_spread: stop once `(max - min) / median` of the round medians is at most this.
        time_budget_s: seconds of timed rounds after which no new round starts (warmup not included).
    """

    warmup_iterations: int = 3
    iterations_per_round: int | None = None
    min_rounds: int = 3
    max_rounds: int = 50
    target_relative_spread: float = 0.05
    time_budget_s: float = 10.0

    def __post_init__(self) -> None:
        if self.warmup_iterations < 0:
            raise ValueError(f"warmup_iterations must be >= 0, got {self.warmup_iterations}")
        if self.iterations_per_round is not None and self.iterations_per_round < 1:
            raise ValueError(f"iterations_per_round must be >= 1 or None, got {self.iterations_per_round}")
        if not 2 <= self.min_rounds <= self.max_rounds:
            raise ValueError(f"need 2 <= min_rounds <= max_rounds, got {self.min_rounds} and {self.max_rounds}")
        if self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s}")


@dataclass(frozen=True)
class TimingResult:
    """Timed forwards of one batch size.

    Attributes:
        batch_size: images per forward.
        forward_ms: duration of every timed forward, ms, in order (warmup excluded).
        round_medians_ms: median forward duration of each round, ms.
        stop_reason: `"converged"`, `"time budget"` or `"max rounds"`.
    """

    batch_size: int
    forward_ms: tuple[float, ...]
    round_medians_ms: tuple[float, ...]
    stop_reason: str

    @property
    def median_ms(self) -> float:
        """Median forward time, ms per batch."""
        return statistics.median(self.forward_ms)

    @property
    def p90_ms(self) -> float:
        """90th percentile forward time, ms per batch."""
        return percentile(self.forward_ms, 90.0)

    @property
    def relative_spread(self) -> float:
        """`(max - min) / median` of the round medians; 0.05 means the rounds agree within 5 %."""
        return (max(self.round_medians_ms) - min(self.round_medians_ms)) / statistics.median(self.round_medians_ms)

    @property
    def throughput(self) -> float:
        """Images per second at the median forward time."""
        return self.batch_size * 1000.0 / self.median_ms


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@dataclass(frozen=True)
class TimedForward:
    """One thing to time in interleaved rounds: a bound forward and the images it processes per call.

    Attributes:
        label: names the subject (for logs and tests).
        forward: runs one forward of `batch_size` images (already bound to its input).
        batch_size: images per call, for throughput.
        wait: called after each forward before reading the clock (CUDA synchronisation).
    """

    label: str
    forward: Callable[[], Any]
    batch_size: int
    wait: Callable[[], None] = lambda: None


def _round_size(subject: TimedForward, settings: TimingSettings, clock: Clock) -> int:
    """Run the subject's untimed warmup forwards; forwards per round (fixed, or sized from the last warmup)."""
    warmup_seconds = 0.0
    for _ in range(settings.warmup_iterations):
        started = clock()
        subject.forward()
        subject.wait()
        warmup_seconds = clock() - started
    if settings.iterations_per_round is not None:
        return settings.iterations_per_round
    round_target_seconds = settings.time_budget_s / 10
    return max(1, min(1000, int(round_target_seconds / warmup_seconds))) if warmup_seconds > 0 else 1


def _relative_spread(round_medians: Sequence[float]) -> float:
    return (max(round_medians) - min(round_medians)) / max(statistics.median(round_medians), 1e-12)


def time_interleaved(subjects: Sequence[TimedForward], *, settings: TimingSettings = TimingSettings(),
                     clock: Clock = time.perf_counter,
                     on_round: Callable[[int], None] | None = None) -> list[TimingResult]:
    """Time several forwards in interleaved rounds, so that machine drift hits all of them alike.

    Every subject first runs its untimed warmup forwards (in order). Then round r runs subject 1's round, subject 2's
    round, ... (each `iterations_per_round` forwards, or sized from its last warmup forward as in `time_forward`),
    each round's samples appended to that subject's own series. Every round times every subject, and rounds repeat
    until, after `min_rounds`, every subject's spread of round medians is at most `target_relative_spread`
    ("converged"), or `time_budget_s` per subject (`time_budget_s * len(subjects)` in all) of timed rounds is spent
    ("time budget"), or `max_rounds` is reached; all subjects share the stop reason and the number of rounds. With
    one subject this is exactly `time_forward`.

    Args:
        subjects: what to time, in the order each round visits them.
        settings: warmup, round size and stopping rule, applied to every subject.
        clock: current time in seconds; injectable for tests.
        on_round: called with the number of finished rounds after each round (progress).

    Returns:
        one `TimingResult` per subject, in the order given, each from that subject's samples only.
    """
    if not subjects:
        return []
    iterations = [_round_size(subject, settings, clock) for subject in subjects]
    forward_seconds: list[list[float]] = [[] for _ in subjects]
    round_medians: list[list[float]] = [[] for _ in subjects]
    budget_seconds = settings.time_budget_s * len(subjects)
    budget_started = clock()
    rounds = 0
    while True:
        for index, subject in enumerate(subjects):
            round_seconds = []
            for _ in range(iterations[index]):
                started = clock()
                subject.forward()
                subject.wait()
                round_seconds.append(clock() - started)
            forward_seconds[index].extend(round_seconds)
            round_medians[index].append(statistics.median(round_seconds))
        rounds += 1
        if on_round is not None:
            on_round(rounds)
        if rounds < settings.min_rounds:
            continue
        if all(_relative_spread(medians) <= settings.target_relative_spread for medians in round_medians):
            stop_reason = "converged"
            break
        if clock() - budget_started >= budget_seconds:
            stop_reason = "time budget"
            break
        if rounds >= settings.max_rounds:
            stop_reason = "max rounds"
            break
    return [TimingResult(batch_size=subject.batch_size,
                         forward_ms=tuple(seconds * 1000.0 for seconds in forward_seconds[index]),
                         round_medians_ms=tuple(seconds * 1000.0 for seconds in round_medians[index]),
                         stop_reason=stop_reason)
            for index, subject in enumerate(subjects)]


def time_forward(forward: Callable[[], Any], *, batch_size: int, settings: TimingSettings = TimingSettings(),
                 clock: Clock = time.perf_counter, wait: Callable[[], None] = lambda: None) -> TimingResult:
    """Time `forward()` calls: warmup excluded, rounds until the spread is small or the budget is spent.

    Args:
        forward: runs one forward of `batch_size` images (already bound to its input).
        batch_size: images per call, for throughput.
        settings: warmup, round size and stopping rule.
        clock: current time in seconds; injectable for tests.
        wait: called after each forward before reading the clock (CUDA synchronisation).
    """
    subject = TimedForward(label="forward", forward=forward, batch_size=batch_size, wait=wait)
    return time_interleaved([subject], settings=settings, clock=clock)[0]


def measure_latency(model: nn.Module, input_size: InputSize, batch_size: int,
                    options: RuntimeOptions = RuntimeOptions(), settings: TimingSettings = TimingSettings(), *,
                    clock: Clock = time.perf_counter, prepared: nn.Module | None = None) -> TimingResult:
    """Time forwards of a fixed random `(batch_size, *input_size)` batch through `model`.

    Args:
        model: the module to time; moved in place to `options.device` / memory format and set to eval.
        input_size: `(C, H, W)`.
        batch_size: images per forward (1 for latency, larger for throughput).
        options: device, channels_last, AMP, compile. Threads are set by the caller (`use_threads`).
        settings: warmup and stopping rule.
        clock: seconds; injectable for tests.
        prepared: an already prepared (e.g. compiled) module to reuse instead of preparing `model` again.
    """
    runnable = prepared if prepared is not None else prepare_model(model, options)
    batch = example_batch(input_size, batch_size, options)
    device = options.torch_device
    with inference_context(options):
        return time_forward(lambda: runnable(batch), batch_size=batch_size, settings=settings, clock=clock,
                            wait=lambda: synchronize(device))
