"""benchmarks/detection_sampling.py on a quick setting: both detectors are timed, the counts are the ones each
uses, and the ratio is the ratio of the two medians."""

import json

import pytest

from conftest import load_benchmark


def test_quick_run_times_both_settings_and_reports_their_ratio(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    benchmark = load_benchmark("detection_sampling")
    assert benchmark.main(["--warmup", "1", "--steps-per-round", "1", "--min-rounds", "2", "--budget-s", "0.1",
                           "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "detection_sampling.json").read_text())
    defaults, tuned = result["rows"]
    assert defaults["setting"] == "torchvision defaults" and defaults["counts"]["box_batch_size_per_image"] == 512
    assert tuned["setting"] == "recipe counts" and tuned["counts"]["box_batch_size_per_image"] == 64
    assert defaults["rounds"] == tuned["rounds"] == 2
    assert result["default_over_recipe"] == pytest.approx(defaults["step_ms_median"] / tuned["step_ms_median"])
    assert "torchvision defaults / recipe counts" in (tmp_path / "out" / "detection_sampling.md").read_text()
