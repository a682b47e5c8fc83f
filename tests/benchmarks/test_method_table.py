"""benchmarks/method_table.py: a tiny end-to-end table (2 seeds, 3 methods, 2 steps an epoch) and its arithmetic."""

import json
import statistics

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def method_table():
    return load_benchmark("method_table")


def _tiny_argv(tmp_path):
    return ["--epochs-scale", "0.05", "--seeds", "0", "1", "--methods", "nkd", "logit_kd",
            "--set", "train.max_steps_per_epoch=2", "--set", "train.progress=false",
            "--output-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]


def test_tiny_table_rows_statistics_and_ratios(method_table, tmp_path, capsys):
    assert method_table.main(_tiny_argv(tmp_path)) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "results" / "method_table.json").read_text())
    report = (tmp_path / "results" / "method_table.md").read_text()
    assert report in printed  # the Markdown table is printed too

    methods = result["methods"]
    assert list(methods) == ["vit_plain", "logit_kd", "nkd"]  # table order; the no-KD reference is always added
    assert result["skipped"] == {} and result["settings"]["seeds"] == [0, 1]
    runs_dir = tmp_path / "runs" / "demo"
    assert (runs_dir / "teacher_cnn" / "summary.json").is_file()  # the shared teacher, trained once
    assert not (runs_dir / "logit_kd").exists()  # no ViT teacher needed without attention/hidden

    # Per-seed values come from each run's own files: top-1 from summary.json, step time from metrics.jsonl.
    for name, entry in methods.items():
        for seed in ("0", "1"):
            run_dir = runs_dir / f"table_{name}_seed{seed}"
            summary = json.loads((run_dir / "summary.json").read_text())
            epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            assert entry["top1"][seed] == summary["top1"] and summary["epochs"] == 1 and len(epochs) == 1
            run = entry["runs"][seed]
            assert run["steps"] == 2 and run["steps_per_epoch"] == 2 and run["trained_in_this_invocation"]
            assert entry["step_time_s"][seed] == pytest.approx(epochs[0]["train/epoch_time_s"] / 2)
        top1 = list(entry["top1"].values())
        assert entry["top1_mean"] == pytest.approx(statistics.fmean(top1))
        assert entry["top1_std"] == pytest.approx(statistics.stdev(top1))
        assert entry["step_time_median_s"] == pytest.approx(statistics.median(entry["step_time_s"].values()))

    plain, kd, nkd = methods["vit_plain"], methods["logit_kd"], methods["nkd"]
    assert nkd["top1_ratio_to_logit_kd"] == pytest.approx(nkd["top1_mean"] / kd["top1_mean"])
    assert nkd["step_time_ratio_to_logit_kd"] == pytest.approx(nkd["step_time_median_s"] / kd["step_time_median_s"])
    assert kd["top1_ratio_to_logit_kd"] == pytest.approx(1.0) and kd["step_time_ratio_to_logit_kd"] == pytest.approx(1)
    assert nkd["beats_no_kd"] == (nkd["top1_mean"] > plain["top1_mean"]) and "beats_no_kd" not in plain
    assert nkd["mean_gain_vs_no_kd"] == pytest.approx(nkd["top1_mean"] - plain["top1_mean"])

    lines = {line.split(" | ")[1]: line for line in report.splitlines() if line.startswith("| ") and " | " in line}
    assert set(lines) == {"recipe", "vit_plain", "logit_kd", "nkd"}
    row = lines["nkd"]
    assert f"| {nkd['top1_mean']:.2f} ± {nkd['top1_std']:.2f} |" in row
    assert f"| {nkd['top1_ratio_to_logit_kd']:.3f} | {nkd['step_time_median_s'] * 1e3:.1f} | " \
           f"{nkd['step_time_ratio_to_logit_kd']:.2f} |" in row
    assert f"| {'yes' if nkd['beats_no_kd'] else 'no'} ({nkd['mean_gain_vs_no_kd']:+.2f}) |" in row
    assert "| (reference) |" in lines["vit_plain"]

    # A second invocation reuses every finished run: same numbers, nothing retrained.
    assert method_table.main(_tiny_argv(tmp_path)) == 0
    again = json.loads((tmp_path / "results" / "method_table.json").read_text())["methods"]
    for name, entry in again.items():
        assert entry["top1"] == methods[name]["top1"] and entry["step_time_s"] == methods[name]["step_time_s"]
        assert not any(run["trained_in_this_invocation"] for run in entry["runs"].values())


def test_summary_arithmetic_on_hand_made_runs(method_table):
    def runs(top1, step_ms):
        return {seed: {"top1": t, "step_time_s": s / 1e3} for seed, (t, s) in enumerate(zip(top1, step_ms))}

    methods = method_table.summarize_methods({
        "vit_plain": runs([90.0, 92.0, 91.0], [10.0, 12.0, 11.0]),
        "logit_kd": runs([96.0, 95.0, 97.0], [20.0, 30.0, 22.0]),
        "dist": runs([89.0, 93.0, 90.0], [21.0, 24.0, 33.0]),
    })
    dist = methods["dist"]
    assert dist["top1_mean"] == pytest.approx(272 / 3) and dist["top1_std"] == pytest.approx((13 / 3) ** 0.5)
    assert dist["beats_no_kd"] is False and dist["mean_gain_vs_no_kd"] == pytest.approx(-1 / 3)
    assert dist["seeds_better_than_no_kd"] == 1  # 93 > 92 at seed 1 only
    assert dist["top1_ratio_to_logit_kd"] == pytest.approx(272 / 3 / 96.0)
    assert dist["step_time_ratio_to_logit_kd"] == pytest.approx(24.0 / 22.0)  # medians, not means
    assert methods["logit_kd"]["beats_no_kd"] is True
    table = method_table.format_table(methods)
    assert "| 90.67 ± 2.08 | 89.00, 93.00, 90.00 | no (-0.33) | 1/3 | 0.944 | 24.0 | 1.09 |" in table
    with pytest.raises(ValueError, match="logit_kd"):
        method_table.summarize_methods({"vit_plain": runs([90.0], [10.0])})


def test_embedding_row_is_skipped_with_a_reason(method_table, tmp_path, monkeypatch):
    monkeypatch.setattr(method_table, "demo_recipes_dir", lambda: tmp_path)
    builder, reason = method_table.embedding_builder()
    assert builder is None and "no recipe" in reason and "embedding.yaml" in reason
    (tmp_path / "embedding.yaml").write_text("base: base.yaml\n")

    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(method_table.importlib, "import_module", missing)
    builder, reason = method_table.embedding_builder()
    assert builder is None and "vitkd.cache.embedding_job cannot be imported" in reason


def test_embedding_store_parameter_is_found_in_the_loss_terms(method_table):
    from types import SimpleNamespace

    from vitkd.config import LossTermConfig

    recipe = SimpleNamespace(losses=[LossTermConfig("ce"), LossTermConfig("embedding", 1.0, {"store": "runs/demo/e"})])
    assert method_table.embedding_store_parameter(recipe) == (1, "store", "runs/demo/e")
    assert method_table.embedding_store_parameter(SimpleNamespace(losses=[LossTermConfig("ce")])) is None
