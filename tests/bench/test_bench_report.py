"""Report files written and read back; table columns follow what the records hold."""

import csv
import dataclasses
import json

import pytest

from vitkd.bench import ProfileRecord, format_table, markdown_table, read_records, write_reports


def make_record(**changes) -> ProfileRecord:
    base = ProfileRecord(name="deit_tiny_patch16_224", device="cpu", threads=2, input_size=(3, 224, 224),
                         batch_size=8, params=5_717_416, flops=1_258_411_200, train_flops_per_image=3_775_233_600,
                         activations=5_974_636, latency_ms_median=21.25, latency_ms_p90=23.5, latency_spread=0.031,
                         throughput=55.125, peak_memory_bytes=48 * 2**20)
    return dataclasses.replace(base, **changes)


@pytest.fixture
def records() -> list[ProfileRecord]:
    teacher = make_record(name="deit_base_patch16_224", params=86_567_656, flops=17_582_740_224, top1=81.8,
                          top5=95.6, latency_ms_median=150.0)
    student = make_record(top1=72.2, top5=91.1, teacher=teacher.name, speedup_vs_teacher=150.0 / 21.25,
                          param_reduction_vs_teacher=15.14, flop_reduction_vs_teacher=13.97,
                          accuracy_retained=72.2 / 81.8, flops_uncounted_ops=("aten::cumsum",))
    return [teacher, student]


def test_reports_are_written_and_read_back_identically(tmp_path, records):
    paths = write_reports(records, tmp_path / "reports")
    assert {path.name for path in paths.values()} == {"bench.csv", "bench.json", "bench.md"}
    assert read_records(paths["csv"]) == records
    assert read_records(paths["json"]) == records
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [row["name"] for row in rows] == ["deit_base_patch16_224", "deit_tiny_patch16_224"]
    assert rows[1]["flops"] == "1258411200"
    assert json.loads(paths["json"].read_text())["records"][1]["input_size"] == [3, 224, 224]
    assert not list((tmp_path / "reports").glob(".*.tmp"))  # no temporary files left behind


def test_markdown_report_is_a_table_in_human_units(tmp_path, records):
    text = write_reports(records, tmp_path)["markdown"].read_text()
    lines = text.splitlines()
    assert lines[0].startswith("| Model | Input | Params (M) | GFLOPs |")
    assert lines[1].startswith("|:---|---:|")
    assert "| deit_tiny_patch16_224 | 224x224 | 5.72 | 1.26 | 3.78 |" in text
    assert "| 7.06x |" in text and "| 88.3% |" in text  # speed-up and accuracy retained
    assert "FLOPs are lower bounds (uncounted ops) for: deit_tiny_patch16_224" in text
    assert text == markdown_table(records)


def test_terminal_table_hides_columns_no_record_fills():
    plain = format_table([make_record()])
    assert "Latency ms" in plain and "Peak MiB" in plain
    assert "Top-1" not in plain and "Speed-up" not in plain
    assert "21.25" in plain and "48.0" in plain and "3.1%" in plain


def test_terminal_rows_are_aligned(records):
    lines = format_table(records).splitlines()
    assert len({len(line) for line in lines[:4]}) == 1  # header, rule, two rows have the same width


def test_unreadable_reports_are_rejected_clearly(tmp_path):
    with pytest.raises(ValueError, match="expected one of"):
        read_records(tmp_path / "bench.txt")
    stranger = tmp_path / "other.json"
    stranger.write_text(json.dumps({"records": []}))
    with pytest.raises(ValueError, match="not a vitkd bench report"):
        read_records(stranger)
    with pytest.raises(ValueError, match="no records"):
        write_reports([], tmp_path)


def test_runtime_rows_show_runtime_ratio_and_file_size_and_round_trip(tmp_path):
    torch_row = make_record()
    onnx_row = make_record(runtime="onnxruntime", latency_ms_median=10.625, peak_memory_bytes=None,
                           stored_bytes=3 * 2**20, speedup_vs_torch=2.0)
    plain = format_table([torch_row])
    assert "Runtime" not in plain and "vs torch" not in plain and "Stored MiB" not in plain
    table = format_table([torch_row, onnx_row])
    header, _, first, second = table.splitlines()[:4]
    assert header.split()[:2] == ["Model", "Runtime"] and "vs torch" in header and "Stored MiB" in header
    assert "torch" in first and "onnxruntime" in second and "2.00x" in second and "3.00" in second
    assert "intra_op_num_threads" in table
    paths = write_reports([torch_row, onnx_row], tmp_path)
    assert read_records(paths["csv"]) == [torch_row, onnx_row]
    assert read_records(paths["json"]) == [torch_row, onnx_row]


def test_version_1_reports_read_as_torch_records(tmp_path):
    record = make_record()
    values = {key: value for key, value in record.to_dict().items()
              if key not in ("runtime", "stored_bytes", "speedup_vs_torch", "measured_with", "weight_bits",
                             "timing_group")}
    old = tmp_path / "bench.json"
    old.write_text(json.dumps({"format": "vitkd.bench.records", "version": 1, "records": [values]}))
    assert read_records(old) == [record]


def test_models_below_one_gflop_are_shown_in_mflops():
    table = format_table([make_record(flops=7_890_000, train_flops_per_image=23_670_000)])
    header, _, row = table.splitlines()[:3]
    assert "MFLOPs" in header and "GFLOPs" not in header and "Train MFLOPs/img" in header
    assert "7.89" in row and "23.67" in row


def test_version_2_reports_read_their_file_size_as_the_stored_size(tmp_path):
    record = make_record(runtime="onnxruntime", stored_bytes=3 * 2**20, peak_memory_bytes=None)
    values = {key: value for key, value in record.to_dict().items()
              if key not in ("stored_bytes", "weight_bits", "timing_group")}
    old = tmp_path / "bench.json"
    old.write_text(json.dumps({"format": "vitkd.bench.records", "version": 2,
                               "records": [{**values, "model_file_bytes": 3 * 2**20}]}))
    assert read_records(old) == [record]


def test_bits_and_stored_size_columns_scale_to_kib_for_small_models():
    packed = make_record(name="run/1bit", weight_bits=1, stored_bytes=3 * 1024 + 512)
    float_row = make_record(name="run/float", weight_bits=32, stored_bytes=200 * 1024)
    header, _, first, second = format_table([packed, float_row]).splitlines()[:4]
    assert "Bits" in header and "Stored KiB" in header and "Stored MiB" not in header
    assert first.split()[-2:] == ["1", "3.5"] and second.split()[-2:] == ["32", "200.0"]
    assert "low-bit rows (run/1bit): the packed export rebuilt as a float timm model" in format_table([packed])
    big = make_record(weight_bits=32, stored_bytes=3 * 2**20)
    assert "Stored MiB" in format_table([big]).splitlines()[0]


def test_notes_name_the_interleaved_runs_rows_came_from():
    first = make_record(name="a", timing_group="2026-01-01T00:00:00Z (2 models)")
    second = make_record(name="b", timing_group="2026-01-01T00:00:00Z (2 models)")
    resumed = make_record(name="c", timing_group="2026-01-02T00:00:00Z (1 model)")
    assert "measured in interleaved rounds (each round times every model in turn" in format_table([first, second])
    notes = format_table([first, second, resumed])
    assert ("in 2 runs: 2026-01-01T00:00:00Z (2 models): a, b; 2026-01-02T00:00:00Z (1 model): c" in notes)
    assert "interleaved" not in format_table([make_record()])
