"""Latency harness mechanics with a fake clock: warmup excluded, rounds, spread, budget, throughput."""

import pytest
import torch
from torch import nn

from vitkd.bench import RuntimeOptions, TimingSettings, measure_latency, time_forward
from vitkd.bench.latency import TimedForward, percentile, time_interleaved


class FakeClock:
    """A clock that only moves when a fake forward says how long it took."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def scripted_forward(clock: FakeClock, durations: list[float]):
    remaining = iter(durations)
    calls = []

    def forward() -> None:
        calls.append(None)
        clock.advance(next(remaining))

    return forward, calls


def test_warmup_forwards_are_run_but_not_timed():
    clock = FakeClock()
    forward, calls = scripted_forward(clock, [5.0] * 3 + [0.010] * 100)
    settings = TimingSettings(warmup_iterations=3, iterations_per_round=5, min_rounds=2, time_budget_s=100.0)
    result = time_forward(forward, batch_size=4, settings=settings, clock=clock)
    assert len(calls) == 3 + len(result.forward_ms)
    assert len(result.forward_ms) == 10  # two identical rounds converge at once
    assert result.median_ms == pytest.approx(10.0)
    assert result.p90_ms == pytest.approx(10.0)
    assert result.relative_spread == pytest.approx(0.0, abs=1e-6)
    assert result.stop_reason == "converged"
    assert result.throughput == pytest.approx(400.0)  # 4 images per 10 ms


def test_noisy_rounds_report_their_spread_and_stop_at_the_budget():
    clock = FakeClock()
    rounds = [[0.010] * 5, [0.012] * 5] * 10
    forward, _ = scripted_forward(clock, [0.0] + [duration for round_ in rounds for duration in round_])
    settings = TimingSettings(warmup_iterations=1, iterations_per_round=5, min_rounds=2, time_budget_s=0.1,
                              target_relative_spread=0.05)
    result = time_forward(forward, batch_size=1, settings=settings, clock=clock)
    assert result.stop_reason == "time budget"
    assert result.round_medians_ms == pytest.approx((10.0, 12.0))
    assert result.relative_spread == pytest.approx(2.0 / 11.0)
    assert result.median_ms == pytest.approx(11.0)
    assert result.p90_ms == pytest.approx(12.0)


def test_minimum_rounds_run_even_when_one_forward_exceeds_the_budget():
    clock = FakeClock()
    forward, _ = scripted_forward(clock, [1.0, 2.0, 3.0, 4.0, 5.0])
    settings = TimingSettings(warmup_iterations=0, iterations_per_round=1, min_rounds=3, time_budget_s=0.5)
    result = time_forward(forward, batch_size=1, settings=settings, clock=clock)
    assert result.forward_ms == pytest.approx((1000.0, 2000.0, 3000.0))
    assert result.stop_reason == "time budget"
    assert result.relative_spread == pytest.approx(1.0)  # (3000 - 1000) / 2000


def test_max_rounds_caps_a_never_converging_measurement():
    clock = FakeClock()
    forward, _ = scripted_forward(clock, [0.001 * (1 + index % 2) for index in range(100)])
    settings = TimingSettings(warmup_iterations=0, iterations_per_round=1, min_rounds=2, max_rounds=4,
                              time_budget_s=1000.0)
    result = time_forward(forward, batch_size=1, settings=settings, clock=clock)
    assert result.stop_reason == "max rounds"
    assert len(result.round_medians_ms) == 4


def test_round_size_is_derived_from_the_last_warmup_forward():
    clock = FakeClock()
    forward, _ = scripted_forward(clock, [0.5, 0.01] + [0.01] * 100)
    settings = TimingSettings(warmup_iterations=2, iterations_per_round=None, min_rounds=2, time_budget_s=1.0)
    result = time_forward(forward, batch_size=1, settings=settings, clock=clock)
    assert len(result.forward_ms) == 2 * 10  # a round aims at budget / 10 = 0.1 s of 10 ms forwards


def test_wait_runs_after_every_forward_before_the_clock_is_read():
    clock = FakeClock()
    events = []

    def forward() -> None:
        events.append("forward")

    def wait() -> None:
        events.append("wait")
        clock.advance(0.002)  # queued device work finishes only when waited for

    settings = TimingSettings(warmup_iterations=1, iterations_per_round=2, min_rounds=2)
    result = time_forward(forward, batch_size=1, settings=settings, clock=clock, wait=wait)
    assert events == ["forward", "wait"] * 5
    assert result.median_ms == pytest.approx(2.0)


class ClockedModule(nn.Module):
    """Advances a fake clock on every forward and records the conditions it ran under."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.linear = nn.Linear(4, 2)
        self.seen = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append((tuple(images.shape), torch.is_inference_mode_enabled(), self.training))
        self.clock.advance(0.003 * images.shape[0])
        return self.linear(images)


def test_measure_latency_times_a_fixed_batch_in_inference_mode():
    clock = FakeClock()
    model = ClockedModule(clock).train()
    settings = TimingSettings(warmup_iterations=2, iterations_per_round=3, min_rounds=2)
    result = measure_latency(model, (3, 2, 4), batch_size=8, options=RuntimeOptions(device="cpu"),
                             settings=settings, clock=clock)
    assert set(model.seen) == {((8, 3, 2, 4), True, False)}
    assert len(model.seen) == 2 + len(result.forward_ms)
    assert result.median_ms == pytest.approx(24.0)
    assert result.throughput == pytest.approx(8 / 0.024)


def test_percentile_interpolates_between_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert percentile([7.0], 90) == 7.0


@pytest.mark.parametrize("bad", [dict(min_rounds=1), dict(min_rounds=5, max_rounds=3), dict(time_budget_s=0),
                                 dict(iterations_per_round=0), dict(warmup_iterations=-1)])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        TimingSettings(**bad)


def test_interleaved_rounds_alternate_between_models_and_keep_each_models_own_samples():
    clock = FakeClock()
    order = []

    def subject(label: str, seconds: float, batch_size: int) -> TimedForward:
        def forward() -> None:
            order.append(label)
            clock.advance(seconds)

        return TimedForward(label=label, forward=forward, batch_size=batch_size)

    fast, slow = subject("fast", 0.002, 1), subject("slow", 0.008, 4)
    settings = TimingSettings(warmup_iterations=1, iterations_per_round=2, min_rounds=3, time_budget_s=100.0)
    rounds = []
    fast_result, slow_result = time_interleaved([fast, slow], settings=settings, clock=clock, on_round=rounds.append)
    # warm-up of each model first (untimed), then round r: model 1's round, then model 2's round
    assert order == ["fast", "slow"] + ["fast", "fast", "slow", "slow"] * 3
    assert rounds == [1, 2, 3]
    assert fast_result.forward_ms == pytest.approx((2.0,) * 6) and slow_result.forward_ms == pytest.approx((8.0,) * 6)
    assert fast_result.throughput == pytest.approx(500.0) and slow_result.throughput == pytest.approx(500.0)
    assert fast_result.stop_reason == slow_result.stop_reason == "converged"


def test_interleaved_rounds_go_on_until_every_model_is_steady_or_the_shared_budget_ends():
    clock = FakeClock()
    steady_calls = []

    def steady() -> None:
        steady_calls.append(None)
        clock.advance(0.010)

    noisy_durations = iter([0.010, 0.020] * 50)

    def noisy() -> None:
        clock.advance(next(noisy_durations))

    settings = TimingSettings(warmup_iterations=0, iterations_per_round=1, min_rounds=2, time_budget_s=0.045)
    steady_result, noisy_result = time_interleaved(
        [TimedForward("steady", steady, 1), TimedForward("noisy", noisy, 1)], settings=settings, clock=clock)
    # the steady model converged at round 2 but keeps being timed beside the noisy one until the budget of
    # 2 x 0.045 s of timed rounds is spent: rounds take 0.020, 0.030, 0.020, 0.030 s, so 0.09 s after round 4
    assert steady_result.stop_reason == noisy_result.stop_reason == "time budget"
    assert len(steady_calls) == len(steady_result.forward_ms) == len(noisy_result.forward_ms) == 4
    assert steady_result.relative_spread == pytest.approx(0.0, abs=1e-6)
    assert noisy_result.round_medians_ms == pytest.approx((10.0, 20.0, 10.0, 20.0))
