"""KDLoss and DeiTDistillationLoss against hand-computed values of the papers' formulas."""

import math

import pytest
import torch

from vitkd.losses import DeiTDistillationLoss, KDLoss


def _kl_two_class(p: float, q: float) -> float:
    """KL([p, 1-p] || [q, 1-q]) by hand."""
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_kd_loss_hand_computed_temperature_one():
    # teacher logits [ln 3, 0] -> probabilities [3/4, 1/4]; student [0, 0] -> [1/2, 1/2]
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812...
    assert KDLoss(temperature=1.0)(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.1308120, rel=1e-5)


def test_kd_loss_temperature_scales_logits_and_multiplies_by_t_squared():
    # T = 2: teacher [ln 3, 0] / 2 -> probabilities [sqrt3 / (sqrt3 + 1), 1 / (sqrt3 + 1)]
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected = 4.0 * _kl_two_class(p, 0.5)
    assert KDLoss(temperature=2.0)(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_mean_over_batch():
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    student = torch.zeros(2, 2)
    # second sample has zero divergence, so the batch mean halves the first sample's value
    expected = _kl_two_class(0.75, 0.5) / 2
    assert KDLoss(1.0)(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_deit_soft_is_normalised_per_element_like_the_released_code():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    kl = _kl_two_class(0.75, 0.5)
    # tau = 1: sum over B*C elements, divided by B*C = 2
    element = DeiTDistillationLoss("soft", tau=1.0)(student, teacher).item()
    assert element == pytest.approx(kl / 2, rel=1e-6)
    batch = DeiTDistillationLoss("soft", tau=1.0, normalization="batch")(student, teacher).item()
    assert batch == pytest.approx(kl, rel=1e-6)
    # tau = 3: logits / 3 and a factor 9
    p = 3 ** (1 / 3) / (3 ** (1 / 3) + 1)
    soft_tau3 = DeiTDistillationLoss("soft", tau=3.0)(student, teacher).item()
    assert soft_tau3 == pytest.approx(9.0 * _kl_two_class(p, 0.5) / 2, rel=1e-6)


def test_deit_hard_is_cross_entropy_against_teacher_argmax():
    dist_logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[0.1, 5.0, 0.2], [0.0, 3.0, 1.0]])  # argmax: class 1 for both
    # sample 0: -log(e^0 / (e^2 + 2)); sample 1: -log(e^1 / (e^1 + 2))
    expected = (math.log(math.e ** 2 + 2) + (math.log(math.e + 2) - 1)) / 2
    assert DeiTDistillationLoss("hard")(dist_logits, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_gradients_flow_only_into_the_student():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    for loss in (KDLoss(2.0), DeiTDistillationLoss("soft"), DeiTDistillationLoss("hard")):
        student.grad = None
        teacher.grad = None
        loss(student, teacher).backward()
        assert student.grad is not None and student.grad.abs().sum() > 0
        assert teacher.grad is None


def test_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match="mode must be 'soft' or 'hard'"):
        DeiTDistillationLoss("medium")
    with pytest.raises(ValueError, match="temperature must be positive"):
        KDLoss(0.0)
    with pytest.raises(ValueError, match=r"same shape \(B, C\); got student \(2, 3\) and teacher \(2, 4\)"):
        KDLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
