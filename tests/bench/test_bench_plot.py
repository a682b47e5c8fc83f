"""Trade-off plots: a real PNG with and without accuracy; the Pareto front picks the undominated models."""

import dataclasses

import pytest

from vitkd.bench import ProfileRecord, pareto_front, plot_tradeoffs
from vitkd.bench import plot as plot_module

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


def test_flops_unit_scales_to_the_numbers():
    small = [make_record("demo_vit", 4.0, 0.00789, 95.0), make_record("demo_cnn", 2.0, 0.00972, 99.0)]
    assert plot_module.flops_unit(small) == (1e6, "MFLOPs")
    assert plot_module.flops_unit(small + [make_record("deit", 20.0, 1.26, 72.0)]) == (1e9, "GFLOPs")


def test_neighbouring_labels_alternate_above_and_below_and_the_right_half_faces_left():
    placements = plot_module.label_offsets([3.0, 1.0, 2.0, 4.0])
    by_rank = [placements[index] for index in (1, 2, 0, 3)]  # x order: 1, 2, 3, 4
    assert [offset[1] > 0 for offset, _ in by_rank] == [True, False, True, False]
    assert [alignment for _, alignment in by_rank] == ["left", "left", "right", "right"]


def test_each_runtime_gets_its_own_marker_and_one_label_per_model(tmp_path, monkeypatch):
    drawn = []
    original = plot_module._scatter_with_labels

    def spy(axes, xs, ys, records):
        original(axes, xs, ys, records)
        drawn.append(axes)

    monkeypatch.setattr(plot_module, "_scatter_with_labels", spy)
    torch_row = make_record("vit", 4.0, 0.0079, 95.0)
    records = [torch_row, dataclasses.replace(torch_row, runtime="onnxruntime", latency_ms_median=2.0),
               dataclasses.replace(torch_row, runtime="onnxruntime-int8", latency_ms_median=1.5, top1=94.0)]
    plot_tradeoffs(records, tmp_path / "bench.png")
    latency_axes = drawn[0]
    legend = [text.get_text() for text in latency_axes.get_legend().get_texts()]
    assert legend[:3] == ["torch", "onnxruntime", "onnxruntime-int8"]
    markers = [collection.get_paths()[0].vertices.shape[0] for collection in latency_axes.collections]
    assert len(set(markers)) == 3  # circle, square and triangle paths differ
    assert [text.get_text() for text in latency_axes.texts] == ["vit"]
    assert "MFLOPs" in drawn[1].get_xlabel()
