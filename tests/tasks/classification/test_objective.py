"""DistillationObjective: the weighted sum of the loss terms, every term and part logged by name."""

import math

import torch
from torch import nn

from vitkd.losses.base import LossNeeds, LossTerm
from vitkd.losses.inputs import StudentOutputs, Targets, TeacherOutputs
from vitkd.tasks.classification.objective import DistillationObjective


class Constant(LossTerm):
    """Returns `value` (in `dtype`) and puts `parts` into `last_terms`; remembers what it was called with."""

    def __init__(self, value, parts=None, needs=LossNeeds(), dtype=torch.float32):
        super().__init__()
        self.value, self.parts, self.needs, self.dtype = value, parts or {}, needs, dtype
        self.calls = []

    def forward(self, student, teacher, targets):
        self.calls.append((student, teacher, targets))
        self.last_terms = {name: torch.tensor(value) for name, value in self.parts.items()}
        return torch.tensor(self.value, dtype=self.dtype)


class Linear(LossTerm):
    """`coefficient * sum(student logits)`: its gradient on the logits is `coefficient` everywhere."""

    def __init__(self, coefficient):
        super().__init__()
        self.coefficient = coefficient

    def forward(self, student, teacher, targets):
        return self.coefficient * student.logits.sum()


def batch(requires_grad=False):
    student = StudentOutputs(logits=torch.zeros(2, 3, requires_grad=requires_grad))
    teacher = TeacherOutputs(logits=torch.ones(2, 3))
    targets = Targets(labels=torch.tensor([0, 2]))
    return student, teacher, targets


def test_total_is_the_weighted_sum_and_every_term_is_logged_weighted():
    objective = DistillationObjective([("ce", 1.0, Constant(2.0)), ("kd", 0.5, Constant(3.0)),
                                       ("vitkd", 2.0, Constant(0.25))])
    total, logged = objective(*batch())
    assert total.item() == 1.0 * 2.0 + 0.5 * 3.0 + 2.0 * 0.25  # 4.0, exact in float32
    assert total.shape == () and total.dtype == torch.float32
    assert {name: value.item() for name, value in logged.items()} == {"ce": 2.0, "kd": 1.5, "vitkd": 0.5}


def test_every_term_sees_the_same_student_teacher_and_targets():
    terms = [Constant(1.0), Constant(2.0)]
    objective = DistillationObjective([("a", 1.0, terms[0]), ("b", 1.0, terms[1])])
    inputs = batch()
    objective(*inputs)
    for term in terms:
        (call,) = term.calls
        assert all(got is sent for got, sent in zip(call, inputs))


def test_weight_zero_terms_are_logged_but_not_added():
    # A weight-0 term is skipped, not multiplied by 0: a non-finite value cannot poison the total (0 * inf = nan).
    objective = DistillationObjective([("ce", 1.0, Constant(2.0)), ("off", 0.0, Constant(5.0)),
                                       ("broken", 0.0, Constant(math.inf))])
    total, logged = objective(*batch())
    assert total.item() == 2.0
    assert set(logged) == {"ce", "off", "broken"}
    assert logged["off"].item() == 0.0  # logged with its weight applied


def test_parts_are_logged_unweighted_under_name_slash_part():
    kd = Constant(3.0, parts={"soft": 1.5, "hard": 4.0})
    vitkd = Constant(1.0, parts={"mimic": 0.25, "generation": 0.75})
    objective = DistillationObjective([("kd", 0.5, kd), ("vitkd", 2.0, vitkd)])
    total, logged = objective(*batch())
    assert total.item() == 0.5 * 3.0 + 2.0 * 1.0
    assert list(logged) == ["kd", "kd/soft", "kd/hard", "vitkd", "vitkd/mimic", "vitkd/generation"]
    assert [value.item() for value in logged.values()] == [1.5, 1.5, 4.0, 2.0, 0.25, 0.75]


def test_the_same_term_class_twice_is_kept_apart_by_name():
    objective = DistillationObjective([("kd_cls", 1.0, Constant(1.0, parts={"p": 2.0})),
                                       ("kd_dist", 3.0, Constant(1.0, parts={"p": 4.0}))])
    total, logged = objective(*batch())
    assert total.item() == 4.0
    assert {name: value.item() for name, value in logged.items()} == {"kd_cls": 1.0, "kd_cls/p": 2.0,
                                                                       "kd_dist": 3.0, "kd_dist/p": 4.0}


def test_logged_values_are_detached_float32_and_the_total_is_float32_under_low_precision():
    objective = DistillationObjective([("half", 0.5, Constant(3.0, parts={"part": 1.0}, dtype=torch.bfloat16)),
                                       ("grad", 1.0, Linear(2.0))])
    student, teacher, targets = batch(requires_grad=True)
    total, logged = objective(student, teacher, targets)
    assert total.dtype == torch.float32 and total.requires_grad
    assert total.item() == 1.5  # the student's logits are zeros: the linear term is 0
    for value in logged.values():
        assert value.dtype == torch.float32 and not value.requires_grad


def test_gradients_are_the_weighted_gradients_of_the_terms_with_nonzero_weight():
    objective = DistillationObjective([("a", 0.5, Linear(2.0)), ("b", 3.0, Linear(-1.0)), ("c", 0.0, Linear(100.0))])
    student, teacher, targets = batch(requires_grad=True)
    total, _ = objective(student, teacher, targets)
    total.backward()
    # d total / d logits = 0.5 * 2 + 3 * (-1) = -2 everywhere; the weight-0 term adds nothing
    assert torch.equal(student.logits.grad, torch.full((2, 3), -2.0))


def test_needs_are_the_union_of_the_terms_needs():
    first = LossNeeds(teacher_logits=True, student_layers=(2, 0), teacher_layers=(5,))
    second = LossNeeds(dist_logits=True, student_layers=(1, 2), student_normed_layers=(11,),
                       teacher_hooks=("features.5",))
    objective = DistillationObjective([("kd", 1.0, Constant(0.0, needs=first)),
                                       ("vitkd", 1.0, Constant(0.0, needs=second))])
    assert objective.needs == LossNeeds(teacher_logits=True, dist_logits=True, student_layers=(0, 1, 2),
                                        teacher_layers=(5,), student_normed_layers=(11,),
                                        teacher_hooks=("features.5",))
    assert objective.needs.uses_teacher and objective.needs.live_teacher_tokens


def test_needs_of_ground_truth_only_terms_ask_nothing_of_the_teacher():
    objective = DistillationObjective([("ce", 1.0, Constant(1.0))])
    assert objective.needs == LossNeeds()
    assert not objective.needs.uses_teacher


def test_trainable_parts_of_terms_belong_to_the_objective():
    class Projected(Constant):
        def __init__(self):
            super().__init__(1.0)
            self.projection = nn.Linear(2, 3)

    objective = DistillationObjective([("ce", 1.0, Constant(1.0)), ("vitkd", 1.0, Projected())])
    # saved and optimised with the student: the trainer checkpoints objective.state_dict()
    assert set(objective.state_dict()) == {"terms.1.projection.weight", "terms.1.projection.bias"}
    assert sum(p.numel() for p in objective.parameters()) == 2 * 3 + 3
