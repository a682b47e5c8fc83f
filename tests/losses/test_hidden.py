"""The `hidden` term: MSE through a learned projection and the cosine loss worked by hand, TinyBERT's uniform layer
map, the embedding layer read at the block-0 input, prefix tokens, CNN teachers and clear errors."""

import math

import pytest
import torch

from conftest import tiny_recipe_dict
from test_feature_terms import DISTILLED, build_terms, one_step_outputs
from vitkd.config import load_recipe
from vitkd.errors import ConfigError
from vitkd.losses.hidden import HiddenStateLoss
from vitkd.tasks import resolve_recipe
from vitkd.training import build_trainer

STUDENT = {"name": "vit_tiny_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 2, "num_heads": 3}}
TEACHER = {"name": "vit_small_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 4, "num_heads": 6}}


def test_mse_through_the_projection_by_hand():
    loss = HiddenStateLoss([1, 2], [2, 2])
    assert isinstance(loss.projections[1], torch.nn.Identity)  # equal widths: no projection (TinyBERT's code)
    with torch.no_grad():
        loss.projections[0].weight.copy_(torch.tensor([[2.0], [1.0]]))
        loss.projections[0].bias.copy_(torch.tensor([0.0, 1.0]))
    # pair 0, 2 tokens: s = 3 -> W s + b = [6, 4] against t = [5, 5]; s = 0 -> [0, 1] against [0, 1]
    #   squared errors 1, 1, 0, 0 -> mean 0.5
    # pair 1, identity, 1 token: s = [1, 2] against t = [1, 0] -> squared errors 0, 4 -> mean 2
    student = [torch.tensor([[[3.0], [0.0]]], requires_grad=True), torch.tensor([[[1.0, 2.0]]])]
    teacher = [torch.tensor([[[5.0, 5.0], [0.0, 1.0]]]), torch.tensor([[[1.0, 0.0]]])]
    value = loss(student, teacher)
    assert value.item() == pytest.approx(2.5)
    assert loss.last_terms["layer0"].item() == pytest.approx(0.5) and loss.last_terms["layer1"].item() == 2.0
    value.backward()
    # d/dW of mean((W s + b - t)^2) over 4 elements: 2 * (1, -1) * 3 / 4 = (1.5, -1.5)
    assert torch.allclose(loss.projections[0].weight.grad, torch.tensor([[1.5], [-1.5]]))


def test_cosine_embedding_loss_by_hand():
    # token 0: s = [1, 0], t = [1, 1] -> cos = 1/sqrt(2) -> 1 - cos = 0.292893; token 1: s = [0, 2], t = [0, 5] ->
    # cos = 1 -> 0; mean over the 2 tokens 0.146447 (norms do not count)
    loss = HiddenStateLoss([2], [2], mode="cosine")
    value = loss([torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])], [torch.tensor([[[1.0, 1.0], [0.0, 5.0]]])])
    assert value.item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2)
    assert value.item() == pytest.approx(0.146447, abs=1e-6)


def test_defaults_pick_the_uniform_teacher_blocks_and_the_block_zero_input(tiny_recipe):
    recipe, built, student, frozen = build_terms(tiny_recipe, [{"name": "hidden"}], student=STUDENT, teacher=TEACHER)
    name, weight, term = built[0]
    assert (name, weight) == ("hidden", 1.0)
    # every student block, k = 4 / 2: block 0 <- teacher block 1, block 1 <- teacher block 3; the embedding pair first
    assert term.needs.student_layers == (0, 1) and term.needs.teacher_layers == (1, 3)
    assert term.needs.student_hooks == ("norm_pre",) == term.needs.teacher_hooks
    assert [t.block for t in term.teacher_points[1:]] == [1, 3] and term.names == ["embedding", "block0", "block1"]
    assert term.loss.student_dims == [24] * 3 and term.loss.teacher_dims == [48] * 3
    seen = {}
    student.blocks[0].register_forward_pre_hook(lambda module, args: seen.update(block0_input=args[0]))
    student_outputs, teacher_outputs, targets = one_step_outputs(term, student, frozen)
    # the embedding point is exactly what block 0 reads: class token + patch embeddings + position embeddings
    assert torch.equal(student_outputs.hooked["norm_pre"], seen["block0_input"])
    assert student_outputs.hooked["norm_pre"].shape == (4, 17, 24)
    loss = term(student_outputs, teacher_outputs, targets)
    loss.backward()
    assert set(term.last_terms) == {"embedding", "block0", "block1"}
    assert loss.item() == pytest.approx(sum(value.item() for value in term.last_terms.values()), rel=1e-6)
    for parameter in term.parameters():  # the projections train with the student
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    # the embedding pair reaches what a patch_embed hook would miss: position embeddings and the class token
    assert student.pos_embed.grad.abs().sum() > 0 and student.cls_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.parameters())


def test_explicit_and_auto_maps_cosine_mode_and_dropped_prefix(tiny_recipe):
    _, built, student, frozen = build_terms(tiny_recipe, [
        {"name": "hidden", "student_layers": [-1], "teacher_layers": "auto", "embedding": False,
         "prefix_tokens": "drop"},
        {"name": "hidden", "student_layers": [0, 0], "teacher_layers": [0, 2], "mode": "cosine",
         "prefix_tokens": "drop"}], student=dict(DISTILLED, kwargs=STUDENT["kwargs"]), teacher=TEACHER)
    auto, explicit = built[0][2], built[1][2]
    assert auto.needs.teacher_layers == (3,) and not auto.needs.student_hooks
    assert explicit.names == ["embedding", "block0", "block0_1"] and explicit.needs.teacher_layers == (0, 2)
    student_outputs, teacher_outputs, targets = one_step_outputs(explicit, student, frozen)
    assert student_outputs.tokens[0].shape == (4, 18, 24)  # class + distillation tokens, dropped by the term
    assert 0 <= explicit(student_outputs, teacher_outputs, targets).item() <= 2 * 3
    with pytest.raises(ConfigError, match=r"prefix_tokens: keep compares every token, but student block 0 gives 18 "
                                          r"tokens \(2 prefix \+ 16 patches on a 4x4 grid\) and teacher block 1 17"):
        build_terms(tiny_recipe, [{"name": "hidden", "embedding": False}],
                    student=dict(DISTILLED, kwargs=STUDENT["kwargs"]), teacher=TEACHER)


def test_a_cnn_teacher_is_read_through_hooks_without_the_embedding_layer(tiny_recipe):
    with pytest.raises(ConfigError, match=r"embedding: true reads the block-0 input through a hook on `norm_pre` "
                                          r"\(timm ViTs\), but the teacher SmallCNN has no such module; set "
                                          r"embedding: false"):
        build_terms(tiny_recipe, [{"name": "hidden", "teacher_layers": ["features.2", "features.5"]}],
                    student=STUDENT, teacher={"name": "vitkd_small_cnn"})
    with pytest.raises(ConfigError, match=r"teacher_layers: uniform maps student block indices onto the "
                                          r"teacher's blocks by depth; .* \(SmallCNN: none\)"):
        build_terms(tiny_recipe, [{"name": "hidden", "embedding": False}], student=STUDENT,
                    teacher={"name": "vitkd_small_cnn"})
    _, built, student, frozen = build_terms(tiny_recipe, [{"name": "hidden", "embedding": False, "prefix_tokens":
                                                           "drop", "teacher_layers": ["features.2", "features.5"]}],
                                            student=STUDENT, teacher={"name": "vitkd_small_cnn"})
    term = built[0][2]
    assert term.loss.teacher_dims == [32, 64] and [layout.grid for layout in term.student_layouts] == [(4, 4)] * 2
    assert torch.isfinite(term(*one_step_outputs(term, student, frozen)))


@pytest.mark.parametrize("loss, message", [
    ({"name": "hidden", "mode": "l1"}, r"losses\.0\.mode: 'l1' is not valid; valid values: mse, cosine"),
    ({"name": "hidden", "embedding": "yes"}, r"losses\.0\.embedding: expected true or false, got 'yes'"),
    ({"name": "hidden", "teacher_layers": "even"}, r"losses\.0\.teacher_layers: expected .*, auto or uniform"),
    ({"name": "hidden", "student_layers": [0.5]}, r"losses\.0\.student_layers: 0\.5 is not a block index"),
    ({"name": "hidden", "grid_mismatch": "crop"}, r"losses\.0\.grid_mismatch: 'crop' is not valid"),
    ({"name": "hidden", "projection": True}, r"losses\.0\.projection: unknown parameter for loss 'hidden'"),
])
def test_bad_parameters_are_refused_when_the_recipe_loads(tiny_recipe, loss, message):
    with pytest.raises(ConfigError, match=message):
        resolve_recipe(load_recipe(raw=tiny_recipe(teacher=TEACHER, losses=[loss])))


def test_the_classification_task_refuses_a_logit_cache_for_both_terms(tmp_path):
    raw = tiny_recipe_dict(tmp_path, student=STUDENT, teacher=dict(TEACHER, cache=str(tmp_path / "cache")),
                           losses=[{"name": "ce"}, {"name": "kd"}, {"name": "hidden"}, {"name": "attention"}])
    with pytest.raises(ConfigError, match=r"losses\.2 \(hidden\): the 'hidden' loss needs the live teacher's tokens, "
                                          r"which a sparse-logit cache \(teacher.cache\) cannot provide; remove "
                                          r"teacher.cache and set teacher.name"):
        build_trainer(load_recipe(raw=raw))
