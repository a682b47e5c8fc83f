"""Models of identical architecture share one speed measurement in a suite; their accuracy stays their own."""

import dataclasses

import torch

from vitkd.bench import SuiteSettings, TimingSettings, evaluate_accuracy, format_table, profile_specs, read_records
from vitkd.data import build_eval_loader
from vitkd.engine.checkpoint import export_student
from vitkd.models.factory import build_model
from vitkd.models.quantize import PACKED_FILE, add_activation_quantizers, load_packed, quantize_model, save_packed

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


def make_low_bit_run(run_dir, activation_bits=8):
    """A run directory as a 1-bit training leaves it: export/student.{safetensors,json} and the packed file."""
    torch.manual_seed(0)
    student = build_model("vit_tiny_patch16_224", KWARGS)
    quantize_model(student, 1, activation_bits=activation_bits)
    export = run_dir / "export"
    make_export(export, seed=0)
    save_packed(student, export / PACKED_FILE, "vit_tiny_patch16_224", KWARGS, activation_bits)
    return student, export


def test_a_packed_export_is_benched_as_the_reconstructed_low_bit_model(tmp_path):
    student, export = make_low_bit_run(tmp_path / "run")
    float_spec = str(export / "student.safetensors")
    settings = SuiteSettings(batch_size=64, device="cpu", threads=1, dataset="digits", timing=QUICK)
    packed, plain = profile_specs([str(tmp_path / "run"), float_spec], settings=settings, out_dir=tmp_path / "out")
    assert (packed.weight_bits, packed.stored_bytes) == (1, (export / PACKED_FILE).stat().st_size)
    assert (plain.weight_bits, plain.stored_bytes) == (32, (export / "student.safetensors").stat().st_size)
    assert packed.stored_bytes < plain.stored_bytes
    assert packed.measured_with is None  # activation quantisers: not the float model's speed
    reconstructed, info = load_packed(export / PACKED_FILE)
    add_activation_quantizers(reconstructed, info)
    loader = build_eval_loader("digits", None, 16, 64, (0.5,) * 3, (0.5,) * 3, split="val", crop_pct=1.0)
    expected = evaluate_accuracy(reconstructed, loader)
    assert (packed.top1, packed.top5) == (expected.top1, expected.top5)
    assert packed.flops == plain.flops  # fake-quantised activations add no counted FLOPs
    assert [(record.weight_bits, record.stored_bytes) for record in read_records(tmp_path / "out" / "bench.csv")] == \
        [(1, packed.stored_bytes), (32, plain.stored_bytes)]
    markdown = (tmp_path / "out" / "bench.md").read_text()
    header = markdown.splitlines()[0]
    assert "| Bits |" in header and "Stored KiB" in header
    assert f"| 1 | {packed.stored_bytes / 1024:.1f} |" in markdown


def test_all_models_are_timed_in_one_interleaved_measurement_and_keep_their_own_figures(monkeypatch):
    import vitkd.bench.suite as suite
    from vitkd.bench.latency import TimingResult

    calls = []

    def scripted(subjects, **options):  # batch-1 forwards take 1, 2, ... ms, batch-4 forwards 10, 20, ... ms
        calls.append([subject.label for subject in subjects])
        return [TimingResult(subject.batch_size, (float(index // 2 + 1) * (10 if index % 2 else 1),) * 3,
                             (1.0, 1.0), "converged") for index, subject in enumerate(subjects)]

    monkeypatch.setattr(suite, "time_interleaved", scripted)
    small = "vit_tiny_patch16_224:" + ",".join(f"{key}={value}" for key, value in KWARGS.items())
    large = small.replace("depth=1", "depth=2")
    records = profile_specs([small, large], settings=SuiteSettings(batch_size=4, device="cpu", threads=1,
                                                                   timing=QUICK))
    assert calls == [[f"{small} batch 1", f"{small} batch 4", f"{large} batch 1", f"{large} batch 4"]]
    assert [record.latency_ms_median for record in records] == [1.0, 2.0]
    assert [record.throughput for record in records] == [4 * 1000 / 10.0, 4 * 1000 / 20.0]
    assert records[0].timing_group == records[1].timing_group is not None
    assert "measured in interleaved rounds" in format_table(records)
