"""Models of identical architecture share one speed measurement in a suite; their accuracy stays their own."""

import dataclasses

import torch

from vitkd.bench import SuiteSettings, TimingSettings, format_table, profile_specs
from vitkd.engine.checkpoint import export_student
from vitkd.models.factory import build_model

KWARGS = {"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "num_classes": 10}
QUICK = TimingSettings(warmup_iterations=1, iterations_per_round=2, min_rounds=2, time_budget_s=0.02)


def make_export(path, seed: int):
    torch.manual_seed(seed)
    model = build_model("vit_tiny_patch16_224", KWARGS)
    export_student(model, path, "vit_tiny_patch16_224", KWARGS,
                   extra_info={"img_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0})
    return str(path)


def test_identical_architectures_share_the_first_measurement(tmp_path):
    first, second = make_export(tmp_path / "a", seed=0), make_export(tmp_path / "b", seed=1)
    settings = SuiteSettings(batch_size=64, device="cpu", threads=1, dataset="digits", timing=QUICK)
    measured, shared = profile_specs([first, second], settings=settings)
    assert measured.measured_with is None and shared.measured_with == first
    timing_fields = ("latency_ms_median", "latency_ms_p90", "latency_spread", "throughput", "peak_memory_bytes")
    assert [getattr(shared, key) for key in timing_fields] == [getattr(measured, key) for key in timing_fields]
    assert shared.top1 != measured.top1 or shared.top5 != measured.top5  # other weights, own accuracy
    table = format_table([measured, shared])
    assert f"{second}*" in table
    assert f"share one latency/throughput measurement: {second} (torch) reuses {first}" in table


def test_other_settings_are_measured_separately(tmp_path):
    first = make_export(tmp_path / "a", seed=0)
    other = "vit_tiny_patch16_224:" + ",".join(f"{key}={value}" for key, value in {**KWARGS, "depth": 2}.items())
    settings = SuiteSettings(batch_size=4, device="cpu", threads=1, timing=QUICK)
    records = profile_specs([first, other], settings=settings)
    assert [record.measured_with for record in records] == [None, None]
    assert dataclasses.replace(records[1], name=first) != records[0]
