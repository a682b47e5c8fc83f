import timm
import torch

from vitkd.models.construction.teacher_layers import init_from_teacher_layers
from vitkd.models.construction.theseus import TheseusModel, replacement_probability

VIT = "vit_tiny_patch16_224"
SIZE = {"img_size": 16, "patch_size": 4, "num_heads": 2, "num_classes": 10, "embed_dim": 32}


def _pair():
    torch.manual_seed(0)
    teacher = timm.create_model(VIT, pretrained=False, depth=4, **SIZE).eval()
    student = timm.create_model(VIT, pretrained=False, depth=2, **SIZE)
    init_from_teacher_layers(student, teacher, [0, 2])
    return teacher, student


def test_schedules_hit_the_papers_values():
    # linear: p = min(1, b + k t) with the released example b = 0.1, k = 0.0006 -> p(0) = 0.1, p(1000) = 0.7, 1 from
    # t = 1500 on; constant: 0.7 for 2500 steps, then 1
    linear = [replacement_probability(t, "linear", 0.1, 0.0006) for t in (0, 1000, 1500, 5000)]
    assert [round(p, 10) for p in linear] == [0.1, 0.7, 1.0, 1.0]
    constant = [replacement_probability(t, "constant", 0.7, constant_steps=2500) for t in (0, 2499, 2500)]
    assert constant == [0.7, 0.7, 1.0]


def test_p_one_is_the_student_and_p_zero_is_the_teacher():
    teacher, student = _pair()
    images = torch.randn(2, 3, 16, 16)
    expected_student = student.eval()(images)  # the tiny ViTs have no dropout: train and eval forwards agree
    always = TheseusModel(student, teacher, lambda step: 1.0).train()
    torch.testing.assert_close(always(images), expected_student)
    assert always.last_choice == [True, True]
    never = TheseusModel(student, teacher, lambda step: 0.0).train()
    torch.testing.assert_close(never(images), teacher(images))
    assert never.last_choice == [False, False] and int(never.step) == 1


def test_evaluation_runs_the_successors_only_and_predecessors_are_frozen():
    teacher, student = _pair()
    model = TheseusModel(student, teacher, lambda step: 0.0)
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model.eval()(images), student.eval()(images))
    assert model.successor_only() is student
    assert not any(p.requires_grad for p in model.predecessors.parameters())
    model.train()
    assert not model.predecessors.training and model.student.training


def test_draws_repeat_for_the_same_step_and_gradients_reach_only_the_drawn_successors():
    teacher, student = _pair()
    model = TheseusModel(student, teacher, lambda step: 0.5, seed=3)
    assert model.draw(7) == model.draw(7)
    assert any(model.draw(t) != model.draw(0) for t in range(1, 20))
    model.train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    for used, block in zip(model.last_choice, student.blocks):
        assert (block.mlp.fc1.weight.grad is not None) == used
    assert student.head.weight.grad is not None  # the shared head trains on either path


def test_step_count_travels_in_the_state_dict():
    teacher, student = _pair()
    model = TheseusModel(student, teacher, lambda step: 0.5).train()
    model(torch.randn(1, 3, 16, 16))
    model(torch.randn(1, 3, 16, 16))
    copy = TheseusModel(student, teacher, lambda step: 0.5)
    copy.load_state_dict(model.state_dict())
    assert int(copy.step) == 2 and copy.draw(int(copy.step)) == model.draw(2)
    copy.train()(torch.randn(1, 3, 16, 16))
    assert copy.last_choice == model.draw(2) and int(copy.step) == 3  # continues from the loaded step
