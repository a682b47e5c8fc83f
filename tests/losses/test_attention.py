"""The `attention` term: each formula on hand-worked tensors, attention rebuilt from `qkv` against timm's non-fused
attention, relation heads across head counts, prefix tokens and grids, clear errors, and a short training run."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.vision_transformer import Block
from torch import nn

from test_feature_terms import CAIT, DISTILLED, build_terms, one_step_outputs
from vitkd.config import load_recipe
from vitkd.errors import ConfigError
from vitkd.losses.attention import (QKV, AttentionDistillationLoss, AttentionScoreLoss, Relation, RelationKLLoss,
                                    resplit_heads)
from vitkd.models.attention_maps import attention_sites, split_qkv
from vitkd.models.factory import build_model
from vitkd.tasks import resolve_recipe
from vitkd.tasks.classification.runners import TappedStudent
from vitkd.training import train

# DeiT-Ti / DeiT-S in miniature: 3 heads against 6, widths 24 against 48 (8 channels per head on both sides)
STUDENT = {"name": "vit_tiny_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 2, "num_heads": 3}}
TEACHER = {"name": "vit_small_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 4, "num_heads": 6}}
SAME_HEADS = {"name": "vit_small_patch16_224",
              "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 4, "num_heads": 3}}
# a = 1 / sqrt(2): rows [a, 0] and [0, a] softmax to [sigma(a), sigma(-a)] = [0.66976, 0.33024]; against a uniform
# teacher row, KL(t || s) = sum 0.5 ln(0.5 / p_s) = -ln 2 - (ln 0.66976 + ln 0.33024) / 2 = 0.061240
KL_UNIFORM_VS_A = -math.log(2) - (math.log(torch.sigmoid(torch.tensor(2 ** -0.5)).item())
                                  + math.log(torch.sigmoid(torch.tensor(-2 ** -0.5)).item())) / 2


def _qkv(q, k, v) -> QKV:
    """(N, d) lists -> one block of batch 1 and a single head, timm's scale d ** -0.5."""
    q, k, v = (torch.tensor(x, dtype=torch.float32)[None, None] for x in (q, k, v))  # (1, 1, N, d)
    return QKV(q, k, v, q.shape[-1] ** -0.5)


# ---------------------------------------------------------------------------------------------------------------------
# formulas, worked by hand


def test_relation_kl_two_tokens_by_hand():
    # teacher logits [ln 3, 0] -> p_t = [3/4, 1/4]; student [0, 0] -> p_s = [1/2, 1/2]
    # KL(t || s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812 (the second row mirrors the first)
    eye = torch.eye(2)[None, None]  # y = I: the map x y^T is x itself
    teacher = Relation(torch.tensor([[[[math.log(3), 0.0], [0.0, math.log(3)]]]]), eye, 1.0)  # (B=1, H=1, N=2, M=2)
    student_x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = RelationKLLoss()(Relation(student_x, eye, 1.0), teacher)
    assert loss.item() == pytest.approx(0.130812, abs=1e-6)
    loss.backward()
    # d KL / d z_s = (p_s - p_t) / rows: (1/2 - 3/4) / 2 = -0.125 on the teacher's favourite entry of each row
    assert torch.allclose(student_x.grad, torch.tensor([[[[-0.125, 0.125], [0.125, -0.125]]]]))
    assert RelationKLLoss()(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_score_mse_by_hand():
    # differences 0, 2, 0, 4 -> squares 0, 4, 0, 16 -> mean 5; gradient 2 * difference / 4
    eye = torch.eye(2)[None, None]
    student_x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    loss = AttentionScoreLoss()(Relation(student_x, eye, 1.0), Relation(torch.tensor([[[[1.0, 0.0], [3.0, 0.0]]]]),
                                                                        eye, 1.0))
    assert loss.item() == pytest.approx(5.0)
    loss.backward()
    assert torch.allclose(student_x.grad, torch.tensor([[[[0.0, 1.0], [0.0, 2.0]]]]))


@pytest.mark.parametrize("shared", [False, True])
def test_the_lean_backward_matches_plain_autograd(shared):
    # the losses keep only d loss / d map; plain autograd on the full maps must give the same values and gradients
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4).requires_grad_(True)
    y = x if shared else torch.randn(2, 3, 5, 4).requires_grad_(True)  # shared: a value relation v v^T
    t_x, t_y = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 5, 6)
    student, teacher = Relation(x, y, 0.5), Relation(t_x, t_y, 6 ** -0.5)
    for lean, reference in [
        (RelationKLLoss(), lambda s, t: F.kl_div(s.log_softmax(-1), t.log_softmax(-1), reduction="sum",
                                                 log_target=True) / 30),
        (AttentionScoreLoss(), F.mse_loss),
    ]:
        value = lean(student, teacher)
        grads = torch.autograd.grad(value, [x] if shared else [x, y])
        expected = reference(student.logits(), teacher.logits())
        expected_grads = torch.autograd.grad(expected, [x] if shared else [x, y])
        torch.testing.assert_close(value, expected)
        for grad, expected_grad in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_scores_attention_and_value_parts_from_q_k_v_by_hand():
    # student q = k = v = I (2 tokens, d 2): q k^T / sqrt(2) = [[a, 0], [0, a]], a = 1/sqrt(2)
    # teacher q = [[2, 0], [0, 0]], k = [[1, 0], [1, 0]]: q k^T / sqrt(2) = [[sqrt 2, sqrt 2], [0, 0]]
    # scores: differences [[a - sqrt 2, -sqrt 2], [0, a]] = [[-a, -2a], [0, a]] -> squares 0.5, 2, 0, 0.5 -> mean 0.75
    # attention: both teacher rows are uniform (equal scores) -> KL_UNIFORM_VS_A per row
    # value: teacher v = [[1, 1], [1, 1]] -> v v^T / sqrt(2) all equal -> uniform rows again; student v = I as q k^T
    student = _qkv([[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 0], [0, 1]])
    teacher = _qkv([[2, 0], [0, 0]], [[1, 0], [1, 0]], [[1, 1], [1, 1]])
    loss = AttentionDistillationLoss(["scores", "attention", "value"])
    total = loss([student], [teacher])
    assert loss.last_terms["scores"].item() == pytest.approx(0.75)
    assert loss.last_terms["attention"].item() == pytest.approx(KL_UNIFORM_VS_A, abs=1e-6)
    assert loss.last_terms["value"].item() == pytest.approx(KL_UNIFORM_VS_A, abs=1e-6)
    assert KL_UNIFORM_VS_A == pytest.approx(0.061240, abs=1e-6)
    assert total.item() == pytest.approx(0.75 + 2 * KL_UNIFORM_VS_A, abs=1e-6)
    # pairs add up (TinyBERT sums its layers)
    assert loss([student, student], [teacher, teacher]).item() == pytest.approx(2 * total.item(), abs=1e-6)


def test_relation_heads_concatenate_then_resplit_by_hand():
    # 2 heads of 1 channel: head 0 holds [1, 0] over the two tokens, head 1 [0, 1]; concatenated, token 0 = [1, 0] and
    # token 1 = [0, 1]; one relation head of 2 channels: x x^T / sqrt(2) = [[a, 0], [0, a]]
    x = torch.tensor([[[[1.0], [0.0]], [[0.0], [1.0]]]])  # (B=1, H=2, N=2, d=1)
    one = resplit_heads(x, 1)  # (1, 1, 2, 2)
    assert torch.equal(one, torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))
    assert torch.allclose(Relation(one, one, 2 ** -0.5).logits(), torch.eye(2)[None, None] * 2 ** -0.5)
    assert torch.equal(resplit_heads(x, 2), x)  # as many relation heads as heads: the heads themselves
    # vv on 1 relation head against a uniform teacher: the same two rows [a, 0], [0, a] -> KL_UNIFORM_VS_A
    student = QKV(x, x, x, 1.0)
    teacher = QKV(x, x, torch.ones(1, 2, 2, 1), 1.0)
    loss = AttentionDistillationLoss(["vv"], relation_heads=1)
    assert loss([student], [teacher]).item() == pytest.approx(KL_UNIFORM_VS_A, abs=1e-6)
    with pytest.raises(ValueError, match=r"relation_heads 3 does not divide the width 2"):
        resplit_heads(x, 3)


def test_relation_heads_compare_six_teacher_heads_with_three_student_heads():
    torch.manual_seed(0)
    student = QKV(*(torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3)), 8 ** -0.5)  # width 24
    teacher = QKV(*(torch.randn(2, 6, 5, 8) for _ in range(3)), 8 ** -0.5)  # width 48
    assert resplit_heads(student.q, 4).shape == (2, 4, 5, 6) and resplit_heads(teacher.q, 4).shape == (2, 4, 5, 12)
    loss = AttentionDistillationLoss(["qq", "kk", "vv", "qk"], relation_heads=4)
    value = loss([student], [teacher])
    value.backward()
    assert torch.isfinite(value) and value > 0 and set(loss.last_terms) == {"qq", "kk", "vv", "qk"}
    assert all(tensor.grad is not None and torch.isfinite(tensor.grad).all() for tensor in student[:3])
    with pytest.raises(ValueError, match=r"student has 3 heads and the teacher 6; use relation parts"):
        AttentionDistillationLoss(["attention"])([student], [teacher])


def test_relation_parts_on_native_heads_equal_the_per_head_parts():
    torch.manual_seed(1)
    student = QKV(*(torch.randn(2, 3, 5, 8) for _ in range(3)), 8 ** -0.5)
    teacher = QKV(*(torch.randn(2, 3, 5, 8) for _ in range(3)), 8 ** -0.5)
    loss = AttentionDistillationLoss(["attention", "qk", "value", "vv"], relation_heads=3)
    loss([student], [teacher])
    terms = loss.last_terms
    assert torch.allclose(terms["attention"], terms["qk"]) and torch.allclose(terms["value"], terms["vv"])


# ---------------------------------------------------------------------------------------------------------------------
# attention rebuilt from qkv


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_from_qkv_equals_timms_non_fused_attention(qk_norm):
    torch.manual_seed(0)
    model = nn.Module()
    model.blocks = nn.Sequential(Block(dim=16, num_heads=2, qkv_bias=True, qk_norm=qk_norm)).eval()
    attn = model.blocks[0].attn
    if qk_norm:  # non-trivial norms, so applying them (or not) shows
        for norm in (attn.q_norm, attn.k_norm):
            nn.init.normal_(norm.weight, 1.0, 0.5), nn.init.normal_(norm.bias, 0.0, 0.5)
    attn.fused_attn = False
    seen = {}
    attn.qkv.register_forward_hook(lambda module, args, output: seen.update(qkv=output))
    attn.attn_drop.register_forward_hook(lambda module, args, output: seen.update(probs=args[0]))  # softmax output
    model.blocks(torch.randn(3, 5, 16))
    (site,) = attention_sites(model, [-1], "student_layers")
    q, k, v = split_qkv(seen["qkv"], site)  # (3, 2, 5, 8)
    assert q.shape == (3, 2, 5, 8) and site.qkv_name == "blocks.0.attn.qkv"
    rebuilt = Relation(q, k, site.scale).logits().softmax(-1)  # (3, 2, 5, 5)
    torch.testing.assert_close(rebuilt, seen["probs"], rtol=1e-5, atol=1e-6)


def test_the_tapped_forward_keeps_fused_attention_and_the_term_rebuilds_the_same_maps(tiny_recipe):
    _, built, student, frozen = build_terms(tiny_recipe, [{"name": "attention", "parts": ["attention"],
                                                           "student_layers": [0, 1], "teacher_layers": "uniform"}],
                                            student=STUDENT, teacher=SAME_HEADS)
    term = built[0][2]
    assert [(s.block, t.block) for s, t in zip(term.student_sites, term.teacher_sites)] == [(0, 1), (1, 3)]
    assert term.needs.student_hooks == ("blocks.0.attn.qkv", "blocks.1.attn.qkv")
    assert term.needs.teacher_hooks == ("blocks.1.attn.qkv", "blocks.3.attn.qkv")
    assert term.needs.live_teacher_tokens and not term.needs.student_layers
    images = torch.randn(2, 3, 16, 16)
    student.eval()
    for block in student.blocks:  # the training forward on SDPA, which never forms the attention matrix
        block.attn.fused_attn = True
    outputs = TappedStudent(student, term.needs.student_taps)(images)
    qkv = term._qkv(outputs, term.student_sites[1], term.student_points[1], "student")
    seen = {}
    student.blocks[1].attn.fused_attn = False  # timm's explicit path, whose probabilities we can capture
    student.blocks[1].attn.attn_drop.register_forward_hook(lambda module, args, output: seen.update(probs=args[0]))
    student(images)
    torch.testing.assert_close(Relation(qkv.q, qkv.k, qkv.scale).logits().softmax(-1), seen["probs"], rtol=1e-5,
                               atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# the recipe term


def test_defaults_are_minilmv2_relations_on_the_last_blocks(tiny_recipe):
    recipe, built, student, frozen = build_terms(tiny_recipe, [{"name": "attention"}], student=STUDENT,
                                                 teacher=TEACHER)
    name, weight, term = built[0]
    assert (name, weight, recipe.losses[0].weight) == ("attention", 1.0, 1.0)
    assert term.loss.parts == ["qq", "kk", "vv"] and term.loss.relation_heads == 3  # the student's head count
    assert [(s.block, t.block) for s, t in zip(term.student_sites, term.teacher_sites)] == [(1, 3)]
    assert term.keep_prefix


def test_six_teacher_heads_teach_three_student_heads_through_the_term(tiny_recipe):
    _, built, student, frozen = build_terms(tiny_recipe, [{"name": "attention", "parts": ["qk", "vv"],
                                                           "relation_heads": 6, "student_layers": [0, 1],
                                                           "teacher_layers": "auto"}], student=STUDENT, teacher=TEACHER)
    term = built[0][2]
    student_outputs, teacher_outputs, targets = one_step_outputs(term, student, frozen)
    s_qkv = term._qkv(student_outputs, term.student_sites[0], term.student_points[0], "student")
    t_qkv = term._qkv(teacher_outputs, term.teacher_sites[0], term.teacher_points[0], "teacher")
    assert s_qkv.q.shape == (4, 3, 17, 8) and t_qkv.q.shape == (4, 6, 17, 8)  # class token kept: 1 + 16 tokens
    assert resplit_heads(s_qkv.q, 6).shape == (4, 6, 17, 4) and resplit_heads(t_qkv.q, 6).shape == (4, 6, 17, 8)
    loss = term(student_outputs, teacher_outputs, targets)
    loss.backward()
    assert torch.isfinite(loss) and set(term.last_terms) == {"qk", "vv"}
    assert student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert not list(term.parameters()) and all(p.grad is None for p in frozen.parameters())


def test_a_students_qk_norm_is_applied_and_trained_through_the_hook(tiny_recipe):
    normed = dict(STUDENT, kwargs=dict(STUDENT["kwargs"], qk_norm=True))
    _, built, student, frozen = build_terms(tiny_recipe, [{"name": "attention", "parts": ["qk"]}], student=normed,
                                            teacher=TEACHER)
    term = built[0][2]
    assert term.student_sites[0].q_norm is student.blocks[1].attn.q_norm  # the model's own module, not a copy
    assert not list(term.parameters())  # ... and not registered in the term (no second copy in the objective)
    term(*one_step_outputs(term, student, frozen)).backward()
    assert student.blocks[1].attn.q_norm.weight.grad.abs().sum() > 0
    assert student.blocks[1].attn.k_norm.weight.grad.abs().sum() > 0


def test_prefix_tokens_kept_or_dropped_and_grids_resampled(tiny_recipe):
    with pytest.raises(ConfigError, match=r"prefix_tokens: keep compares every token, but student block 1 gives 18 "
                                          r"tokens \(2 prefix \+ 16 patches on a 4x4 grid\) and teacher block 3 17 "
                                          r"tokens \(1 prefix \+ 16 patches"):
        build_terms(tiny_recipe, [{"name": "attention"}], student=dict(DISTILLED, kwargs=STUDENT["kwargs"]),
                    teacher=TEACHER)
    _, built, student, frozen = build_terms(tiny_recipe, [{"name": "attention", "prefix_tokens": "drop",
                                                           "parts": ["qk"]}],
                                            student=dict(DISTILLED, kwargs=STUDENT["kwargs"]), teacher=TEACHER)
    term = built[0][2]
    student_outputs, teacher_outputs, targets = one_step_outputs(term, student, frozen)
    assert term._qkv(student_outputs, term.student_sites[0], term.student_points[0], "student").q.shape[2] == 16
    assert torch.isfinite(term(student_outputs, teacher_outputs, targets))
    # a patch-2 teacher: 8x8 patches resampled onto the student's 4x4 grid; the class tokens stay
    fine = {"name": TEACHER["name"], "kwargs": dict(TEACHER["kwargs"], patch_size=2)}
    _, built, student, frozen = build_terms(tiny_recipe, [{"name": "attention"}], student=STUDENT, teacher=fine)
    term = built[0][2]
    student_outputs, teacher_outputs, targets = one_step_outputs(term, student, frozen)
    assert teacher_outputs.hooked["blocks.3.attn.qkv"].shape == (4, 65, 144)
    assert term._qkv(teacher_outputs, term.teacher_sites[0], term.teacher_points[0], "teacher",
                     (4, 4)).q.shape == (4, 6, 17, 8)
    assert torch.isfinite(term(student_outputs, teacher_outputs, targets))
    with pytest.raises(ConfigError, match=r"grid_mismatch: fail, but student block 1 gives 17 tokens \(1 prefix \+ "
                                          r"16 patches on a 4x4 grid\) and teacher block 3 65 tokens \(1 prefix \+ 64"):
        build_terms(tiny_recipe, [{"name": "attention", "grid_mismatch": "fail"}], student=STUDENT, teacher=fine)


@pytest.mark.parametrize("loss, teacher, message", [
    ({"name": "attention", "parts": ["scores", "attention"]}, TEACHER,
     r"parts \['scores', 'attention'\] compare heads one to one, but student block 1 has 3 heads and teacher block 3 "
     r"6; use relation parts"),
    ({"name": "attention", "relation_heads": 5}, TEACHER,
     r"relation_heads: 5 does not divide the 24 channels of student block 1's queries \(3 heads x 8\)"),
    ({"name": "attention", "relation_heads": 8}, dict(TEACHER, kwargs=dict(TEACHER["kwargs"], embed_dim=36)),
     r"relation_heads: 8 does not divide the 36 channels of teacher block 3's queries \(6 heads x 6\)"),
    ({"name": "attention", "teacher_layers": [9]}, TEACHER, r"teacher_layers: layer index 9 is out of range"),
    ({"name": "attention", "student_layers": ["blocks.0"]}, TEACHER, r"student_layers: 'blocks.0' is not a block "
                                                                     r"index"),
    ({"name": "attention", "teacher_layers": "uniform"}, dict(TEACHER, kwargs=dict(TEACHER["kwargs"], depth=3)),
     r"teacher_layers: uniform .* but 3 / 2 is not whole; use teacher_layers: auto"),
    ({"name": "attention"}, {"name": "vitkd_small_cnn"},
     r"teacher_layers: SmallCNN has no transformer blocks whose attention could be recomputed"),
    ({"name": "attention"}, CAIT, r"teacher_layers: block 3 of Cait has TalkingHeadAttn; the attention loss "
                                  r"recomputes softmax\(q k\^T \* scale\) from `attn.qkv` and supports timm's "
                                  r"Attention only"),
])
def test_bad_layers_heads_and_models_give_clear_errors(tiny_recipe, loss, teacher, message):
    with pytest.raises(ConfigError, match=message):
        build_terms(tiny_recipe, [loss], student=STUDENT, teacher=teacher)


@pytest.mark.parametrize("loss, message", [
    ({"name": "attention", "parts": ["qv", "heads"]}, r"losses\.0\.parts: expected a non-empty list of scores, "
                                                      r"attention, value, qq"),
    ({"name": "attention", "parts": []}, r"losses\.0\.parts: expected a non-empty list"),
    ({"name": "attention", "relation_heads": 0}, r"losses\.0\.relation_heads: expected an integer >= 1, got 0"),
    ({"name": "attention", "prefix_tokens": "cls"}, r"losses\.0\.prefix_tokens: 'cls' is not valid; valid values: "
                                                    r"keep, drop"),
    ({"name": "attention", "teacher_layers": "every"}, r"losses\.0\.teacher_layers: expected .*, auto or uniform"),
    ({"name": "attention", "heads": 3}, r"losses\.0\.heads: unknown parameter for loss 'attention'"),
])
def test_bad_parameters_are_refused_when_the_recipe_loads(tiny_recipe, loss, message):
    with pytest.raises(ConfigError, match=message):
        resolve_recipe(load_recipe(raw=tiny_recipe(teacher=TEACHER, losses=[loss])))


def test_a_logit_cache_is_refused_naming_the_term(tiny_recipe, tmp_path):
    with pytest.raises(ConfigError, match=r"losses\.0 \(attention\): the 'attention' loss needs the live teacher's "
                                          r"tokens, which a sparse-logit cache \(teacher.cache\) cannot provide; "
                                          r"remove teacher.cache and set teacher.name"):
        build_terms(tiny_recipe, [{"name": "attention"}], student=STUDENT, teacher=TEACHER, uses_cache=True)


def test_ce_kd_attention_and_hidden_train_together(tiny_recipe):
    raw = tiny_recipe(student=STUDENT, teacher=TEACHER, losses=[
        {"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5},
        {"name": "attention", "parts": ["qq", "kk", "vv", "qk"], "student_layers": [0, 1], "teacher_layers": "uniform"},
        {"name": "hidden"}])
    raw["train"].update(epochs=1, max_steps_per_epoch=2)
    summary = train(load_recipe(raw=raw))
    assert {"ce", "kd", "attention", "hidden"} <= set(summary["losses"]) and summary["top1"] is not None
    run = Path(raw["train"]["output_dir"]) / raw["name"]
    exported = load_file(run / "export" / "student.safetensors")
    plain = build_model(STUDENT["name"], dict(STUDENT["kwargs"], num_classes=10))
    assert set(exported) == set(plain.state_dict())  # the hidden term's projections stay out of the export


def test_the_memory_benchmark_runs_and_writes_its_results(tmp_path):
    import importlib.util
    import json

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_memory.py"
    spec = importlib.util.spec_from_file_location("attention_memory", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arguments = ["--batch-size", "2", "--tokens", "5", "--heads", "2", "--dim", "8", "--out", str(tmp_path)]
    assert module.main(arguments) == 0
    result = json.loads((tmp_path / "attention_memory.json").read_text())
    one_map = 2 * 2 * 5 * 5 * 4
    assert result["one_map_bytes"] == one_map
    # the KL keeps one map for backward and needs at most three at once: student, teacher, teacher probabilities
    assert one_map <= result["parts"]["attention (MiniLM KL)"]["peak_bytes"] <= 3 * one_map + 1024
    assert "timm Attention, non-fused" in result["block"] and (tmp_path / "attention_memory.md").is_file()
