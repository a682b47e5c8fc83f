"""The one trainer: learning, exact resume, checkpoints, export, teacher handling and clear refusals."""

import json

import pytest
import torch

from vitkd.config import load_recipe
from vitkd.errors import ConfigError
from vitkd.engine.checkpoint import load_checkpoint
from vitkd.training import build_trainer, train


def test_two_epochs_learn_above_chance_and_write_the_run_directory(tiny_recipe):
    # The small CNN: a ViT this small needs more than two epochs to leave chance on 1,437 images (slow ViT start).
    recipe = load_recipe(raw=tiny_recipe(student={"name": "vitkd_small_cnn"}))
    summary = train(recipe)
    assert summary["top1"] > 50.0  # chance is 10% on the ten digit classes
    run = recipe.run_dir
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert {"train/loss", "train/ce", "val/top1", "val/top5", "lr", "train/images_per_s"} <= set(lines[0])
    saved = json.loads((run / "summary.json").read_text())
    assert saved["best_epoch"] in (0, 1) and saved["top1"] == summary["top1"] and saved["images_per_s"] > 0
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    assert (run / "export" / "student.safetensors").is_file() and (run / "config.yaml").is_file()


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_final_weights(tiny_recipe, interrupt_training):
    sections = dict(losses=[{"name": "ce"}], train=None)
    raw = tiny_recipe(data=dict(tiny_recipe()["data"], mixup=0.8, cutmix=1.0, auto_augment="rand-m9-mstd0.5-inc1",
                                re_prob=0.25))
    raw["student"]["kwargs"]["drop_path_rate"] = 0.1
    base_train = dict(raw["train"], epochs=3, max_steps_per_epoch=6, ema=True, ema_decay=0.9)
    straight = load_recipe(raw=dict(raw, name="straight", train=base_train))
    train(straight)

    interrupted = load_recipe(raw=dict(raw, name="interrupted", train=base_train))
    disarm = interrupt_training(2, _Interrupt)  # killed as the third epoch starts
    with pytest.raises(_Interrupt):
        train(interrupted)
    assert load_checkpoint(interrupted.run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    disarm()
    train(interrupted, resume=True)

    a = load_checkpoint(straight.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(interrupted.run_dir / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["ema"].values(), b["ema"].values()))
    lines = (interrupted.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    del sections


def test_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(tiny_recipe):
    raw = tiny_recipe(train=dict(tiny_recipe()["train"], epochs=1, max_steps_per_epoch=1))
    recipe = load_recipe(raw=raw)
    with pytest.raises(ConfigError, match=r"--resume: no checkpoint at"):
        build_trainer(recipe, resume=True)
    train(recipe)
    with pytest.raises(ConfigError, match=r"already holds a checkpoint; pass --resume"):
        build_trainer(recipe)


def test_deit_student_with_online_teacher_trains_only_the_student(tiny_recipe):
    raw = tiny_recipe(student={"name": "deit_tiny_distilled_patch16_224",
                               "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                                          "num_heads": 2}},
                      teacher={"name": "vitkd_small_cnn", "kwargs": {"drop_rate": 0.5},
                               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                      losses=[{"name": "ce"}, {"name": "deit", "mode": "soft"}, {"name": "kd", "head": "dist"}])
    raw["train"].update(epochs=1, max_steps_per_epoch=3)
    trainer = build_trainer(load_recipe(raw=raw))
    teacher_before = {k: v.clone() for k, v in trainer.task.teacher.model.state_dict().items()}
    assert trainer.task.teacher.renormalize
    trainer.fit()
    assert not trainer.task.teacher.model.training
    for key, value in trainer.task.teacher.model.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key  # weights and BN statistics untouched
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    assert {"train/ce", "train/deit", "train/kd"} <= set(json.loads(lines[0]))


def test_refusals_before_training(tiny_recipe):
    with pytest.raises(ConfigError, match=r"losses \['kd'\] need a teacher"):
        build_trainer(load_recipe(raw=tiny_recipe(losses=[{"name": "ce"}, {"name": "kd"}])))
    with pytest.raises(ConfigError, match=r"the 'deit' loss needs a student with a distillation token"):
        build_trainer(load_recipe(raw=tiny_recipe(teacher={"name": "vitkd_small_cnn"},
                                            losses=[{"name": "ce"}, {"name": "deit"}])))
    raw = tiny_recipe()
    raw["student"]["kwargs"]["num_classes"] = 5
    with pytest.raises(ConfigError, match=r"student\.kwargs\.num_classes=5 but the dataset has 10 classes"):
        build_trainer(load_recipe(raw=raw))
