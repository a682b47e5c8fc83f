"""The `vitkd` and `manifold` loss terms: building from recipes, declared needs, token handling and clear errors."""

import pytest
import torch

from vitkd.config import load_recipe
from vitkd.tasks import resolve_recipe
from vitkd.errors import ConfigError
from vitkd.losses.inputs import Targets
from vitkd.losses.base import LossNeeds, TermContext
from vitkd.losses.registry import build_loss_terms
from vitkd.models.factory import build_model
from vitkd.tasks.classification.runners import TappedStudent, forward_teacher
from vitkd.models.teacher import FrozenTeacher

STUDENT = {"name": "vit_tiny_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}
TEACHER = {"name": "vit_small_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 4, "num_heads": 2}}
DISTILLED = {"name": "deit_tiny_distilled_patch16_224", "kwargs": dict(STUDENT["kwargs"])}
CAIT = {"name": "cait_s24_224", "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 4,
                                           "num_heads": 2, "depth_token_only": 1}}


def build_terms(tiny_recipe, losses, student=STUDENT, teacher=TEACHER, uses_cache=False):
    """(recipe, terms, student model, frozen teacher) built the way the trainer builds them, without data."""
    recipe = resolve_recipe(load_recipe(raw=tiny_recipe(student=student, teacher=teacher, losses=losses)))
    torch.manual_seed(0)
    student_model = build_model(recipe.student.name, dict(recipe.student.kwargs, num_classes=10))
    teacher_model = build_model(recipe.teacher.name, dict(recipe.teacher.kwargs, num_classes=10))
    frozen = FrozenTeacher(teacher_model, (0.5,) * 3, (0.5,) * 3)
    context = TermContext(student=student_model, teacher=None if uses_cache else teacher_model, num_classes=10,
                          uses_cache=uses_cache, seed=3, img_size=recipe.data.img_size)
    return recipe, build_loss_terms(recipe.losses, context), student_model, frozen


def one_step_outputs(term, student_model, frozen, batch=4):
    images = torch.randn(batch, 3, 16, 16)
    needs = term.needs
    student_outputs = TappedStudent(student_model, needs.student_taps)(images)
    teacher_outputs = forward_teacher(frozen, images, needs.teacher_taps)
    return student_outputs, teacher_outputs, Targets(labels=torch.zeros(batch, dtype=torch.long))


def test_defaults_and_weights_resolve_to_the_paper_setting(tiny_recipe):
    recipe, built, _, _ = build_terms(tiny_recipe, [{"name": "vitkd"}, {"name": "manifold"}])
    assert [weight for _, weight, _ in built] == [1.0, 1.0] == [term.weight for term in recipe.losses]
    vitkd, manifold = built[0][2], built[1][2]
    # first two blocks mimicked, the last block after the final norm generated (student depth 2, teacher depth 4)
    assert vitkd.needs == LossNeeds(student_layers=(0, 1), student_normed_layers=(1,), teacher_layers=(0, 1),
                                    teacher_normed_layers=(3,))
    assert (vitkd.loss.alpha, vitkd.loss.beta, vitkd.loss.mask_ratio, vitkd.loss.reduction) == (
        3e-5, 3e-6, 0.5, "sum_per_batch")
    assert (manifold.loss.k, manifold.loss.w_intra, manifold.loss.w_inter, manifold.loss.w_rand) == (192, 4, 0.1, 0.2)
    # first and last four blocks on both sides; on a 2-block student the repeated pairs count once
    pairs = [(s.block, t.block) for s, t in zip(manifold.pairs.student_points, manifold.pairs.teacher_points)]
    assert pairs == [(0, 0), (1, 1), (0, 2), (1, 3)]
    assert vitkd.needs.live_teacher_tokens and manifold.needs.uses_teacher


def test_negative_indices_and_auto_mapping_resolve_against_each_depth(tiny_recipe):
    _, built, _, _ = build_terms(tiny_recipe, [
        {"name": "vitkd", "student_layers": [-2], "teacher_layers": [-3], "student_deep_layer": -1,
         "teacher_deep_layer": -2, "deep_normed": False},
        {"name": "manifold", "student_layers": [0, -1], "teacher_layers": "auto", "k": 8}])
    vitkd, manifold = built[0][2], built[1][2]
    assert vitkd.needs.student_layers == (0, 1) and vitkd.needs.teacher_layers == (1, 2)
    assert vitkd.needs.student_normed_layers == () == vitkd.needs.teacher_normed_layers
    assert manifold.needs.teacher_layers == (1, 3)  # 2-block student onto a 4-block teacher: 0 -> 1, 1 -> 3


def test_prefix_tokens_of_a_distilled_student_and_a_cait_teacher_are_handled(tiny_recipe):
    _, built, student, frozen = build_terms(tiny_recipe, [{"name": "vitkd"}, {"name": "manifold", "k": 8}],
                                            student=DISTILLED, teacher=CAIT)
    vitkd = built[0][2]
    student_outputs, teacher_outputs, targets = one_step_outputs(vitkd, student, frozen)
    assert student_outputs.num_prefix_tokens == 2 and student_outputs.tokens[0].shape == (4, 18, 32)
    student_feats = vitkd.pairs.student(student_outputs)
    assert all(f.shape == (4, 16, 32) for f in student_feats)
    assert torch.equal(student_feats[0], student_outputs.tokens[0][:, 2:])  # class and distillation tokens dropped
    # CaiT reports a class token but its blocks never carry it: all 16 tokens are patches, none may be dropped
    assert teacher_outputs.num_prefix_tokens == 1 and teacher_outputs.tokens[0].shape == (4, 16, 48)
    teacher_feats = vitkd.pairs.teacher(teacher_outputs)
    assert torch.equal(teacher_feats[0], teacher_outputs.tokens[0]) and teacher_feats[-1].shape == (4, 16, 48)
    for _, _, term in built:
        assert torch.isfinite(term(*one_step_outputs(term, student, frozen)))


def test_projections_receive_gradients_and_the_teacher_none(tiny_recipe):
    _, built, student, frozen = build_terms(tiny_recipe, [{"name": "vitkd", "reduction": "mean", "alpha": 1.0,
                                                           "beta": 1.0}])
    term = built[0][2]
    loss = term(*one_step_outputs(term, student, frozen))
    loss.backward()
    assert set(term.last_terms) == {"mimic", "generation"}
    named = dict(term.named_parameters())
    assert {"loss.mimic_projections.0.weight", "loss.generation_projection.weight", "loss.mask_token",
            "loss.generation_block.0.weight"} <= set(named)
    for name, parameter in named.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_hooks_on_a_cnn_teacher_give_tokens_and_per_layer_widths(tiny_recipe):
    losses = [{"name": "vitkd", "teacher_layers": ["features.2", "features.5"], "teacher_deep_layer": "features.7"},
              {"name": "manifold", "student_layers": [0, 1], "teacher_layers": ["features.5", "features.7"], "k": 8}]
    _, built, student, frozen = build_terms(tiny_recipe, losses, teacher={"name": "vitkd_small_cnn"})
    vitkd, manifold = built[0][2], built[1][2]
    assert vitkd.needs.teacher_hooks == ("features.2", "features.5", "features.7") and not vitkd.needs.teacher_layers
    assert vitkd.loss.teacher_dims == [32, 64, 128] and vitkd.loss.student_dims == [32, 32, 32]
    # features.2 is an 8x8 map: resampled onto the student's 4x4 grid
    assert [s.grid for s in vitkd.pairs.teacher_shapes] == [(8, 8), (4, 4), (4, 4)]
    student_outputs, teacher_outputs, targets = one_step_outputs(vitkd, student, frozen)
    assert [f.shape for f in vitkd.pairs.teacher(teacher_outputs)] == [(4, 16, 32), (4, 16, 64), (4, 16, 128)]
    assert torch.isfinite(vitkd(student_outputs, teacher_outputs, targets))
    assert torch.isfinite(manifold(*one_step_outputs(manifold, student, frozen)))


@pytest.mark.parametrize("loss, teacher, message", [
    ({"name": "vitkd", "student_layers": [0, 5]}, TEACHER,
     r"losses\.0 \(vitkd\): student_layers: layer index 5 is out of range for depth 2 \(valid: -2\.\.1\)"),
    ({"name": "manifold", "student_layers": [0], "teacher_layers": [-5]}, TEACHER,
     r"teacher_layers: layer index -5 is out of range for depth 4 \(valid: -4\.\.3\)"),
    ({"name": "vitkd", "teacher_deep_layer": 9}, TEACHER, r"teacher_deep_layer: layer index 9 .* \(valid: -4\.\.3\)"),
    ({"name": "manifold", "student_layers": [0, 1], "teacher_layers": [0]}, TEACHER,
     r"student_layers \(\[0, 1\]\) and teacher_layers \(\[0\]\) must have the same length"),
    ({"name": "manifold", "student_layers": [0], "teacher_layers": ["features.9"]}, {"name": "vitkd_small_cnn"},
     r"teacher_layers: SmallCNN has no module named 'features.9' to hook; close matches: \['features.7'"),
    ({"name": "manifold", "student_layers": [0], "teacher_layers": [1]}, {"name": "vitkd_small_cnn"},
     r"teacher_layers: SmallCNN has no transformer blocks to take block index 1 from; name modules to hook"),
    ({"name": "manifold", "student_layers": [0], "teacher_layers": "auto"}, {"name": "vitkd_small_cnn"},
     r"teacher_layers: auto maps block indices by depth, but SmallCNN has no transformer blocks"),
    ({"name": "vitkd", "grid_mismatch": "fail"}, {"name": TEACHER["name"], "kwargs": dict(TEACHER["kwargs"],
                                                                                         patch_size=2)},
     r"grid_mismatch: fail, but student block 0 gives a 4x4 token grid and teacher block 0 a 8x8 grid"),
])
def test_bad_layers_hooks_and_grids_give_clear_errors(tiny_recipe, loss, teacher, message):
    with pytest.raises(ConfigError, match=message):
        build_terms(tiny_recipe, [loss], teacher=teacher)


@pytest.mark.parametrize("loss, message", [
    ({"name": "vitkd", "mask_ratio": 0}, r"losses\.0\.mask_ratio: expected a number > 0\.0 and <= 1\.0, got 0"),
    ({"name": "vitkd", "reduction": "sum"}, r"losses\.0\.reduction: 'sum' is not valid; valid values: sum_per_batch"),
    ({"name": "vitkd", "student_layers": [0, 1.5]}, r"losses\.0\.student_layers: 1\.5 is not a block index"),
    ({"name": "manifold", "teacher_layers": "every"}, r"losses\.0\.teacher_layers: expected a list .*, or auto"),
    ({"name": "manifold", "grid_mismatch": "error"}, r"grid_mismatch: 'error' is not valid; valid values: interp"),
    ({"name": "manifold", "k": 0}, r"losses\.0\.k: expected an integer >= 1, got 0"),
    ({"name": "manifold", "layers": [0]}, r"losses\.0\.layers: unknown parameter for loss 'manifold'"),
])
def test_bad_parameters_are_refused_when_the_recipe_loads(tiny_recipe, loss, message):
    with pytest.raises(ConfigError, match=message):
        resolve_recipe(load_recipe(raw=tiny_recipe(teacher=TEACHER, losses=[loss])))


@pytest.mark.parametrize("name", ["vitkd", "manifold"])
def test_feature_terms_refuse_a_logit_cache_and_a_missing_teacher(tiny_recipe, name):
    with pytest.raises(ConfigError, match=rf"the '{name}' loss needs the live teacher's tokens, which a "
                                          r"sparse-logit cache \(teacher.cache\) cannot provide"):
        build_terms(tiny_recipe, [{"name": name}], uses_cache=True)
    recipe = resolve_recipe(load_recipe(raw=tiny_recipe(losses=[{"name": name}])))
    context = TermContext(student=build_model(STUDENT["name"], STUDENT["kwargs"]), teacher=None, num_classes=10,
                          img_size=16)
    with pytest.raises(ConfigError, match=rf"the '{name}' loss needs a teacher: set teacher.name"):
        build_loss_terms(recipe.losses, context)


def test_needs_union_and_teacher_use_cover_normed_layers_and_hooks():
    a = LossNeeds(student_layers=(1,), teacher_normed_layers=(11,))
    b = LossNeeds(student_layers=(0, 1), teacher_hooks=("features.5",), student_normed_layers=(3,))
    union = a.union(b)
    assert union.student_layers == (0, 1) and union.teacher_normed_layers == (11,)
    assert union.teacher_hooks == ("features.5",) and union.student_normed_layers == (3,)
    assert LossNeeds(teacher_hooks=("x",)).live_teacher_tokens and LossNeeds(teacher_normed_layers=(0,)).uses_teacher
    assert not LossNeeds(student_layers=(0,)).uses_teacher


@pytest.mark.parametrize("recipe, pairs", [
    ("vitkd_deit_tiny.yaml", [(0, 0), (1, 1), (11, 11)]),
    ("manifold_deit_tiny_cait_s24.yaml", [(0, 0), (1, 1), (2, 2), (3, 3), (8, 20), (9, 21), (10, 22), (11, 23)]),
])
def test_imagenet_recipes_build_their_feature_terms_on_the_real_architectures(recipe, pairs):
    from pathlib import Path

    recipe = resolve_recipe(load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "imagenet" / recipe))
    context = TermContext(student=build_model(recipe.student.name, recipe.student.kwargs),
                          teacher=build_model(recipe.teacher.name, recipe.teacher.kwargs), num_classes=1000,
                          img_size=recipe.data.img_size)
    term = build_loss_terms(recipe.losses, context)[-1][2]
    assert [(s.block, t.block) for s, t in zip(term.pairs.student_points, term.pairs.teacher_points)] == pairs
    assert {shape.grid for shape in term.pairs.student_shapes + term.pairs.teacher_shapes} == {(14, 14)}
