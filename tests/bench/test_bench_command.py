"""`vitkd bench` arguments end to end on tiny models: table, reports, plot, resume, and user errors."""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from vitkd.bench import ClassCountMismatchError, UnknownModelError, read_records
from vitkd.bench.command import add_arguments, run

STUDENT = "vit_tiny_patch16_224:img_size=32,patch_size=8,depth=1,num_classes=10"
TEACHER = "vit_small_patch16_224:img_size=32,patch_size=8,depth=2,num_classes=10"
QUICK = ["--time-budget", "0.05", "--warmup", "1", "--threads", "1", "--batch-size", "4", "--device", "cpu"]


def parse(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vitkd bench")
    add_arguments(parser)
    return parser.parse_args(arguments)


def test_students_against_a_teacher_write_reports_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    assert run(parse([STUDENT, "--teacher", TEACHER, "--out", str(out), *QUICK])) == 0
    printed = capsys.readouterr().out
    assert STUDENT in printed and TEACHER in printed and "Speed-up" in printed
    records = read_records(out / "bench.json")
    assert [record.name for record in records] == [TEACHER, STUDENT]
    assert records[1].teacher == TEACHER
    assert records[1].param_reduction_vs_teacher > 1
    assert (out / "bench.csv").is_file() and (out / "bench.md").is_file()
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_resume_reuses_finished_models(tmp_path, capsys):
    out = tmp_path / "bench"
    run(parse([STUDENT, "--out", str(out), *QUICK]))
    first = read_records(out / "bench.json")
    run(parse([STUDENT, "--out", str(out), "--resume", *QUICK]))
    assert read_records(out / "bench.json") == first  # not re-measured, so identical timings


def test_accuracy_on_the_bundled_digits(capsys):
    assert run(parse([STUDENT, "--dataset", "digits", *QUICK])) == 0
    printed = capsys.readouterr().out
    assert "Top-1 %" in printed and "Top-5 %" in printed


def test_dataset_with_other_class_count_is_refused():
    spec = "vit_tiny_patch16_224:img_size=32,patch_size=8,depth=1,num_classes=100"
    with pytest.raises(ClassCountMismatchError, match=r"head has 100 classes but the dataset has 10 classes"):
        run(parse([spec, "--dataset", "digits", *QUICK]))


def test_unknown_model_fails_before_any_work(tmp_path):
    with pytest.raises(UnknownModelError, match="vit_tiny_patch16_224"):
        run(parse([STUDENT, "vit_tiny_patch16_22", "--out", str(tmp_path / "bench"), *QUICK]))
    assert not (tmp_path / "bench").exists()


def test_resume_without_out_is_a_usage_error():
    with pytest.raises(ValueError, match="--resume needs --out"):
        run(parse([STUDENT, "--resume", *QUICK]))


def test_both_runtimes_and_int8_in_one_table_and_in_the_files(tmp_path, capsys):
    out = tmp_path / "bench"
    assert run(parse([STUDENT, "--runtime", "both", "--ort-int8", "--dataset", "digits", "--out", str(out),
                      *QUICK, "--batch-size", "64"])) == 0  # 6 evaluation batches per runtime, not 90
    printed = capsys.readouterr().out
    assert "Runtime" in printed and "vs torch" in printed and "Stored MiB" in printed and "Bits" in printed
    assert "onnxruntime-int8" in printed and "intra_op_num_threads" in printed
    records = read_records(out / "bench.json")
    assert [record.runtime for record in records] == ["torch", "onnxruntime", "onnxruntime-int8"]
    torch_record, onnx_record, int8_record = records
    assert onnx_record.flops == torch_record.flops and onnx_record.params == torch_record.params
    assert onnx_record.threads == 1 and onnx_record.peak_memory_bytes is None
    for record in (onnx_record, int8_record):
        assert record.speedup_vs_torch == pytest.approx(torch_record.latency_ms_median / record.latency_ms_median)
        assert record.top1 is not None and 0 <= record.top1 <= 100
    assert onnx_record.top1 == pytest.approx(torch_record.top1, abs=0.3)  # same function, float32 round-off
    onnx_file, int8_file = sorted((out / "onnx").glob("*.onnx"), key=lambda path: ".int8." in path.name)
    assert onnx_record.stored_bytes == onnx_file.stat().st_size
    assert int8_record.stored_bytes == int8_file.stat().st_size
    assert int8_record.stored_bytes < onnx_record.stored_bytes
    assert [record.weight_bits for record in records] == [32, 32, 8]
    assert read_records(out / "bench.csv") == records
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_int8_without_onnxruntime_is_refused():
    with pytest.raises(ValueError, match="--ort-int8 needs --runtime onnxruntime or --runtime both"):
        run(parse([STUDENT, "--ort-int8", *QUICK]))


def test_under_torchrun_other_ranks_measure_and_write_nothing(tmp_path, monkeypatch, capsys):
    from vitkd.cli import main

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["bench", STUDENT, "--out", str(tmp_path / "bench"), *QUICK]) == 0
    assert not (tmp_path / "bench").exists()
    assert capsys.readouterr() == ("", "")


def test_under_torchrun_rank_0_measures_and_says_the_others_were_idle(tmp_path, monkeypatch, capsys):
    from vitkd.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["bench", STUDENT, "--out", str(tmp_path / "bench"), *QUICK]) == 0
    assert (tmp_path / "bench" / "bench.json").is_file()
    idle = [line for line in capsys.readouterr().err.splitlines() if "idle" in line]
    assert idle == ["vitkd bench: only rank 0 measures; the other processes of this launch (1) stay idle "
                    "(timings with processes competing for the cores would not mean anything)"]
