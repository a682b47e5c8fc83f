"""`vitkd demo` end to end at a smoke-test budget: every row trains, is profiled and lands in the report."""

import json

from vitkd.demo import DEMO_ROWS, run_demo


def test_demo_writes_report_table_and_plot(tmp_path):
    rows = run_demo(str(tmp_path), epochs_scale=0.01, extra_overrides=["train.max_steps_per_epoch=3",
                                                                       "train.progress=false"])
    assert [row["method"] for row in rows] == [row.method for row in DEMO_ROWS]
    demo_dir = tmp_path / "demo"
    saved = json.loads((demo_dir / "report.json").read_text())
    assert saved == rows
    for row in rows:
        assert row["epochs"] == 1 and row["params"] > 0 and row["flops"] > 0 and row["latency_ms"] > 0
        assert 0.0 <= row["top1"] <= 100.0
    report = (demo_dir / "report.md").read_text()
    assert all(row["method"] in report for row in rows) and "| FLOPs |" in report
    assert (demo_dir / "tradeoffs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second run reuses every finished row instead of retraining it.
    again = run_demo(str(tmp_path), epochs_scale=0.01, extra_overrides=["train.max_steps_per_epoch=3",
                                                                        "train.progress=false"])
    assert [row["wall_time_s"] for row in again] == [row["wall_time_s"] for row in rows]
