"""benchmarks/students.py: where the batch-1 latency ranking of the zoo changes between runtimes."""

import pytest
from conftest import load_benchmark

from vitkd.bench import ProfileRecord


@pytest.fixture(scope="module")
def students():
    return load_benchmark("students")


def record(name: str, runtime: str, latency_ms: float) -> ProfileRecord:
    return ProfileRecord(name=name, device="cpu", threads=2, input_size=(3, 224, 224), batch_size=16, params=1,
                         flops=1, train_flops_per_image=3, activations=1, latency_ms_median=latency_ms,
                         latency_ms_p90=latency_ms, latency_spread=0.01, throughput=1.0, peak_memory_bytes=None,
                         runtime=runtime)


def test_ranking_changes_name_the_models_that_moved(students):
    # torch: deit 59 < tinyvit 113 < resnet 155 ms; ONNX Runtime: deit 65 < resnet 139 < tinyvit 189 ms, so resnet
    # moves from 3rd to 2nd and tinyvit from 2nd to 3rd; int8 keeps torch's order (40 < 90 < 120)
    records = [record("deit", "torch", 59), record("tinyvit", "torch", 113), record("resnet", "torch", 155),
               record("deit", "onnxruntime", 65), record("tinyvit", "onnxruntime", 189),
               record("resnet", "onnxruntime", 139), record("deit", "onnxruntime-int8", 40),
               record("tinyvit", "onnxruntime-int8", 90), record("resnet", "onnxruntime-int8", 120)]
    assert students.latency_ranking(records, "onnxruntime") == ["deit", "resnet", "tinyvit"]
    assert students.ranking_changes(records) == ["onnxruntime vs torch latency ranking: resnet 3->2, tinyvit 2->3",
                                                 "onnxruntime-int8 vs torch latency ranking: unchanged"]


def test_a_torch_only_run_has_no_ranking_lines(students):
    assert students.ranking_changes([record("deit", "torch", 59), record("resnet", "torch", 155)]) == []
