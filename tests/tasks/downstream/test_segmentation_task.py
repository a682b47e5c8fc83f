"""End-to-end semantic segmentation fine-tunes on a subset of the digit scenes, through the engine: learning,
export, `vitkd finetune eval`, and an exact resume."""

import json

import pytest
import torch

from vitkd.config import load_recipe
from vitkd.engine.checkpoint import load_checkpoint
from vitkd.finetune import evaluate_run
from vitkd.training import build_trainer, train

from digit_scene_subsets import semantic_subset, written_digit_scenes

STUDENT = {"name": "vit_tiny_patch16_224",
           "kwargs": {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2}}


def recipe(output_dir, scenes, name):
    return load_recipe(raw={
        "name": name, "task": "semantic_segmentation", "student": STUDENT,
        "data": {"batch_size": 8, "eval_batch_size": 2, "num_workers": 0},
        "optim": {"lr": 3e-3, "warmup_epochs": 0, "weight_decay": 0.01},
        "train": {"epochs": 2, "output_dir": str(output_dir), "progress": False},
        "downstream": {"data": {"dataset": "semantic_folder", **scenes, "size": 64, "scale_range": [0.5, 1.0]},
                       "backbone": {"out_channels": 16, "layer_decay": 0.9},
                       "head": {"channels": 16, "dropout": 0.0}}})


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return semantic_subset(written_digit_scenes(), tmp_path_factory.mktemp("ade"), {"train": 16, "val": 2})


@pytest.fixture(scope="module")
def straight(tmp_path_factory, scenes):
    """An uninterrupted 2-epoch fine-tune: (trainer, metrics of the untrained model, summary)."""
    trainer = build_trainer(recipe(tmp_path_factory.mktemp("runs"), scenes, "straight"))
    untrained = trainer.task.evaluate(trainer.task.model, None)
    return trainer, untrained, trainer.fit()


def test_fine_tune_beats_the_untrained_model_exports_and_evaluates_again(straight):
    trainer, untrained, summary = straight
    assert summary["task"] == "semantic_segmentation" and summary["key_metric"] == "mIoU"
    assert summary["pixel_acc"] > untrained["pixel_acc"] + 0.2  # 11 classes, mostly background
    assert summary["mIoU"] > untrained["mIoU"]
    lines = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"val/mIoU", "val/pixel_acc", "train/loss"} <= set(lines[-1])
    info = json.loads((trainer.run_dir / "export" / "model.json").read_text())
    assert info["task"] == "semantic_segmentation" and info["num_classes"] == 11
    assert trainer.optimizer.param_groups[0]["lr_scale"] == pytest.approx(0.9 ** 3)  # stem: 3 layers below the top
    again = evaluate_run(trainer.run_dir, [], device="cpu")  # `vitkd finetune eval`: rebuilt from config.yaml
    assert again["epoch"] == summary["best_epoch"] and again["mIoU"] == pytest.approx(summary["best_mIoU"])


def test_vitkd_eval_of_a_fine_tuning_run_evaluates_it_as_its_task(straight, capsys):
    from vitkd.cli import main

    trainer, _, summary = straight
    assert main(["eval", str(trainer.run_dir), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "semantic_segmentation" and printed["mIoU"] == pytest.approx(summary["best_mIoU"])


def test_resume_gives_the_weights_of_an_uninterrupted_run(straight, scenes, tmp_path, interrupt_training):
    disarm = interrupt_training(1)
    with pytest.raises(KeyboardInterrupt):
        train(recipe(tmp_path, scenes, "straight"))  # same name and recipe as the uninterrupted run, other folder
    disarm()
    train(recipe(tmp_path, scenes, "straight"), resume=True)
    expected = load_checkpoint(straight[0].run_dir / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)


def test_sliding_window_evaluation_of_a_fine_tuned_run(straight):
    """`downstream.inference.mode=slide` at evaluation: one window as large as the 128-pixel validation scenes is
    whole-image inference exactly; the fine-tune's 64-pixel crops every 43 pixels (two thirds, 3 x 3 windows) score
    the same scenes window by window (with other figures: each window gets the 64-pixel position embedding)."""
    trainer, _, _ = straight
    whole = evaluate_run(trainer.run_dir, [], device="cpu")
    one_window = evaluate_run(trainer.run_dir, ["downstream.inference.mode=slide", "downstream.inference.crop=128"],
                              device="cpu")
    assert one_window["mIoU"] == whole["mIoU"] and one_window["pixel_acc"] == whole["pixel_acc"]
    windows = evaluate_run(trainer.run_dir, ["downstream.inference.mode=slide"], device="cpu")
    assert 0.0 < windows["pixel_acc"] <= 1.0 and 0.0 < windows["mIoU"] <= 1.0
    assert windows["pixel_acc"] != whole["pixel_acc"]  # 3 x 3 windows: not the whole-image forward
