"""Student construction through the recipe: `student.init` / `student.quantize` built by `build_student`, exported as a
plain timm model. Training a quantised student from teacher layers through the engine, with a feature term, and its
plain and packed exports are tested in tests/pipeline/test_runner.py."""

import json

import pytest
import timm
import torch

from tests.conftest import TINY_VIT_KWARGS
from vitkd.config import load_recipe
from vitkd.errors import ConfigError
from vitkd.models.construction import TheseusModel, build_student, plain_student
from vitkd.models.quantize import quantized_layers
from vitkd.models.quantize.layers import SplitBinaryLinear

VIT = "vit_tiny_patch16_224"
TEACHER = {"name": VIT, "kwargs": {**TINY_VIT_KWARGS, "depth": 4}}


def _student_config(tiny_recipe, **student):
    raw = tiny_recipe(teacher=dict(TEACHER))
    raw["student"].update(student)
    return load_recipe(raw=raw).student


def test_quantised_split_student_from_teacher_layers(tiny_recipe):
    config = _student_config(tiny_recipe, init={"layers": "every_other"}, quantize={"weight_bits": 1, "split": True})
    torch.manual_seed(0)
    teacher = timm.create_model(VIT, pretrained=False, num_classes=10, **TEACHER["kwargs"])
    model = build_student(config, {**config.kwargs, "num_classes": 10}, teacher)
    layers = quantized_layers(model)
    assert len(layers) == 8 and all(isinstance(layer, SplitBinaryLinear) for layer in layers.values())
    torch.testing.assert_close(model.cls_token, teacher.cls_token)
    plain = plain_student(model)
    assert not quantized_layers(plain) and quantized_layers(model)  # a copy: the trained module is untouched
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(plain.eval()(images), model.eval()(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("student,message", [
    ({"init": {"layers": "every_other"}, "checkpoint": "x.pt"}, r"student.init copies the teacher's weights"),
    ({"init": {"layers": "sparse"}}, r"student.init.layers: 'sparse' is not valid"),
    ({"quantize": {"weight_bits": 3}}, r"student.quantize.weight_bits: 3 is not valid"),
    ({"quantize": {"weight_bits": 1, "layers": ["head"]}}, r"student.quantize.layers: \['head'\] is not valid"),
    ({"quantize": {"weight_bits": 2, "split": True}}, r"split makes a 1-bit student.*weight_bits: 1"),
])
def test_bad_construction_values_are_refused(tiny_recipe, student, message):
    with pytest.raises(ConfigError, match=message):
        _student_config(tiny_recipe, **student)


def test_init_without_teacher_is_refused(tiny_recipe):
    config = _student_config(tiny_recipe, init={"layers": "first"})
    with pytest.raises(ConfigError, match=r"student.init builds the student from the teacher's weights"):
        build_student(config, {**config.kwargs, "num_classes": 10}, None)


def test_theseus_export_is_the_successor_only_plain_timm_student(tmp_path):
    from vitkd.engine.checkpoint import export_student

    torch.manual_seed(0)
    teacher = timm.create_model(VIT, pretrained=False, num_classes=10, **TEACHER["kwargs"])
    config = load_recipe(raw={"name": "t", "student": {"name": VIT, "kwargs": dict(TINY_VIT_KWARGS), "init": {
        "method": "theseus", "layers": "first"}}}).student
    model = build_student(config, {**config.kwargs, "num_classes": 10}, teacher)
    assert isinstance(model, TheseusModel) and model.module_size == 2
    model.train()(torch.randn(2, 3, 16, 16)).sum().backward()  # a training step through the mixed path
    export_student(plain_student(model), tmp_path, VIT, {**TINY_VIT_KWARGS, "num_classes": 10})
    student = timm.create_model(VIT, pretrained=False, num_classes=10, **TINY_VIT_KWARGS,
                                checkpoint_path=str(tmp_path / "student.safetensors"))
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(student.eval()(images), model.eval()(images))


@pytest.mark.slow
def test_theseus_student_trains_and_exports_the_successors_only(tiny_recipe):
    from vitkd.training import build_trainer

    raw = tiny_recipe(teacher=dict(TEACHER), losses=[{"name": "ce"}, {"name": "kd"}])
    raw["student"].update(init={"method": "theseus", "layers": "first", "schedule": "constant",
                                "replacing_rate": 0.5, "constant_steps": 2})
    raw["train"].update(epochs=1, max_steps_per_epoch=3)
    trainer = build_trainer(load_recipe(raw=raw))
    assert isinstance(trainer.task.model, TheseusModel)
    trainer.fit()
    assert int(trainer.task.model.step) == 3
    export = trainer.run_dir / "export"
    student = timm.create_model(VIT, pretrained=False, num_classes=10, **TINY_VIT_KWARGS,
                                checkpoint_path=str(export / "student.safetensors"))
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(student.eval()(images), trainer.task.model.eval()(images))
    assert json.loads((export / "student.json").read_text())["kwargs"]["depth"] == 2


def test_theseus_refuses_terms_that_tap_blocks(tiny_recipe):
    from vitkd.training import build_trainer

    raw = tiny_recipe(teacher=dict(TEACHER), losses=[{"name": "ce"}, {"name": "hidden", "teacher_layers": "uniform"}])
    raw["student"].update(init={"method": "theseus", "layers": "first"})
    with pytest.raises(ConfigError, match=r"swaps during training"):
        build_trainer(load_recipe(raw=raw))
