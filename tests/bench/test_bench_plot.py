"""Trade-off plots: a real PNG with and without accuracy; the Pareto front picks the undominated models."""

import dataclasses

import pytest

from vitkd.bench import ProfileRecord, pareto_front, plot_tradeoffs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_record(name: str, latency: float, gflops: float, top1: float | None) -> ProfileRecord:
    return ProfileRecord(name=name, device="cpu", threads=2, input_size=(3, 224, 224), batch_size=8, params=10**6,
                         flops=int(gflops * 1e9), train_flops_per_image=int(3 * gflops * 1e9), activations=10**6,
                         latency_ms_median=latency, latency_ms_p90=latency * 1.1, latency_spread=0.02,
                         throughput=1000 / latency, peak_memory_bytes=2**24, top1=top1)


def test_pareto_front_keeps_only_undominated_points_cheapest_first():
    costs = [1.0, 2.0, 3.0, 2.5, 1.0]
    scores = [70.0, 75.0, 74.0, 80.0, 65.0]
    assert pareto_front(costs, scores) == [0, 1, 3]


def test_pareto_front_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        pareto_front([1.0], [1.0, 2.0])


@pytest.mark.parametrize("with_accuracy", [True, False])
def test_plot_writes_a_png(tmp_path, with_accuracy):
    records = [make_record("deit_tiny_patch16_224", 20.0, 1.26, 72.2),
               make_record("deit_small_patch16_224", 45.0, 4.6, 79.8),
               make_record("resnet18", 15.0, 1.8, 69.7)]
    if not with_accuracy:
        records = [dataclasses.replace(record, top1=None) for record in records]
    path = plot_tradeoffs(records, tmp_path / "plots" / "bench.png")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # a drawn figure, not an empty canvas


def test_plot_requires_records(tmp_path):
    with pytest.raises(ValueError, match="no records"):
        plot_tradeoffs([], tmp_path / "bench.png")
    assert not (tmp_path / "bench.png").exists()
