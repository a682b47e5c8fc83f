"""Model building by timm name, local weights, the frozen teacher."""

import pytest
import torch
from safetensors.torch import save_file

from vitkd.errors import ConfigError
from vitkd.models import (CheckpointError, FrozenTeacher, build_model, describe_model, load_model_from_path,
                          load_weights)

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}


def test_build_by_name_with_kwargs_is_not_pretrained():
    model = build_model("vit_tiny_patch16_224", TINY)
    info = describe_model(model)
    assert info == {"num_classes": 10, "depth": 2, "embed_dim": 32, "num_prefix_tokens": 1, "grid_size": (4, 4)}
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_unknown_name_and_bad_kwargs():
    with pytest.raises(ConfigError, match="unknown model 'vit_tinny_patch16_224'"):
        build_model("vit_tinny_patch16_224")
    with pytest.raises(ConfigError, match=r"model 'vitkd_small_cnn' rejected its kwargs"):
        build_model("vitkd_small_cnn", {"depth": 3})


def test_weights_round_trip_and_architecture_mismatch(tmp_path):
    source = build_model("vit_tiny_patch16_224", TINY)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path),
              metadata={"model_name": "vit_tiny_patch16_224"})
    target = build_model("vit_tiny_patch16_224", TINY, checkpoint=str(path))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    wider = dict(TINY, embed_dim=48)
    with pytest.raises(CheckpointError, match=r"does not fit model 'vit_tiny_patch16_224': shape mismatches"):
        build_model("vit_tiny_patch16_224", wider, checkpoint=str(path))
    with pytest.raises(CheckpointError, match=r"saved from model 'vit_tiny_patch16_224', not 'deit_tiny_patch16_224'"):
        load_weights(build_model("deit_tiny_patch16_224", TINY), path, "deit_tiny_patch16_224")


def test_torch_checkpoint_is_read_with_weights_only(tmp_path):
    model = build_model("vitkd_small_cnn", {"num_classes": 4})
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_name": "vitkd_small_cnn", "model_kwargs": {"num_classes": 4}}, path)
    rebuilt, info = load_model_from_path(path)
    assert info["model"] == "vitkd_small_cnn" and rebuilt.num_classes == 4

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError,
                       match=r"evil\.pt holds Python objects besides tensors \(it stores print\), which vitkd does not"):
        load_weights(model, tmp_path / "evil.pt")


def test_missing_checkpoint_and_empty_run_dir(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*absent\.pt does not exist"):
        build_model("vitkd_small_cnn", {}, checkpoint=str(tmp_path / "absent.pt"))
    with pytest.raises(CheckpointError, match=r"holds no vitkd weights; expected export/student\.safetensors"):
        build_model("vitkd_small_cnn", {}, checkpoint=str(tmp_path))


def test_frozen_teacher_stays_in_eval_and_gets_no_gradients():
    inner = build_model("vit_tiny_patch16_224", dict(TINY, drop_rate=0.5, drop_path_rate=0.5))
    teacher = FrozenTeacher(inner, (0.5,) * 3, (0.5,) * 3)
    parent = torch.nn.ModuleDict({"teacher": teacher})
    parent.train()
    assert not inner.training and all(not m.training for m in inner.modules())
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    first, second = teacher(x), teacher(x)
    assert torch.equal(first, second)  # dropout and drop-path are off
    assert not first.requires_grad and all(not p.requires_grad for p in inner.parameters())


def test_teacher_renormalisation():
    teacher = FrozenTeacher(torch.nn.Identity(), student_mean=(0.5,) * 3, student_std=(0.5,) * 3,
                            teacher_mean=(0.485, 0.456, 0.406), teacher_std=(0.229, 0.224, 0.225))
    pixels = torch.rand(1, 3, 2, 2)
    student_input = (pixels - 0.5) / 0.5
    expected = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(teacher.prepare_input(student_input), expected, atol=1e-6)
