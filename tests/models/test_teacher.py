"""FrozenTeacher: never trains, never takes gradients, re-normalises the student's input; and its recipe builder."""

import pytest
import torch
from torch import nn

from vitkd.config import load_recipe
from vitkd.errors import ConfigError
from vitkd.models.small_cnn import SmallCNN
from vitkd.models.teacher import FrozenTeacher, build_frozen_teacher, student_normalization

STUDENT_MEAN, STUDENT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# per channel: another mean and std / the student's own / another std
TEACHER_MEAN, TEACHER_STD = (0.25, 0.5, 0.75), (0.25, 0.5, 1.0)


class Recorder(nn.Module):
    """Keeps the input it saw; dropout and batch norm show whether it runs in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(3, 4)
        self.seen = None

    def forward(self, x):
        self.seen = x
        return self.head(self.drop(self.norm(x).mean(dim=(2, 3))))


def test_train_true_keeps_the_teacher_in_eval_mode():
    teacher = FrozenTeacher(Recorder(), STUDENT_MEAN, STUDENT_STD)
    assert not teacher.model.training  # eval from construction
    parent = nn.ModuleDict({"student": nn.Linear(2, 2), "teacher": teacher})
    parent.train()
    assert parent.training and parent["student"].training and teacher.training  # the wrapper follows its parent
    assert not any(module.training for module in teacher.model.modules())  # the wrapped model never does
    assert teacher.train(True) is teacher
    assert not any(module.training for module in teacher.model.modules())


def test_forward_in_a_training_parent_uses_running_stats_and_no_dropout():
    model = Recorder()
    teacher = FrozenTeacher(model, STUDENT_MEAN, STUDENT_STD).train()
    before = model.norm.running_mean.clone(), model.norm.running_var.clone()
    images = torch.randn(8, 3, 4, 4) * 3 + 1
    first, second = teacher(images), teacher(images)
    assert torch.equal(first, second)  # dropout (p=0.5) is off: two forwards agree
    assert torch.equal(model.norm.running_mean, before[0]) and torch.equal(model.norm.running_var, before[1])
    with torch.no_grad():
        expected = model.head(model.norm(images).mean(dim=(2, 3)))  # the model's own eval-mode output
    assert torch.equal(first, expected)


def test_no_parameter_takes_gradients_and_outputs_are_detached():
    model = Recorder()
    teacher = FrozenTeacher(model, STUDENT_MEAN, STUDENT_STD, TEACHER_MEAN, TEACHER_STD)
    assert all(not parameter.requires_grad for parameter in model.parameters())
    images = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits = teacher(images)
    assert logits.shape == (2, 4) and not logits.requires_grad and logits.grad_fn is None


def test_renormalisation_matches_the_hand_computed_values():
    teacher = FrozenTeacher(Recorder(), STUDENT_MEAN, STUDENT_STD, TEACHER_MEAN, TEACHER_STD)
    assert teacher.renormalize
    # x_t = (x * std_s + mean_s - mean_t) / std_t, per channel, for x = 1 and x = -1:
    #   channel 0: (1 * 0.5 + 0.5 - 0.25) / 0.25 = 3.0     (-1 * 0.5 + 0.5 - 0.25) / 0.25 = -1.0
    #   channel 1: same normalisation, x unchanged           1.0 / -1.0
    #   channel 2: (1 * 0.5 + 0.5 - 0.75) / 1.0 = 0.25     (-1 * 0.5 + 0.5 - 0.75) / 1.0 = -0.75
    images = torch.tensor([1.0, -1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)  # (1, 3, 1, 2)
    expected = torch.tensor([[[[3.0, -1.0]], [[1.0, -1.0]], [[0.25, -0.75]]]])
    assert torch.equal(teacher.prepare_input(images), expected)
    teacher(images)
    assert torch.equal(teacher.model.seen, expected)  # what the wrapped model actually received


def test_renormalisation_of_imagenet_statistics_recovers_the_teacher_input():
    # pixels normalised with the student's statistics come out as if normalised with the teacher's
    mean_s, std_s, mean_t, std_t = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    teacher = FrozenTeacher(Recorder(), mean_s, std_s, mean_t, std_t)
    pixels = torch.rand(2, 3, 5, 5)
    as_student = (pixels - torch.tensor(mean_s).view(1, 3, 1, 1)) / torch.tensor(std_s).view(1, 3, 1, 1)
    as_teacher = (pixels - torch.tensor(mean_t).view(1, 3, 1, 1)) / torch.tensor(std_t).view(1, 3, 1, 1)
    torch.testing.assert_close(teacher.prepare_input(as_student), as_teacher)
    assert teacher.prepare_input(as_student.half()).dtype == torch.float16  # follows the input dtype


@pytest.mark.parametrize("teacher_mean, teacher_std", [(None, None), (STUDENT_MEAN, STUDENT_STD),
                                                       ([0.5, 0.5, 0.5], None)])
def test_matching_normalisations_pass_the_batch_through_untouched(teacher_mean, teacher_std):
    teacher = FrozenTeacher(Recorder(), STUDENT_MEAN, STUDENT_STD, teacher_mean, teacher_std)
    assert not teacher.renormalize
    images = torch.randn(2, 3, 4, 4)
    assert teacher.prepare_input(images) is images
    teacher(images)
    assert teacher.model.seen is images


def test_scale_and_shift_are_not_saved_with_the_model():
    teacher = FrozenTeacher(Recorder(), STUDENT_MEAN, STUDENT_STD, TEACHER_MEAN, TEACHER_STD)
    keys = set(teacher.state_dict())
    assert "scale" not in keys and "shift" not in keys
    assert keys == {f"model.{key}" for key in teacher.model.state_dict()}


def recipe_with_teacher(tiny_recipe, teacher, **sections):
    return load_recipe(raw=tiny_recipe(teacher=teacher, **sections))


def test_build_frozen_teacher_from_the_recipe(tiny_recipe):
    recipe = recipe_with_teacher(tiny_recipe, {"name": "vitkd_small_cnn"})
    teacher = build_frozen_teacher(recipe, num_classes=7)
    assert isinstance(teacher, FrozenTeacher) and isinstance(teacher.model, SmallCNN)
    assert teacher.model.head.out_features == 7  # the dataset's class count
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    assert not teacher.renormalize  # no teacher.mean/std: the data normalisation serves both
    assert teacher(torch.zeros(2, 3, 16, 16)).shape == (2, 7)


def test_build_frozen_teacher_re_normalises_to_the_teacher_statistics(tiny_recipe):
    recipe = recipe_with_teacher(tiny_recipe, {"name": "vitkd_small_cnn", "mean": list(TEACHER_MEAN),
                                               "std": list(TEACHER_STD)})
    teacher = build_frozen_teacher(recipe, num_classes=10)
    assert teacher.renormalize
    # data mean/std 0.5 (the tiny recipe): scale = std_s / std_t, shift = (mean_s - mean_t) / std_t
    assert torch.equal(teacher.scale.flatten(), torch.tensor([2.0, 1.0, 0.5]))
    assert torch.equal(teacher.shift.flatten(), torch.tensor([1.0, 0.0, -0.25]))


def test_build_frozen_teacher_loads_the_teacher_checkpoint(tiny_recipe, tmp_path):
    torch.manual_seed(0)
    trained = SmallCNN(num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "teacher.pt")
    recipe = recipe_with_teacher(tiny_recipe, {"name": "vitkd_small_cnn", "checkpoint": str(tmp_path / "teacher.pt")})
    teacher = build_frozen_teacher(recipe, num_classes=10)
    loaded = teacher.model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in trained.state_dict().items())


def test_teacher_kwargs_with_another_class_count_are_refused(tiny_recipe):
    recipe = recipe_with_teacher(tiny_recipe, {"name": "vitkd_small_cnn", "kwargs": {"num_classes": 5}})
    with pytest.raises(ConfigError, match=r"teacher\.kwargs\.num_classes=5 but the dataset has 10 classes"):
        build_frozen_teacher(recipe, num_classes=10)
    # the same count is fine
    assert build_frozen_teacher(recipe, num_classes=5).model.head.out_features == 5


def test_student_normalization_prefers_the_students_own_statistics(tiny_recipe):
    recipe = recipe_with_teacher(tiny_recipe, {"name": "vitkd_small_cnn"})
    assert student_normalization(recipe) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # data.mean / data.std
    student = {**tiny_recipe()["student"], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    recipe = recipe_with_teacher(tiny_recipe, {"name": "vitkd_small_cnn"}, student=student)
    mean, std = student_normalization(recipe)
    assert (mean, std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)) and isinstance(mean, tuple) and isinstance(std, tuple)
    # a teacher without mean/std takes the student's input as it is; one with its own statistics (here the data's)
    # is re-normalised from the student's statistics, not from the data's
    assert not build_frozen_teacher(recipe, num_classes=10).renormalize
    recipe = recipe_with_teacher(tiny_recipe, {"name": "vitkd_small_cnn", "mean": [0.5] * 3, "std": [0.5] * 3},
                                 student=student)
    teacher = build_frozen_teacher(recipe, num_classes=10)
    assert teacher.renormalize
    torch.testing.assert_close(teacher.scale.flatten(), torch.tensor([0.4, 0.5, 0.6]) / 0.5)
    torch.testing.assert_close(teacher.shift.flatten(), (torch.tensor([0.1, 0.2, 0.3]) - 0.5) / 0.5)


def test_channels_last_teacher_gives_the_same_logits_and_weights_hash(tiny_recipe):
    from vitkd.cache.format import hash_state_dict

    raw = tiny_recipe(teacher={"name": "vitkd_small_cnn"})
    torch.manual_seed(0)
    default = build_frozen_teacher(load_recipe(raw=raw), num_classes=10)
    raw["teacher"]["channels_last"] = True
    torch.manual_seed(0)
    channels_last = build_frozen_teacher(load_recipe(raw=raw), num_classes=10)
    convolution = next(m for m in channels_last.model.modules() if isinstance(m, nn.Conv2d))
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 16, 16)
    assert channels_last.prepare_input(images).is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(default(images), channels_last(images), atol=1e-5)
    # a cache written by one is read by the other: the weights hash ignores the memory format
    assert hash_state_dict(default.model.state_dict()) == hash_state_dict(channels_last.model.state_dict())
