"""`vitkd demo` end to end at a smoke-test budget: every row trains, is profiled and lands in the report."""

import json
from pathlib import Path

import vitkd.config
import vitkd.demo
from vitkd.demo import DEMO_ROWS, demo_recipe, demo_recipes_dir, run_demo
from vitkd.shipped_recipes import recipes_dir


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
    vit_rows = [row for row in rows if row["model"] == "vit_tiny_patch16_224"]  # one architecture, five methods
    assert vit_rows[0]["latency_measured_with"] is None
    assert all(row["latency_measured_with"] == vit_rows[0]["run"] for row in vit_rows[1:])
    assert {row["latency_ms"] for row in vit_rows} == {vit_rows[0]["latency_ms"]}  # one shared measurement
    assert f"{vit_rows[1]['run']} uses {vit_rows[0]['run']}" in report and report.count("*") >= len(vit_rows) - 1
    assert (demo_dir / "tradeoffs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second run reuses every finished row instead of retraining it.
    again = run_demo(str(tmp_path), epochs_scale=0.01, extra_overrides=["train.max_steps_per_epoch=3",
                                                                        "train.progress=false"])
    assert [row["wall_time_s"] for row in again] == [row["wall_time_s"] for row in rows]


def test_demo_recipe_reads_its_file_once_and_moves_every_path_under_the_demo_dir(tmp_path, monkeypatch):
    reads = []
    load_raw_recipe = vitkd.config.load_raw_recipe

    def counting(path, *args, **kwargs):
        reads.append(Path(path).name)
        return load_raw_recipe(path, *args, **kwargs)

    monkeypatch.setattr(vitkd.config, "load_raw_recipe", counting)  # also what load_recipe(path) would call
    monkeypatch.setattr(vitkd.demo, "load_raw_recipe", counting)
    demo_dir = tmp_path / "demo"
    recipe = demo_recipe("cached_kd.yaml", demo_dir, epochs_scale=0.1, extra_overrides=["train.seed=3"])
    assert reads.count("cached_kd.yaml") == 1 and reads.count("base.yaml") == 1
    assert demo_recipes_dir() == recipes_dir() / "demo"  # the shipped recipes, from any install
    assert recipe.name == "cached_kd" and recipe.train.epochs == 2 and recipe.train.seed == 3
    assert recipe.train.output_dir == str(demo_dir) and recipe.run_dir == demo_dir / "cached_kd"
    assert recipe.teacher.checkpoint == str(demo_dir / "teacher_cnn")
    assert recipe.teacher.cache == str(demo_dir / "cache_teacher_cnn")
    assert all(term.weight is not None for term in recipe.losses)  # resolved, as the trainer records it
    overridden = demo_recipe("vit_plain.yaml", demo_dir, extra_overrides=["train.epochs=5", "name=other"])
    assert overridden.train.epochs == 5 and overridden.name == "other"  # extra overrides win
