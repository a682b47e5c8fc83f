"""Feature distillation through the one trainer: ViTKD + ManifoldKD + logit KD composed in one recipe."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vitkd.config import load_recipe
from vitkd.engine.checkpoint import load_checkpoint
from vitkd.training import build_trainer

TEACHER = {"name": "vit_small_patch16_224",  # patch 2: an 8x8 token grid against the student's 4x4
           "kwargs": {"img_size": 16, "patch_size": 2, "embed_dim": 48, "depth": 4, "num_heads": 2}}
FEATURE_LOSSES = [{"name": "ce"}, {"name": "kd", "temperature": 1.0},
                  {"name": "vitkd", "teacher_layers": "auto", "reduction": "mean", "alpha": 1.0, "beta": 0.1},
                  {"name": "manifold", "student_layers": [0, 1], "teacher_layers": [1, 3], "k": 24}]


def short_run(tiny_recipe, name="features", epochs=1, steps=3, teacher=TEACHER, losses=FEATURE_LOSSES):
    raw = tiny_recipe(name=name, teacher=teacher, losses=losses)
    raw["train"].update(epochs=epochs, max_steps_per_epoch=steps)
    return load_recipe(raw=raw)


def test_vitkd_manifold_and_kd_train_together_and_only_the_student_is_exported(tiny_recipe):
    trainer = build_trainer(short_run(tiny_recipe))
    needs = trainer.task.objective.needs
    assert needs.teacher_layers == (1, 3) and needs.teacher_normed_layers == (3,) and needs.student_layers == (0, 1)
    teacher_before = {k: v.clone() for k, v in trainer.task.teacher.model.state_dict().items()}
    objective_before = {k: v.clone() for k, v in trainer.task.objective.state_dict().items()
                        if isinstance(v, torch.Tensor)}
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in trainer.task.objective.parameters())  # projections train with the student
    trainer.fit()

    line = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("ce", "kd", "vitkd", "vitkd/mimic", "vitkd/generation", "manifold", "manifold/intra",
                "manifold/inter", "manifold/random"):
        assert torch.isfinite(torch.tensor(line[f"train/{key}"])), key
    assert line["train/vitkd"] == pytest.approx(line["train/vitkd/mimic"] + line["train/vitkd/generation"], rel=1e-4)
    for key, value in trainer.task.teacher.model.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    changed = [k for k, v in trainer.task.objective.state_dict().items() if k in objective_before
               and not torch.equal(v, objective_before[k])]
    assert any("mimic_projections" in k for k in changed) and any("generation_block" in k for k in changed)

    exported = load_file(str(trainer.run_dir / "export" / "student.safetensors"))
    assert set(exported) == set(trainer.task.student.state_dict())  # no projection, mask token or generation block
    checkpoint = load_checkpoint(trainer.last_path)
    assert any(k.startswith("terms.2.loss.mimic_projections") for k in checkpoint["task"]["objective"])


def test_resume_replays_the_feature_terms_exactly(tiny_recipe, interrupt_training):
    losses = [{"name": "ce"}, {"name": "vitkd", "reduction": "mean", "alpha": 1.0, "beta": 1.0},
              {"name": "manifold", "student_layers": [0, 1], "k": 8}]
    teacher = {"name": TEACHER["name"], "kwargs": dict(TEACHER["kwargs"], patch_size=4)}
    straight = short_run(tiny_recipe, "straight", epochs=2, steps=1, teacher=teacher, losses=losses)
    build_trainer(straight).fit()

    interrupted = short_run(tiny_recipe, "interrupted", epochs=2, steps=1, teacher=teacher, losses=losses)
    disarm = interrupt_training(1)
    with pytest.raises(KeyboardInterrupt):
        build_trainer(interrupted).fit()
    disarm()
    build_trainer(interrupted, resume=True).fit()

    a = load_checkpoint(straight.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(interrupted.run_dir / "checkpoints" / "last.pt")
    for section_a, section_b in ((a["model"], b["model"]), (a["task"]["objective"], b["task"]["objective"])):
        for key, value in section_a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, section_b[key]), key


def test_cnn_teacher_read_through_forward_hooks(tiny_recipe):
    losses = [{"name": "ce"},
              {"name": "vitkd", "teacher_layers": ["features.2", "features.5"], "teacher_deep_layer": "features.7"},
              {"name": "manifold", "student_layers": [0, 1], "teacher_layers": ["features.5", "features.7"], "k": 8}]
    trainer = build_trainer(short_run(tiny_recipe, teacher={"name": "vitkd_small_cnn"}, steps=2, losses=losses))
    assert trainer.task.objective.needs.teacher_hooks == ("features.2", "features.5", "features.7")
    trainer.fit()
    line = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert torch.isfinite(torch.tensor([line["train/vitkd"], line["train/manifold"]])).all()
