import json

import pytest
import timm
import torch

from vitkd.downstream.backbones import build_backbone, load_student
from vitkd.engine.checkpoint import export_student
from vitkd.errors import CheckpointError, ConfigError

from tiny_students import TINY_VIT

NAME = "vit_tiny_patch16_224"


def _export(tmp_path, **extra_info):
    trained = timm.create_model(NAME, pretrained=False, num_classes=10, **TINY_VIT)
    export_student(trained, tmp_path / "run" / "export", NAME, {**TINY_VIT, "num_classes": 10}, extra_info)
    return trained


def test_from_a_run_directory_with_its_normalisation(tmp_path):
    trained = _export(tmp_path, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    student = load_student(weights=str(tmp_path / "run"), drop_path_rate=0.1)
    assert student.name == NAME and student.kwargs["drop_path_rate"] == 0.1
    assert (student.mean, student.std) == ((0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(student.model.blocks[1].mlp.fc1.weight, trained.blocks[1].mlp.fc1.weight)
    assert student.model.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)  # timm's linear rule: last block
    backbone = build_backbone(student.model)
    torch.testing.assert_close(backbone.body.patch_embed.proj.weight, trained.patch_embed.proj.weight)


def test_from_a_checkpoint_file(tmp_path):
    trained = timm.create_model(NAME, pretrained=False, **TINY_VIT)
    torch.save(trained.state_dict(), tmp_path / "student.pt")
    student = load_student(NAME, dict(TINY_VIT), weights=str(tmp_path / "student.pt"))
    torch.testing.assert_close(student.model.pos_embed, trained.pos_embed)
    assert student.mean == tuple(trained.pretrained_cfg["mean"])  # no export: the timm default config's


def test_a_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    other = timm.create_model(NAME, pretrained=False, **{**TINY_VIT, "depth": 3})
    torch.save(other.state_dict(), tmp_path / "deeper.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \[blocks\.2\.") as error:
        load_student(NAME, dict(TINY_VIT), weights=str(tmp_path / "deeper.pt"))
    assert "deeper.pt" in str(error.value)


def test_a_run_directory_of_another_model_than_named(tmp_path):
    _export(tmp_path)
    with pytest.raises(CheckpointError, match="holds a 'vit_tiny_patch16_224' student, but student.name is "
                                              "'deit_tiny_patch16_224'"):
        load_student("deit_tiny_patch16_224", weights=str(tmp_path / "run"))


def test_random_initialisation_needs_a_name():
    assert load_student(NAME, dict(TINY_VIT)).weights is None
    with pytest.raises(ConfigError, match="student.name is required"):
        load_student()


def test_export_info_kwargs_are_read(tmp_path):
    _export(tmp_path)
    info = json.loads((tmp_path / "run" / "export" / "student.json").read_text())
    assert load_student(weights=str(tmp_path / "run")).kwargs == info["kwargs"]
