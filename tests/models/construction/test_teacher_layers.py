import pytest
import timm
import torch

from vitkd.errors import ConfigError
from vitkd.models.construction.teacher_layers import choose_teacher_layers, init_from_teacher_layers

VIT = "vit_tiny_patch16_224"
SIZE = {"img_size": 16, "patch_size": 4, "num_heads": 2, "num_classes": 10}


def _vit(depth: int, embed_dim: int = 32, **extra) -> torch.nn.Module:
    return timm.create_model(VIT, pretrained=False, depth=depth, embed_dim=embed_dim, **SIZE, **extra).eval()


def test_layer_choices_by_hand():
    assert choose_teacher_layers("every_other", 6, 12) == [1, 3, 5, 7, 9, 11]
    assert choose_teacher_layers("uniform", 6, 12) == [1, 3, 5, 7, 9, 11]
    assert choose_teacher_layers("uniform", 3, 12) == [3, 7, 11]
    assert choose_teacher_layers("every_other", 3, 6) == [1, 3, 5]
    assert choose_teacher_layers("first", 3, 6) == [0, 1, 2]
    assert choose_teacher_layers([0, -1], 2, 6) == [0, 5]


@pytest.mark.parametrize("layers,message", [
    ([0, 1, 2], r"names 3 teacher blocks but the student has 2"),
    ([0, 9], r"layer index 9 is out of range for depth 6"),
    ("every_other", r"every_other needs a teacher of at least 7 blocks"),
])
def test_layer_choices_that_do_not_fit(layers, message):
    depth = 4 if layers == "every_other" else 2
    with pytest.raises(ConfigError, match=message):
        choose_teacher_layers(layers, depth, 6)


def _truncated_teacher_forward(teacher, images, layers):
    x = teacher.norm_pre(teacher.patch_drop(teacher._pos_embed(teacher.patch_embed(images))))  # (B, 1 + N, D)
    for index in layers:
        x = teacher.blocks[index](x)
    return teacher.forward_head(teacher.norm(x))


def test_student_equals_the_teachers_forward_through_the_chosen_blocks():
    torch.manual_seed(0)
    teacher, student = _vit(6), _vit(3)
    layers = choose_teacher_layers("every_other", 3, 6)
    init_from_teacher_layers(student, teacher, layers)
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(student(images), _truncated_teacher_forward(teacher, images, layers))
    torch.testing.assert_close(student.cls_token, teacher.cls_token)
    torch.testing.assert_close(student.blocks[1].mlp.fc2.weight, teacher.blocks[3].mlp.fc2.weight)


def test_width_mismatch_names_both_widths():
    with pytest.raises(ConfigError, match=r"student's embed_dim is 16, the teacher's 32"):
        init_from_teacher_layers(_vit(2, embed_dim=16), _vit(4), [1, 3])


def test_other_architecture_is_refused_naming_the_tensor():
    with pytest.raises(ConfigError, match=r"student's reg_token .* no counterpart in the teacher"):
        init_from_teacher_layers(_vit(2, reg_tokens=2), _vit(4), [1, 3])
