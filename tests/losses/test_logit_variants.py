"""NKD, DKD, DIST and reverse / symmetric KD against hand-computed values of the papers' formulas, and their recipe
terms: default weights, parameter checks, logit-cache refusals, the Mixup/CutMix target class, DKD's warm-up."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from vitkd.cache.soft_labels import rebuild_soft_labels
from vitkd.config import LossTermConfig, load_recipe
from vitkd.engine.checkpoint import load_checkpoint
from vitkd.errors import ConfigError
from vitkd.losses import DISTLoss, DKDLoss, KDLoss, NKDLoss
from vitkd.losses.base import TermContext
from vitkd.losses.inputs import StudentOutputs, TeacherOutputs, Targets
from vitkd.losses.registry import build_loss_terms, resolve_loss_terms
from vitkd.tasks.classification.objective import DistillationObjective
from vitkd.training import build_trainer

LN2, LN3 = math.log(2.0), math.log(3.0)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(z / temperature) for z in logits]
    return [e / sum(exps) for e in exps]


def _pearson(u: list[float], v: list[float]) -> float:
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    du, dv = [a - mu for a in u], [b - mv for b in v]
    norm = math.sqrt(sum(a * a for a in du)) * math.sqrt(sum(b * b for b in dv))
    return sum(a * b for a, b in zip(du, dv)) / (norm + 1e-8)


def _rows(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).float()


# Hand cases. Two classes: teacher logits [ln 3, 0] -> p = [3/4, 1/4]; student [0, 0] -> q = [1/2, 1/2].
# Three classes, target class 0: student logits [ln 2, ln 3, 0] -> S = [1/3, 1/2, 1/6], its non-target classes
# renormalised S^ = [3/4, 1/4]; teacher logits [0, 0, ln 3] -> T = [1/5, 1/5, 3/5], T^ = [1/4, 3/4].
TWO_STUDENT, TWO_TEACHER = _rows([0.0, 0.0]), _rows([LN3, 0.0])
THREE_STUDENT, THREE_TEACHER = _rows([LN2, LN3, 0.0]), _rows([0.0, 0.0, LN3])
LABEL0 = torch.tensor([0])


# ---------------------------------------------------------------------------------------------------------------------
# KD directions


def test_reverse_kd_two_classes_by_hand():
    # KL(q || p) = 1/2 ln((1/2) / (3/4)) + 1/2 ln((1/2) / (1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) = 0.143841
    expected = 0.5 * math.log(4.0 / 3.0)
    assert expected == pytest.approx(0.1438410, rel=1e-6)
    assert KDLoss(1.0, direction="reverse")(TWO_STUDENT, TWO_TEACHER).item() == pytest.approx(expected, rel=1e-6)
    # T = 2: p = [sqrt3, 1] / (sqrt3 + 1), q still uniform, times T^2 = 4
    p = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    assert KDLoss(2.0, direction="reverse")(TWO_STUDENT, TWO_TEACHER).item() == pytest.approx(
        4.0 * _kl([0.5, 0.5], p), rel=1e-6)


def test_symmetric_kd_is_jensen_shannon_two_classes_by_hand():
    # m = (p + q) / 2 = [5/8, 3/8]
    # KL(p || m) = 3/4 ln(6/5) + 1/4 ln(2/3) = 0.0353749;  KL(q || m) = 1/2 ln(4/5) + 1/2 ln(4/3) = 0.0322693
    # JS = (0.0353749 + 0.0322693) / 2 = 0.0338221
    kl_pm = 0.75 * math.log(6 / 5) + 0.25 * math.log(2 / 3)
    kl_qm = 0.5 * math.log(4 / 5) + 0.5 * math.log(4 / 3)
    expected = 0.5 * (kl_pm + kl_qm)
    assert expected == pytest.approx(0.0338221, rel=1e-5)
    symmetric = KDLoss(1.0, direction="symmetric")
    assert symmetric(TWO_STUDENT, TWO_TEACHER).item() == pytest.approx(expected, rel=1e-5)
    # symmetric in its arguments, bounded by ln 2 * T^2, zero for equal distributions
    student, teacher = torch.randn(5, 7), torch.randn(5, 7) * 4
    assert symmetric(student, teacher).item() == pytest.approx(symmetric(teacher, student).item(), rel=1e-5)
    assert KDLoss(3.0, direction="symmetric")(student * 50, -teacher * 50).item() <= 9.0 * LN2 + 1e-5
    assert symmetric(student, student + 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_reverse_and_symmetric_kd_three_classes_at_temperature_two():
    student, teacher = THREE_STUDENT, THREE_TEACHER
    q = _softmax([LN2, LN3, 0.0], 2.0)
    p = _softmax([0.0, 0.0, LN3], 2.0)
    m = [(a + b) / 2 for a, b in zip(p, q)]
    assert KDLoss(2.0, "reverse")(student, teacher).item() == pytest.approx(4 * _kl(q, p), rel=1e-5)
    assert KDLoss(2.0, "symmetric")(student, teacher).item() == pytest.approx(
        4 * 0.5 * (_kl(p, m) + _kl(q, m)), rel=1e-5)


def test_default_kd_is_bitwise_the_former_forward_kd():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    former = F.kl_div(F.log_softmax(student / 4.0, dim=-1), F.log_softmax(teacher / 4.0, dim=-1),
                      reduction="batchmean", log_target=True) * 16.0
    assert torch.equal(KDLoss()(student, teacher), former)
    assert torch.equal(KDLoss(4.0, direction="forward")(student, teacher), former)


@pytest.mark.parametrize("direction", ["reverse", "symmetric"])
def test_reverse_and_symmetric_gradients_reach_only_the_student(direction):
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    KDLoss(2.0, direction)(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


# ---------------------------------------------------------------------------------------------------------------------
# NKD


def test_nkd_two_classes_by_hand():
    # The only non-target class has renormalised probability 1 for both models: its cross-entropy is 0, whatever
    # gamma and T. What is left is the target part -T_t ln S_t: label 0: -3/4 ln(1/2); label 1: -1/4 ln(1/2).
    for label, teacher_target in ((0, 0.75), (1, 0.25)):
        value = NKDLoss(temperature=3.0, gamma=1.5)(TWO_STUDENT, TWO_TEACHER, torch.tensor([label])).item()
        assert value == pytest.approx(teacher_target * LN2, rel=1e-6)
    assert 0.75 * LN2 == pytest.approx(0.5198604, rel=1e-6)


def test_nkd_three_classes_by_hand():
    # target part: -T_t ln S_t = -(1/5) ln(1/3) = ln(3) / 5
    # non-target part (T = 1): -sum T^ ln S^ = -(1/4 ln(3/4) + 3/4 ln(1/4)) = 1/4 ln(4/3) + 3/4 ln 4
    target = LN3 / 5
    non_target = 0.25 * math.log(4 / 3) + 0.75 * math.log(4)
    value = NKDLoss(temperature=1.0, gamma=1.0)(THREE_STUDENT, THREE_TEACHER, LABEL0).item()
    assert value == pytest.approx(target + non_target, rel=1e-6)
    assert value == pytest.approx(1.3313639, rel=1e-6)
    # gamma scales only the non-target part
    assert NKDLoss(1.0, gamma=1.5)(THREE_STUDENT, THREE_TEACHER, LABEL0).item() == pytest.approx(
        target + 1.5 * non_target, rel=1e-6)
    # T = 2 tempers only the non-target part (softmax of the non-target logits / 2), times T^2; the target part
    # stays at temperature 1. Non-target logits: student [ln 3, 0] / 2, teacher [0, ln 3] / 2.
    s_hat, t_hat = _softmax([LN3, 0.0], 2.0), _softmax([0.0, LN3], 2.0)
    cross_entropy = -sum(t * math.log(s) for t, s in zip(t_hat, s_hat))
    loss = NKDLoss(temperature=2.0, gamma=1.0)
    assert loss(THREE_STUDENT, THREE_TEACHER, LABEL0).item() == pytest.approx(target + 4.0 * cross_entropy, rel=1e-6)
    target_part, non_target_part = loss.parts(THREE_STUDENT, THREE_TEACHER, LABEL0)
    assert (target_part.item(), non_target_part.item()) == pytest.approx((target, 4.0 * cross_entropy), rel=1e-6)


def test_nkd_removes_the_target_class_before_renormalising():
    # Keeping the target class in the tempered distributions (full softmax cross-entropy) gives another value:
    # -sum_i T_i ln S_i = -(1/5 ln 1/3 + 1/5 ln 1/2 + 3/5 ln 1/6) = 1.4708...
    with_target = -sum(t * math.log(s) for t, s in zip([0.2, 0.2, 0.6], [1 / 3, 1 / 2, 1 / 6]))
    value = NKDLoss(1.0, 1.0)(THREE_STUDENT, THREE_TEACHER, LABEL0).item()
    assert value != pytest.approx(LN3 / 5 + with_target, rel=1e-3)


def test_nkd_is_a_batch_mean_and_reads_each_sample_s_label():
    student = torch.cat([THREE_STUDENT, THREE_STUDENT.flip(-1)])
    teacher = torch.cat([THREE_TEACHER, THREE_TEACHER.flip(-1)])
    labels = torch.tensor([0, 2])  # the second sample is the first with the classes in reverse order
    loss = NKDLoss(1.0, 1.0)
    assert loss(student, teacher, labels).item() == pytest.approx(loss(THREE_STUDENT, THREE_TEACHER, LABEL0).item(),
                                                                  rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# DKD


def test_dkd_two_classes_by_hand():
    # With one non-target class NCKD compares two point masses: 0. TCKD is the whole KD:
    # KL([3/4, 1/4] || [1/2, 1/2]) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812; DKD = alpha * 0.130812 * T^2.
    tckd = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert tckd == pytest.approx(0.1308120, rel=1e-5)
    assert DKDLoss(alpha=2.0, beta=8.0, temperature=1.0)(TWO_STUDENT, TWO_TEACHER, LABEL0).item() == pytest.approx(
        2.0 * tckd, rel=1e-6)


def test_dkd_three_classes_by_hand():
    # b^T = [1/5, 4/5], b^S = [1/3, 2/3]: TCKD = 1/5 ln(3/5) + 4/5 ln(6/5) = 0.0436921
    # T^ = [1/4, 3/4], S^ = [3/4, 1/4]:   NCKD = 1/4 ln(1/3) + 3/4 ln 3 = ln(3) / 2 = 0.5493061
    tckd = 0.2 * math.log(0.6) + 0.8 * math.log(1.2)
    nckd = LN3 / 2
    assert (tckd, nckd) == pytest.approx((0.0436921, 0.5493061), rel=1e-5)
    loss = DKDLoss(alpha=1.0, beta=0.5, temperature=1.0)
    assert loss(THREE_STUDENT, THREE_TEACHER, LABEL0).item() == pytest.approx(tckd + 0.5 * nckd, rel=1e-6)
    per_sample = loss.per_sample(THREE_STUDENT, THREE_TEACHER, LABEL0)
    assert (per_sample[0].item(), per_sample[1].item()) == pytest.approx((tckd, nckd), rel=1e-6)
    # T = 2: every distribution at temperature 2, times T^2
    s, t = _softmax([LN2, LN3, 0.0], 2.0), _softmax([0.0, 0.0, LN3], 2.0)
    tckd2 = _kl([t[0], 1 - t[0]], [s[0], 1 - s[0]])
    nckd2 = _kl([t[1] / (1 - t[0]), t[2] / (1 - t[0])], [s[1] / (1 - s[0]), s[2] / (1 - s[0])])
    assert DKDLoss(1.0, 8.0, temperature=2.0)(THREE_STUDENT, THREE_TEACHER, LABEL0).item() == pytest.approx(
        4.0 * (tckd2 + 8.0 * nckd2), rel=1e-5)


def test_dkd_decomposition_identity_kd_equals_tckd_plus_one_minus_teacher_target_prob_times_nckd():
    # The paper's reformulation, per sample: KD = TCKD + (1 - p_t^T) * NCKD, p_t^T the teacher's target probability
    # (all at the same temperature). By hand on the 3-class case: KD = 1/5 ln(3/5) + 1/5 ln(2/5) + 3/5 ln(18/5).
    kd = 0.2 * math.log(0.6) + 0.2 * math.log(0.4) + 0.6 * math.log(3.6)
    tckd, nckd = DKDLoss().per_sample(THREE_STUDENT, THREE_TEACHER, LABEL0)
    assert kd == pytest.approx(tckd.item() + (1 - 0.2) * nckd.item(), rel=1e-6)
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 7) * 3, torch.randn(6, 7) * 3
    labels = torch.tensor([0, 3, 6, 2, 2, 5])
    for temperature in (1.0, 2.0, 4.0):
        tckd, nckd = DKDLoss(temperature=temperature).per_sample(student, teacher, labels)
        teacher_target = F.softmax(teacher / temperature, dim=-1).gather(1, labels[:, None]).squeeze(1)
        for i in range(6):
            kd_i = KDLoss(temperature)(student[i:i + 1], teacher[i:i + 1]) / temperature ** 2
            assert kd_i.item() == pytest.approx((tckd[i] + (1 - teacher_target[i]) * nckd[i]).item(), rel=1e-4,
                                                abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# DIST


def test_dist_two_by_two_by_hand():
    # Y^T = [[3/4, 1/4], [1/2, 1/2]], Y^S = [[1/4, 3/4], [3/4, 1/4]].
    # Inter (per sample, across classes): sample 0, centred T (1/4, -1/4) vs S (-1/4, 1/4): -1; sample 1, T is
    # constant: its centred vector is 0, correlation 0. inter = 1 - (-1 + 0) / 2 = 1.5.
    # Intra (per class, across the batch): class 0, T (3/4, 1/2) falls while S (1/4, 3/4) rises: -1; class 1 likewise
    # -1. intra = 1 - (-1) = 2. DIST = beta * 1.5 + gamma * 2.
    student = _rows([0.0, LN3], [LN3, 0.0])
    teacher = _rows([LN3, 0.0], [0.0, 0.0])
    labels = torch.tensor([0, 1])  # ignored
    assert DISTLoss()(student, teacher, labels).item() == pytest.approx(3.5, rel=1e-6)
    assert DISTLoss(beta=2.0, gamma=0.5)(student, teacher).item() == pytest.approx(2 * 1.5 + 0.5 * 2, rel=1e-6)
    inter, intra = DISTLoss(beta=2.0, gamma=0.5).parts(student, teacher)
    assert (inter.item(), intra.item()) == pytest.approx((3.0, 1.0), rel=1e-6)


def test_dist_one_sample_three_classes_by_hand():
    # Y^T = [1/2, 3/10, 1/5], Y^S = [1/5, 3/10, 1/2]; centred (x 30): T (5, -1, -4), S (-4, -1, 5).
    # Pearson = (-20 + 1 - 20) / (sqrt 42 * sqrt 42) = -39/42 = -13/14: inter = 1 + 13/14 = 27/14.
    # Intra: one sample per class, every centred vector is 0, correlation 0 (the epsilon): intra = 1.
    student = _rows([math.log(0.2), math.log(0.3), math.log(0.5)])
    teacher = _rows([math.log(0.5), math.log(0.3), math.log(0.2)])
    assert DISTLoss()(student, teacher).item() == pytest.approx(27 / 14 + 1, rel=1e-5)
    # tau = 2: Y proportional to sqrt(p); times tau^2
    y_s, y_t = _softmax(student[0].tolist(), 2.0), _softmax(teacher[0].tolist(), 2.0)
    assert DISTLoss(tau=2.0)(student, teacher).item() == pytest.approx(4 * ((1 - _pearson(y_s, y_t)) + 1), rel=1e-5)


def test_dist_is_zero_for_matching_predictions_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(8, 6)
    assert DISTLoss()(logits, logits).item() == pytest.approx(0.0, abs=1e-5)
    # a per-sample shift leaves the softmax unchanged: still a perfect relation
    assert DISTLoss()(logits + torch.randn(8, 1), logits).item() == pytest.approx(0.0, abs=1e-5)
    assert DISTLoss()(torch.randn(8, 6), logits).item() > 0.1


def test_new_losses_send_gradients_only_to_the_student():
    labels = torch.tensor([0, 1, 2, 4])
    for loss in (NKDLoss(2.0, 1.5), DKDLoss(1.0, 8.0, 4.0), DISTLoss(tau=2.0)):
        student = torch.randn(4, 5, requires_grad=True)
        teacher = torch.randn(4, 5, requires_grad=True)
        value = loss(student, teacher, labels)
        assert value.dim() == 0
        value.backward()
        assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
        assert teacher.grad is None


def test_bad_arguments_name_the_loss():
    with pytest.raises(ValueError, match="KDLoss direction must be one of forward, reverse, symmetric, got 'up'"):
        KDLoss(direction="up")
    with pytest.raises(ValueError, match="NKDLoss temperature must be positive"):
        NKDLoss(temperature=0.0)
    with pytest.raises(ValueError, match="DKDLoss beta must be >= 0"):
        DKDLoss(beta=-1.0)
    with pytest.raises(ValueError, match="DISTLoss tau must be positive"):
        DISTLoss(tau=-1.0)
    with pytest.raises(ValueError, match=r"NKDLoss expects labels of shape \(B,\) = \(2,\) holding integer class"):
        NKDLoss()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="DKDLoss needs at least 2 classes"):
        DKDLoss()(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"DISTLoss expects student and teacher logits of the same shape"):
        DISTLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------------------------------
# recipe terms


def _context(uses_cache: bool = False, steps_per_epoch: int = 0) -> TermContext:
    return TermContext(student=torch.nn.Linear(1, 1), teacher=None if uses_cache else torch.nn.Linear(1, 1),
                       num_classes=3, uses_cache=uses_cache, steps_per_epoch=steps_per_epoch)


def _build(losses: list[dict], uses_cache: bool = False, steps_per_epoch: int = 0):
    terms = resolve_loss_terms([LossTermConfig(name=t["name"], weight=t.get("weight"),
                                               params={k: v for k, v in t.items() if k not in ("name", "weight")})
                                for t in losses])
    return build_loss_terms(terms, _context(uses_cache, steps_per_epoch))


def _call(term, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, soft=None) -> torch.Tensor:
    return term(StudentOutputs(logits=student), TeacherOutputs(logits=teacher), Targets(labels=labels, soft=soft))


def test_default_weights_and_parameters_are_the_papers():
    built = _build([{"name": "ce"}, {"name": "nkd"}, {"name": "dkd", "warmup_epochs": 0}, {"name": "dist"}])
    assert [(name, weight) for name, weight, _ in built] == [("ce", 1.0), ("nkd", 1.0), ("dkd", 1.0), ("dist", 2.0)]
    nkd, dkd, dist = (term for _, _, term in built[1:])
    assert (nkd.loss.temperature, nkd.loss.gamma) == (1.0, 1.0)
    assert (dkd.loss.alpha, dkd.loss.beta, dkd.loss.temperature) == (1.0, 0.5, 1.0)
    assert (dist.loss.beta, dist.loss.gamma, dist.loss.tau) == (1.0, 1.0, 1.0)
    assert all(term.needs.teacher_logits and not term.needs.live_teacher_tokens for _, _, term in built[1:])
    kd = _build([{"name": "kd", "direction": "symmetric", "temperature": 2.0}])[0][2]
    assert (kd.loss.direction, kd.loss.temperature) == ("symmetric", 2.0)
    assert _build([{"name": "kd"}])[0][2].loss.direction == "forward"


@pytest.mark.parametrize("term, message", [
    ({"name": "kd", "direction": "sideways"},
     r"losses\.0\.direction: 'sideways' is not valid; valid values: forward, reverse, symmetric"),
    ({"name": "kd", "temperature": 0}, r"losses\.0\.temperature: expected a number > 0\.0, got 0"),
    ({"name": "nkd", "gamma": -1}, r"losses\.0\.gamma: expected a number >= 0\.0, got -1"),
    ({"name": "nkd", "tau": 2}, r"losses\.0\.tau: unknown parameter for loss 'nkd'; valid parameters: temperature, "
                                r"gamma"),
    ({"name": "dkd", "beta": "big"}, r"losses\.0\.beta: expected a number >= 0\.0, got 'big'"),
    ({"name": "dkd", "warmup_epochs": -2}, r"losses\.0\.warmup_epochs: expected a number >= 0\.0, got -2"),
    ({"name": "dist", "tau": 0.0}, r"losses\.0\.tau: expected a number > 0\.0, got 0\.0"),
])
def test_bad_recipe_parameters_fail_before_any_model_is_built(term, message):
    with pytest.raises(ConfigError, match=message):
        _build([term])


@pytest.mark.parametrize("term, parameter", [
    ({"name": "nkd", "temperature": 2.0}, "temperature"),
    ({"name": "dkd", "temperature": 4.0, "warmup_epochs": 0}, "temperature"),
    ({"name": "dist", "tau": 2.0}, "tau"),
    ({"name": "kd", "direction": "reverse", "temperature": 4.0}, "temperature"),
    ({"name": "kd", "direction": "symmetric", "temperature": 2.0}, "temperature"),
])
def test_a_logit_cache_is_refused_where_the_term_needs_another_temperature(term, parameter):
    with pytest.raises(ConfigError) as raised:
        _build([term], uses_cache=True)
    message = str(raised.value)
    name = term["name"] + (f" (direction {term['direction']})" if "direction" in term else "")
    assert message.startswith(f"losses.0 ({term['name']}): the '{name}' loss with {parameter}={term[parameter]} ")
    assert "top-K logit cache (teacher.cache)" in message
    assert f"Set {parameter}: 1.0, or remove teacher.cache and train with the live teacher" in message
    _build([term])  # a live teacher serves it


def test_a_logit_cache_serves_the_terms_at_temperature_one_and_forward_kd_at_any():
    built = _build([{"name": "nkd"}, {"name": "dkd", "warmup_epochs": 0}, {"name": "dist"},
                    {"name": "kd", "direction": "reverse", "temperature": 1.0},
                    {"name": "kd", "direction": "symmetric", "temperature": 1}, {"name": "kd", "temperature": 4.0}],
                   uses_cache=True)
    assert [name for name, _, _ in built] == ["nkd", "dkd", "dist", "kd", "kd_1", "kd_2"]


def test_why_only_temperature_one_is_served_exactly_from_a_cache():
    # A cache keeps the top K of softmax(z) and spreads the rest evenly. At T = 1 the top-K entries of the rebuilt
    # label are the teacher's own probabilities; re-tempering the rebuilt label (softmax(log q / T)) does not give
    # the top-K entries of softmax(z / T): the evenly spread tail weighs differently once tempered.
    torch.manual_seed(0)
    z = torch.randn(2, 10) * 2
    probs = F.softmax(z, dim=-1)
    values, indices = probs.topk(3, dim=-1)
    rebuilt = rebuild_soft_labels(values, indices, 10)
    assert torch.allclose(F.softmax(rebuilt.log(), dim=-1).gather(1, indices), values, atol=1e-6)
    tempered_cache = F.softmax(rebuilt.log() / 4.0, dim=-1).gather(1, indices)
    tempered_teacher = F.softmax(z / 4.0, dim=-1).gather(1, indices)
    assert not torch.allclose(tempered_cache, tempered_teacher, atol=1e-3)


@pytest.mark.parametrize("name", ["nkd", "dkd"])
def test_under_mixup_the_target_class_is_the_dominant_class_of_the_mixed_label(name):
    # Sample: label 0 mixed with a class-1 image at lam = 0.3 (label smoothing 0.1 over 3 classes):
    # soft = 0.3 * [0.933, 0.033, 0.033] + 0.7 * [0.033, 0.933, 0.033] -> class 1 dominates, not the label 0.
    smooth = lambda c: [0.9 * (i == c) + 0.1 / 3 for i in range(3)]  # noqa: E731
    soft = torch.tensor([[0.3 * a + 0.7 * b for a, b in zip(smooth(0), smooth(1))]])
    term = _build([{"name": name, "warmup_epochs": 0} if name == "dkd" else {"name": name}])[0][2]
    loss = NKDLoss() if name == "nkd" else DKDLoss()
    mixed = _call(term, THREE_STUDENT, THREE_TEACHER, LABEL0, soft=soft)
    assert mixed.item() == pytest.approx(loss(THREE_STUDENT, THREE_TEACHER, torch.tensor([1])).item(), rel=1e-6)
    assert mixed.item() != pytest.approx(loss(THREE_STUDENT, THREE_TEACHER, LABEL0).item(), rel=1e-3)
    # without Mixup the label is the target
    plain = _call(term, THREE_STUDENT, THREE_TEACHER, LABEL0)
    assert plain.item() == pytest.approx(loss(THREE_STUDENT, THREE_TEACHER, LABEL0).item(), rel=1e-6)


def test_terms_log_their_parts():
    built = _build([{"name": "nkd", "gamma": 1.5}, {"name": "dkd", "warmup_epochs": 0}, {"name": "dist"}])
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 1])
    for (name, _, term), parts in zip(built, (("target", "non_target"), ("tckd", "nckd", "warmup"),
                                              ("inter", "intra"))):
        value = _call(term, student, teacher, labels)
        assert tuple(term.last_terms) == parts, name
        summed = sum(term.last_terms[p] for p in parts if p != "warmup")
        assert value.item() == pytest.approx(summed.item(), rel=1e-6), name


# ---------------------------------------------------------------------------------------------------------------------
# DKD warm-up


def test_dkd_warm_up_is_linear_per_step_and_its_step_count_is_checkpointed():
    # 4 steps per epoch, warm-up 2 epochs: factor k / 8 at the k-th step, 1 from step 8 on; at the end of epoch e
    # (step 4e) it is e / 2, the paper's min(epoch / warmup, 1) with epochs counted from 1.
    (_, _, term), = _build([{"name": "dkd", "warmup_epochs": 2}], steps_per_epoch=4)
    student, teacher, labels = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    full = DKDLoss()(student, teacher, labels).item()
    factors = []
    for _ in range(10):
        value = _call(term, student, teacher, labels)
        factors.append(value.item() / full)
        assert term.last_terms["warmup"].item() == pytest.approx(factors[-1], rel=1e-6)
    assert factors == pytest.approx([1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1.0, 1.0, 1.0], rel=1e-6)
    assert factors[3] == pytest.approx(1 / 2) and factors[7] == pytest.approx(2 / 2)  # end of epochs 1 and 2

    # eval mode does not advance the count
    term.eval()
    _call(term, student, teacher, labels)
    assert int(term.step_count) == 10
    term.train()

    # the count is a persistent buffer of the objective: a fresh term loaded from it continues the ramp exactly
    (_, _, half), = _build([{"name": "dkd", "warmup_epochs": 2}], steps_per_epoch=4)
    for _ in range(3):
        _call(half, student, teacher, labels)
    state = DistillationObjective([("dkd", 1.0, half)]).state_dict()
    assert int(state["terms.0.step_count"]) == 3
    (_, _, resumed), = _build([{"name": "dkd", "warmup_epochs": 2}], steps_per_epoch=4)
    DistillationObjective([("dkd", 1.0, resumed)]).load_state_dict(state)
    assert _call(resumed, student, teacher, labels).item() == pytest.approx(4 / 8 * full, rel=1e-6)


def test_dkd_warm_up_needs_the_steps_per_epoch_unless_it_is_off():
    with pytest.raises(ConfigError, match=r"losses\.0 \(dkd\): warmup_epochs needs the number of steps per epoch.*"
                                          r"set warmup_epochs: 0"):
        _build([{"name": "dkd"}], steps_per_epoch=0)
    (_, _, term), = _build([{"name": "dkd", "warmup_epochs": 0}])
    student, teacher, labels = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 2])
    assert _call(term, student, teacher, labels).item() == pytest.approx(DKDLoss()(student, teacher, labels).item())


TEACHER = {"name": "vit_small_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 2}}
LOGIT_TERMS = [{"name": "ce"}, {"name": "nkd"}, {"name": "dkd", "warmup_epochs": 2}, {"name": "dist"},
               {"name": "kd", "direction": "symmetric", "temperature": 2.0}]


def _short_run(tiny_recipe, name: str):
    raw = tiny_recipe(name=name, teacher=TEACHER, losses=LOGIT_TERMS)
    raw["data"].update(mixup=0.8, cutmix=1.0)
    raw["train"].update(epochs=2, max_steps_per_epoch=2)
    return load_recipe(raw=raw)


def test_the_new_terms_train_and_a_resumed_run_continues_the_dkd_warm_up_exactly(tiny_recipe, interrupt_training):
    straight = _short_run(tiny_recipe, "straight")
    trainer = build_trainer(straight)
    dkd = trainer.task.objective.terms[2]
    assert dkd.warmup_steps == 4.0  # 2 epochs x 2 steps: the task passes the capped steps per epoch
    trainer.fit()
    assert int(dkd.step_count) == 4
    first, second = (json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines())
    for key in ("nkd", "nkd/target", "nkd/non_target", "dkd", "dkd/tckd", "dkd/nckd", "dist", "dist/inter",
                "dist/intra", "kd"):
        assert math.isfinite(first[f"train/{key}"]), key
    # mean warm-up factor: epoch 1 steps 1, 2 -> (1/4 + 2/4) / 2; epoch 2 steps 3, 4 -> (3/4 + 1) / 2
    assert (first["train/dkd/warmup"], second["train/dkd/warmup"]) == pytest.approx((0.375, 0.875), rel=1e-5)

    interrupted = _short_run(tiny_recipe, "interrupted")
    disarm = interrupt_training(1)
    with pytest.raises(KeyboardInterrupt):
        build_trainer(interrupted).fit()
    disarm()
    assert int(load_checkpoint(interrupted.run_dir / "checkpoints" / "last.pt")["task"]["objective"][
        "terms.2.step_count"]) == 2
    build_trainer(interrupted, resume=True).fit()
    a = load_checkpoint(straight.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(interrupted.run_dir / "checkpoints" / "last.pt")
    assert int(b["task"]["objective"]["terms.2.step_count"]) == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
