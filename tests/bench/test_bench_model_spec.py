"""Model specs: the NAME:KEY=VALUE@CHECKPOINT syntax, checkpoint paths, and clear errors for bad specs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch
from safetensors.torch import save_file

from vitkd.bench import BenchInputError, UnknownModelError, build_from_spec, parse_model_spec

TINY_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 1, "num_classes": 10}
TINY_SPEC = "vit_tiny_patch16_224:img_size=32,patch_size=8,depth=1,num_classes=10"


def test_kwargs_are_read_as_yaml_values_and_brackets_keep_commas():
    spec = parse_model_spec("vit_tiny_patch16_224:img_size=32,patch_size=[8,8],global_pool=avg,drop_rate=0.1,"
                            "class_token=false")
    assert spec.name == "vit_tiny_patch16_224"
    assert spec.kwargs == {"img_size": 32, "patch_size": [8, 8], "global_pool": "avg", "drop_rate": 0.1,
                           "class_token": False}
    assert spec.checkpoint is None and spec.path is None


def test_built_model_follows_the_kwargs():
    built = build_from_spec(TINY_SPEC)
    assert built.model.num_classes == 10
    assert tuple(built.model.patch_embed.img_size) == (32, 32)
    assert len(built.model.blocks) == 1


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match=r"unknown model 'deit_tiny_patch16_22'.*deit_tiny_patch16_224"):
        build_from_spec("deit_tiny_patch16_22")


@pytest.mark.parametrize("text, message", [
    ("vit_tiny_patch16_224:img_size", "is not KEY=VALUE"),
    ("vit_tiny_patch16_22:img_size=32", "unknown model .vit_tiny_patch16_22. .in model spec"),
    ("vit_tiny_patch16_224:", "nothing after ':'"),
    ("vit_tiny_patch16_224:depth=1,depth=2", "given twice"),
    ("vit_tiny_patch16_224@missing.safetensors", "does not exist"),
    ("runs/nowhere/export", "no such file or directory"),
    ("", "empty model spec"),
])
def test_malformed_specs_say_what_is_wrong(text, message):
    with pytest.raises(BenchInputError, match=message):
        parse_model_spec(text)


def test_rejected_kwargs_name_the_spec():
    with pytest.raises(BenchInputError, match=r"resnet18:img_size=32"):
        build_from_spec("resnet18:img_size=32")


def test_checkpoint_after_at_sign_loads_its_weights(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_KWARGS)
    weights = tmp_path / "student.safetensors"
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(weights))
    built = build_from_spec(f"{TINY_SPEC}@{weights}")
    assert built.spec.checkpoint == weights
    assert torch.equal(built.model.head.weight, source.head.weight)


def test_a_checkpoint_path_that_records_its_model_is_a_spec(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_KWARGS)
    checkpoint = tmp_path / "last.pt"
    torch.save({"model": source.state_dict(), "model_name": "vit_tiny_patch16_224", "model_kwargs": TINY_KWARGS},
               checkpoint)
    built = build_from_spec(str(checkpoint))
    assert built.spec.path == checkpoint
    assert torch.equal(built.model.head.weight, source.head.weight)


def test_a_checkpoint_for_another_shape_is_a_clear_error(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_KWARGS)
    weights = tmp_path / "student.safetensors"
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(weights))
    with pytest.raises(BenchInputError, match=r"does not fit"):
        build_from_spec(f"vit_tiny_patch16_224:img_size=32,patch_size=8,depth=2,num_classes=10@{weights}")


def test_a_run_with_a_packed_export_builds_the_low_bit_student_with_its_activation_quantisers(tmp_path):
    from tests.bench.test_bench_suite import make_low_bit_run

    student, export = make_low_bit_run(tmp_path / "run", activation_bits=8)
    images = torch.randn(2, 3, 16, 16)
    for spec in (tmp_path / "run", export, export / "student.packed.safetensors"):
        built = build_from_spec(str(spec))
        assert built.packed_file == export / "student.packed.safetensors" and built.info["img_size"] == 16
        with torch.no_grad():
            torch.testing.assert_close(built.model.eval()(images), student.eval()(images), atol=1e-5, rtol=1e-5)
            assert not torch.equal(built.traceable_model.eval()(images), built.model(images))  # 8-bit activations
    float_export = build_from_spec(str(export / "student.safetensors"))
    assert float_export.packed_file is None and float_export.weights_file == export / "student.safetensors"
