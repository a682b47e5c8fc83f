"""`profile()` on a tiny ViT: every field filled consistently; teacher ratios; bad input sizes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses

import pytest
import timm
import torch

from vitkd.bench import (InputSizeError, ProfileRecord, TimingSettings, compare_to_teacher, count_activations,
                         count_flops, profile)
from vitkd.bench.memory import resident_bytes

QUICK = TimingSettings(warmup_iterations=1, iterations_per_round=2, min_rounds=2, time_budget_s=0.05)


def tiny_vit(num_classes: int = 10) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=num_classes)


def test_profile_fills_every_measurement():
    model = tiny_vit()
    record = profile(model, name="tiny", batch_size=4, device="cpu", threads=1, timing=QUICK)
    assert record.name == "tiny"
    assert record.input_size == (3, 32, 32)
    assert record.params == sum(parameter.numel() for parameter in model.parameters())
    assert record.flops == count_flops(model, (3, 32, 32))
    assert record.train_flops_per_image == 3 * record.flops
    assert record.activations == count_activations(model, (3, 32, 32))
    assert 0 < record.latency_ms_median <= record.latency_ms_p90
    assert record.latency_spread >= 0
    assert record.throughput > 0
    assert record.peak_memory_bytes > resident_bytes(model)
    assert record.threads == 1
    assert record.device == "cpu"
    assert (record.top1, record.top5, record.teacher) == (None, None, None)
    assert model.training  # the caller's mode is restored


def test_profile_with_loader_and_teacher_fills_accuracy_and_ratios():
    torch.manual_seed(0)
    images, labels = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    teacher = ProfileRecord(name="teacher", device="cpu", threads=1, input_size=(3, 32, 32), batch_size=4,
                            params=10**7, flops=10**9, train_flops_per_image=3 * 10**9, activations=1,
                            latency_ms_median=1000.0, latency_ms_p90=1000.0, latency_spread=0.0, throughput=1.0,
                            peak_memory_bytes=1, top1=80.0, top5=95.0)
    record = profile(tiny_vit(), name="student", batch_size=2, device="cpu", threads=1, timing=QUICK,
                     loader=[(images, labels)], teacher_record=teacher)
    assert 0.0 <= record.top1 <= record.top5 <= 100.0
    assert record.teacher == "teacher"
    assert record.speedup_vs_teacher == pytest.approx(1000.0 / record.latency_ms_median)
    assert record.flop_reduction_vs_teacher == pytest.approx(10**9 / record.flops)
    assert record.accuracy_retained == pytest.approx(record.top1 / 80.0)


def make_record(**changes) -> ProfileRecord:
    base = ProfileRecord(name="m", device="cpu", threads=2, input_size=(3, 224, 224), batch_size=8, params=100,
                         flops=1000, train_flops_per_image=3000, activations=10, latency_ms_median=10.0,
                         latency_ms_p90=12.0, latency_spread=0.1, throughput=100.0, peak_memory_bytes=1 << 20)
    return dataclasses.replace(base, **changes)


def test_teacher_ratios_read_as_times_better():
    teacher = make_record(name="big", params=400, flops=8000, latency_ms_median=40.0, top1=80.0)
    student = compare_to_teacher(make_record(name="small", top1=72.0), teacher)
    assert student.speedup_vs_teacher == pytest.approx(4.0)
    assert student.param_reduction_vs_teacher == pytest.approx(4.0)
    assert student.flop_reduction_vs_teacher == pytest.approx(8.0)
    assert student.accuracy_retained == pytest.approx(0.9)


def test_accuracy_retained_is_unknown_without_both_accuracies():
    student = compare_to_teacher(make_record(name="small", top1=72.0), make_record(name="big"))
    assert student.accuracy_retained is None
    assert student.speedup_vs_teacher == pytest.approx(1.0)


def test_profile_rejects_an_impossible_input_size_naming_model_and_size():
    with pytest.raises(InputSizeError, match=r"'tiny' cannot run on input size \(3, 64, 64\)"):
        profile(tiny_vit(), name="tiny", input_size=(3, 64, 64), batch_size=2, device="cpu", timing=QUICK)


def test_record_round_trips_through_a_plain_dict():
    record = make_record(flops_uncounted_ops=("aten::cumsum",), top1=50.0)
    assert ProfileRecord.from_dict(record.to_dict()) == record
    with pytest.raises(ValueError, match="unknown ProfileRecord fields"):
        ProfileRecord.from_dict({**record.to_dict(), "latency": 1.0})
