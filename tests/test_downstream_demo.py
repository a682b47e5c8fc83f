"""`vitkd demo downstream`: which students it fine-tunes, what it trains or reuses, the table and the CLI word.

Training is replaced by a fake that writes a finished run (config.yaml + summary.json) as the engine does, so these
tests check the demo's decisions in seconds; the backbone cost is counted for real on the demo's architecture.
"""

import json

import pytest

from vitkd import cli, downstream_demo, training
from vitkd.config import dump_recipe
from vitkd.demo import demo_recipe
from vitkd.downstream_demo import (FINE_TUNES, choose_distilled, finished_summary, format_table,
                                   run_downstream_demo)

SCALE = 0.05  # every classification row to 1 epoch, so the fake runs are cheap to describe


def write_finished_run(recipe, **metrics):
    """A run directory as the engine leaves a finished run of `recipe`."""
    recipe.run_dir.mkdir(parents=True, exist_ok=True)
    (recipe.run_dir / "config.yaml").write_text(dump_recipe(recipe))
    summary = {"name": recipe.name, "task": recipe.task, "epochs": recipe.train.epochs, "params": 1234,
               "images_per_s": 10.0, "wall_time_s": 3.0, **metrics}
    (recipe.run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


@pytest.fixture
def fake_train(monkeypatch):
    """Replace the engine: record each trained recipe's name and write a finished run with made-up metrics."""
    trained = []

    def train(recipe, resume=False):
        trained.append(recipe.name)
        if recipe.task == "classification":
            return write_finished_run(recipe, top1=50.0, top5=90.0)
        if recipe.task == "detection":
            return write_finished_run(recipe, box_AP=0.25, box_AP50=0.5)
        return write_finished_run(recipe, mIoU=0.125, pixel_acc=0.875)

    monkeypatch.setattr(training, "train", train)
    return trained


@pytest.fixture
def fake_cost(monkeypatch):
    """Skip counting the backbone's FLOPs (one test counts them for real)."""
    monkeypatch.setattr(downstream_demo, "backbone_cost", lambda recipe: (1, 2))


def test_missing_runs_train_only_plain_the_default_distilled_row_and_its_teacher(tmp_path, fake_train, fake_cost):
    rows = run_downstream_demo(str(tmp_path), epochs_scale=SCALE)

    classification = [name for name in fake_train if not name.startswith(("det_", "seg_"))]
    assert classification == ["vit_plain", "teacher_cnn", "vitkd"]  # the teacher before the row that needs it
    assert sorted(name for name in fake_train if name not in classification) == sorted(
        f"{task}_{backbone}" for task in ("det", "seg") for backbone in ("untrained", "vit_plain", "vitkd"))
    assert [row["run"] for row in rows] == ["det_untrained", "det_vit_plain", "det_vitkd",
                                            "seg_untrained", "seg_vit_plain", "seg_vitkd"]


def test_best_finished_distilled_run_of_the_same_architecture_is_chosen_and_reused(tmp_path, fake_train):
    demo_dir = tmp_path / "demo"
    for recipe_file, top1 in [("teacher_cnn.yaml", 99.0), ("vit_plain.yaml", 90.0), ("deit_hard.yaml", 99.5),
                              ("logit_kd.yaml", 97.0), ("vitkd.yaml", 96.0)]:
        write_finished_run(demo_recipe(recipe_file, demo_dir, SCALE), top1=top1, top5=100.0)
    # deit_hard scores higher but has a distillation token (another architecture): not a backbone to compare
    assert choose_distilled(demo_dir, SCALE)[0].recipe == "logit_kd.yaml"

    rows = run_downstream_demo(str(tmp_path), epochs_scale=SCALE)
    assert not [name for name in fake_train if not name.startswith(("det_", "seg_"))]  # every needed run reused
    assert {row["run"] for row in rows} == {f"{t}_{b}" for t in ("det", "seg")
                                            for b in ("untrained", "vit_plain", "logit_kd")}
    by_run = {row["run"]: row for row in rows}
    assert by_run["det_logit_kd"]["top1"] == 97.0 and by_run["det_vit_plain"]["top1"] == 90.0
    assert by_run["det_untrained"]["top1"] is None and by_run["det_untrained"]["student_weights"] is None
    assert by_run["seg_logit_kd"]["student_weights"] == str(demo_dir / "logit_kd")
    assert by_run["det_vit_plain"]["box_AP"] == 0.25 and by_run["seg_vit_plain"]["mIoU"] == 0.125
    # the backbone (ViT + pyramid, 64x64) counted for real: more than the ViT's own 16x16 cost, same for all rows
    assert len({row["backbone_flops"] for row in rows}) == 1 and rows[0]["backbone_flops"] > 50e6

    report = (tmp_path / "demo_downstream" / "report.md").read_text()
    for column in ("task", "backbone", "pre-trained with", "box AP (%)", "mIoU (%)", "params (model)",
                   "backbone FLOPs @ fine-tune size", "train img/s"):
        assert f"| {column} |" in report
    assert "| 25.00 | 50.00 | - | - |" in report  # a detection row: box AP and AP50 in percent, no mIoU
    assert json.loads((tmp_path / "demo_downstream" / "report.json").read_text()) == rows

    fake_train.clear()
    again = run_downstream_demo(str(tmp_path), epochs_scale=SCALE)
    assert fake_train == [] and again == rows  # a second call reuses every finished fine-tune


def test_fresh_retrains_the_fine_tunes_not_the_classification_runs(tmp_path, fake_train, fake_cost):
    run_downstream_demo(str(tmp_path), epochs_scale=SCALE)
    fake_train.clear()
    run_downstream_demo(str(tmp_path), epochs_scale=SCALE, fresh=True)
    assert len(fake_train) == 6 and all(name.startswith(("det_", "seg_")) for name in fake_train)


def test_a_run_with_other_epochs_is_not_taken_as_finished(tmp_path):
    recipe = demo_recipe("vit_plain.yaml", tmp_path, SCALE)
    write_finished_run(recipe, top1=90.0)
    assert finished_summary(recipe, "top1")["top1"] == 90.0
    assert finished_summary(demo_recipe("vit_plain.yaml", tmp_path, 0.5), "top1") is None  # 10 epochs, not 1
    assert finished_summary(recipe, "mIoU") is None


def test_table_has_one_line_per_row():
    row = {"task": FINE_TUNES[1].label, "model": "vit_tiny_patch16_224", "method": "no distillation", "top1": 91.5,
           "mIoU": 0.1244, "pixel_acc": 0.8935, "params": 909547, "backbone_params": 649888,
           "backbone_flops": 180.7e6, "size": 64, "images_per_s": 12.5, "wall_time_s": 41.2}
    table = format_table([row])
    assert table.splitlines()[2] == ("| semantic segmentation (Semantic FPN) | vit_tiny_patch16_224 | no distillation "
                                     "| 91.50 | - | - | 12.44 | 89.35 | 909,547 | 649,888 | 180.7 M (64x64) | 12.5 "
                                     "| 41 |")


@pytest.mark.parametrize("argv, expected", [
    (["demo"], "classification"), (["demo", "classification"], "classification"),
    (["demo", "downstream"], "downstream")])
def test_cli_word_picks_the_demo(argv, expected, monkeypatch, tmp_path):
    import vitkd.demo
    import vitkd.downstream_demo

    calls = []
    monkeypatch.setattr(vitkd.demo, "run_demo", lambda **kwargs: calls.append(("classification", kwargs)))
    monkeypatch.setattr(vitkd.downstream_demo, "run_downstream_demo",
                        lambda **kwargs: calls.append(("downstream", kwargs)))
    assert cli.main([*argv, "--output-dir", str(tmp_path), "--epochs-scale", "0.5", "--fresh"]) == 0
    assert calls == [(expected, {"output_dir": str(tmp_path), "epochs_scale": 0.5, "fresh": True})]


def test_finetune_epochs_scale_lengthens_the_fine_tunes_and_reuses_the_classification_runs(
        tmp_path, fake_train, fake_cost):
    run_downstream_demo(str(tmp_path), epochs_scale=SCALE)
    fake_train.clear()
    rows = run_downstream_demo(str(tmp_path), epochs_scale=SCALE, finetune_epochs_scale=40)
    assert sorted(fake_train) == sorted(f"{task}_{backbone}_x40" for task in ("det", "seg")
                                        for backbone in ("untrained", "vit_plain", "vitkd"))  # no classification run
    assert {row["epochs"] for row in rows} == {2}  # demo_det and demo_seg: 1 epoch each, x 0.05 x 40
    out = tmp_path / "demo_downstream"
    assert (out / "report_x40.md").is_file() and (out / "report.md").is_file()  # both budgets' reports stay
    assert (out / "det_untrained" / "summary.json").is_file()  # and the standard budget's runs


def test_cli_passes_finetune_epochs_scale_to_the_downstream_demo_only(monkeypatch, tmp_path, capsys):
    import vitkd.downstream_demo

    calls = []
    monkeypatch.setattr(vitkd.downstream_demo, "run_downstream_demo", lambda **kwargs: calls.append(kwargs))
    assert cli.main(["demo", "downstream", "--output-dir", str(tmp_path), "--finetune-epochs-scale", "3"]) == 0
    assert calls == [{"output_dir": str(tmp_path), "epochs_scale": 1.0, "fresh": False, "finetune_epochs_scale": 3.0}]
    assert cli.main(["demo", "--finetune-epochs-scale", "3"]) == 2
    assert "--finetune-epochs-scale applies to `vitkd demo downstream` only" in capsys.readouterr().err


def test_cli_refuses_an_unknown_demo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "segmentation"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'segmentation'" in capsys.readouterr().err


@pytest.mark.parametrize("run", ["det_untrained", "vit_plain"])
def test_a_run_of_another_recipe_in_the_way_is_refused_not_overwritten(tmp_path, fake_train, fake_cost, run):
    from vitkd.errors import ConfigError

    run_downstream_demo(str(tmp_path), epochs_scale=SCALE)
    folder = tmp_path / ("demo_downstream" if run.startswith("det_") else "demo") / run
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 1"))  # another recipe's finished run
    summary = (folder / "summary.json").read_text()
    fake_train.clear()
    with pytest.raises(ConfigError, match=rf"{run} holds a run of a different recipe; rerun the demo with --fresh"):
        run_downstream_demo(str(tmp_path), epochs_scale=SCALE)
    assert run not in fake_train and (folder / "summary.json").read_text() == summary
