"""The ONNX Runtime timer follows the latency harness's rules (fake clock); sessions report their threads; int8."""

import pytest
import torch
from torch import nn

from vitkd.bench import TimingSettings
from vitkd.bench.onnx_build import export_to_onnx
from vitkd.bench.onnx_runtime import (OnnxRuntimeClassifier, create_session, measure_onnx_latency, quantize_int8,
                                      session_threads)
from vitkd.errors import DeployError


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class _Input:
    name, shape = "input", ["batch", 3, 4, 4]


class FakeSession:
    """Answers `run` like a session, advancing the clock by the next scripted duration."""

    def __init__(self, clock: FakeClock, durations: list[float]) -> None:
        self.clock, self.durations, self.fed = clock, iter(durations), []

    def get_inputs(self):
        return [_Input()]

    def run(self, outputs, feeds):
        self.fed.append(feeds["input"].shape)
        self.clock.now += next(self.durations)
        return [None]


def test_warmup_runs_are_excluded_and_the_spread_of_rounds_is_reported():
    clock = FakeClock()
    rounds = [[0.004] * 3, [0.005] * 3]
    session = FakeSession(clock, [9.0, 9.0] + [duration for round_ in rounds * 5 for duration in round_])
    settings = TimingSettings(warmup_iterations=2, iterations_per_round=3, min_rounds=2, time_budget_s=0.02)
    result = measure_onnx_latency(session, (3, 4, 4), 2, settings, clock=clock)
    assert session.fed == [(2, 3, 4, 4)] * (2 + len(result.forward_ms))  # the same fixed batch every time
    assert max(result.forward_ms) == pytest.approx(5.0)  # the 9 s warmup runs are not timed
    assert result.round_medians_ms == pytest.approx((4.0, 5.0))
    assert result.relative_spread == pytest.approx(1.0 / 4.5)
    assert result.stop_reason == "time budget"
    assert result.throughput == pytest.approx(2 / 0.0045)


@pytest.fixture(scope="module")
def linear_onnx(tmp_path_factory):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    path = export_to_onnx(model, (3, 8, 8), tmp_path_factory.mktemp("onnx") / "mlp.onnx", dynamic_batch=True)
    return model, path


def test_session_uses_and_reports_the_threads_asked_for(linear_onnx):
    _, path = linear_onnx
    assert session_threads(create_session(path, threads=1)) == 1
    assert session_threads(create_session(path, threads=2)) == 2
    assert session_threads(create_session(path)) == torch.get_num_threads()


def test_real_session_timing_and_fixed_batch_refusal(linear_onnx, tmp_path):
    model, path = linear_onnx
    settings = TimingSettings(warmup_iterations=1, iterations_per_round=2, min_rounds=2, time_budget_s=0.01)
    result = measure_onnx_latency(create_session(path, threads=1), (3, 8, 8), 4, settings)
    assert result.batch_size == 4 and len(result.forward_ms) >= 4 and result.median_ms > 0
    fixed = export_to_onnx(model, (3, 8, 8), tmp_path / "fixed.onnx")
    with pytest.raises(DeployError, match="takes batch 1 only, not 4.*--dynamic-batch"):
        measure_onnx_latency(create_session(fixed), (3, 8, 8), 4, settings)


def test_int8_file_is_smaller_and_close_to_fp32(linear_onnx, tmp_path):
    model, path = linear_onnx
    int8_path = quantize_int8(path, tmp_path / "mlp.int8.onnx")
    assert int8_path.stat().st_size < 0.5 * path.stat().st_size  # 4-byte weights became 1-byte ones
    images = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        expected = model(images)
    got = OnnxRuntimeClassifier(create_session(int8_path, threads=1))(images)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 0.25 * expected.abs().max()  # int8 is close (per-tensor scales), not equal
    assert not torch.equal(got, expected)
