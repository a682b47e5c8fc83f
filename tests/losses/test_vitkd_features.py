import io

import pytest
import timm
import torch

from vitkd.losses.vitkd_features import ViTKDLoss
from vitkd.models.taps import extract_features

TINY = dict(pretrained=False, img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=5)


def _identity_generation(loss: ViTKDLoss, mask_value: float) -> None:
    """Width-1 generation block made of identity kernels: G(x) = relu(x); mask token set to `mask_value`."""
    with torch.no_grad():
        for conv in (loss.generation_block[0], loss.generation_block[2]):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
        loss.mask_token.fill_(mask_value)


def test_mimic_term_hand_computed():
    # width 1 on both sides -> identity projections. B=2, N=4 (2x2 grid).
    # layer 0: student 0, teacher 1 -> 8 squared errors of 1 -> sum 8, / B = 4
    # layer 1: student 1, teacher 3 -> 8 squared errors of 4 -> sum 32, / B = 16
    # sum_per_batch: alpha * (4 + 16) = 0.5 * 20 = 10; mean: alpha * (1 + 4) = 2.5
    student = [torch.zeros(2, 4, 1), torch.ones(2, 4, 1), torch.ones(2, 4, 1)]
    teacher = [torch.ones(2, 4, 1), 3 * torch.ones(2, 4, 1), torch.ones(2, 4, 1)]
    for reduction, expected in (("sum_per_batch", 10.0), ("mean", 2.5)):
        loss = ViTKDLoss(1, 1, grid_size=(2, 2), alpha=0.5, beta=0.0, reduction=reduction)
        total = loss(student, teacher)
        assert loss.last_terms["mimic"].item() == pytest.approx(expected)
        assert loss.last_terms["generation"].item() == 0.0
        assert total.item() == pytest.approx(expected)


def test_generation_term_hand_computed_counts_masked_tokens_only():
    # G(x) = relu(x), mask token 3, student deep tokens 5, teacher 1, B=2, N=4, lambda=0.5 -> 2 masked per sample.
    # masked: (3 - 1)^2 = 4 each, 4 masked tokens -> sum 16; unmasked tokens would add (5 - 1)^2 = 16 each if counted.
    # sum_per_batch: beta * 16 / (B * lambda) = 0.25 * 16 / 1 = 4; mean: beta * 16 / (B * M * D) = 0.25 * 16 / 4 = 1
    student = [5 * torch.ones(2, 4, 1)]
    teacher = [torch.ones(2, 4, 1)]
    for reduction, beta, expected in (("sum_per_batch", 0.25, 4.0), ("mean", 0.25, 1.0),
                                      # mean with beta * M * D / lambda = 0.25 * 2 * 1 / 0.5 = 1 equals the default
                                      ("mean", 1.0, 4.0)):
        loss = ViTKDLoss(1, 1, num_mimic_layers=0, grid_size=(2, 2), alpha=0.0, beta=beta, reduction=reduction)
        _identity_generation(loss, mask_value=3.0)
        total = loss(student, teacher)
        assert loss.last_mask.sum(dim=1).tolist() == [2, 2]
        assert loss.last_terms["generation"].item() == pytest.approx(expected)
        assert total.item() == pytest.approx(expected)


def test_generation_uses_the_spatial_grid():
    # A 1x3 grid of tokens: with a conv kernel that copies the left neighbour, a masked token in the middle becomes
    # relu(left neighbour) = relu(value of token 0); only a (B, D, H, W) reshape in row-major order gives that.
    loss = ViTKDLoss(1, 1, num_mimic_layers=0, grid_size=(1, 3), mask_ratio=0.3, alpha=0.0, beta=1.0)
    with torch.no_grad():
        loss.generation_block[0].weight.zero_()
        loss.generation_block[0].weight[0, 0, 1, 0] = 1.0  # output(w) = input(w - 1)
        loss.generation_block[0].bias.zero_()
        loss.generation_block[2].weight.zero_()
        loss.generation_block[2].weight[0, 0, 1, 1] = 1.0  # identity
        loss.generation_block[2].bias.zero_()
    mask = torch.tensor([[False, True, False]])
    loss.sample_mask = lambda batch, tokens, device: mask  # force the masked token to the middle
    student = torch.tensor([[[7.0], [100.0], [0.0]]])
    teacher = torch.tensor([[[0.0], [5.0], [0.0]]])
    # middle output = student token 0 = 7 -> (7 - 5)^2 = 4; / (B * lambda) = 4 / 0.3
    assert loss([student], [teacher]).item() == pytest.approx(4 / 0.3)


@pytest.mark.parametrize("num_tokens, ratio, expected", [(16, 0.5, 8), (196, 0.5, 98), (7, 0.5, 4), (10, 0.3, 3),
                                                          (10, 0.7, 7), (10, 1.0, 10), (5, 0.01, 1)])
def test_mask_has_exact_count_per_sample(num_tokens, ratio, expected):
    loss = ViTKDLoss(4, 4, mask_ratio=ratio)
    mask = loss.sample_mask(6, num_tokens)
    assert mask.dtype == torch.bool and mask.shape == (6, num_tokens)
    assert mask.sum(dim=1).tolist() == [expected] * 6


def test_masks_reproducible_per_seed_and_global_rng_untouched():
    gen = torch.Generator().manual_seed(0)
    inputs = [([torch.randn(3, 16, 8, generator=gen)], [torch.randn(3, 16, 8, generator=gen)]) for _ in range(2)]
    # construction initialises the projections and convs from the global RNG; the forwards must not touch it
    losses = [ViTKDLoss(8, 8, num_mimic_layers=0, grid_size=(4, 4), seed=seed) for seed in (0, 0, 1)]
    global_state = torch.get_rng_state()
    masks = []
    for loss in losses:
        masks.append([])
        for student, teacher in inputs:
            loss(student, teacher)
            masks[-1].append(loss.last_mask.clone())
    assert torch.equal(torch.get_rng_state(), global_state)
    first, again, other = masks
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # a fresh mask each step
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0][0], first[0][1])  # per-sample masks


def test_generator_state_round_trips_through_state_dict():
    loss = ViTKDLoss(8, 12, seed=3)
    loss.sample_mask(2, 16)
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    restored = ViTKDLoss(8, 12, seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.sample_mask(2, 16), loss.sample_mask(2, 16))
    assert torch.equal(restored.mimic_projections[0].weight, loss.mimic_projections[0].weight)


def test_gradients_reach_student_and_loss_parameters_but_not_the_frozen_teacher():
    torch.manual_seed(0)
    student = timm.create_model("deit_tiny_distilled_patch16_224", **TINY).train()  # 2 prefix tokens, width 32
    teacher = timm.create_model("vit_tiny_patch16_224", **{**TINY, "embed_dim": 48}).eval()  # 1 prefix token
    teacher.requires_grad_(False)
    images = torch.randn(2, 3, 16, 16)
    tapped_s = extract_features(student, images, layers=[0, 1], normed_layers=[-1])
    with torch.no_grad():
        tapped_t = extract_features(teacher, images, layers=[0, 1], normed_layers=[-1])
    loss = ViTKDLoss(32, 48, grid_size=tapped_s.grid_size)
    student_feats = [tapped_s.patches(0), tapped_s.patches(1), tapped_s.patches(-1, normed=True)]
    teacher_feats = [tapped_t.patches(0), tapped_t.patches(1), tapped_t.patches(-1, normed=True)]
    assert student_feats[0].shape == (2, 16, 32) and teacher_feats[0].shape == (2, 16, 48)
    total = loss(student_feats, teacher_feats)
    assert total.item() > 0
    assert total.item() == pytest.approx(sum(v.item() for v in loss.last_terms.values()), rel=1e-6)
    assert all(not v.requires_grad for v in loss.last_terms.values())
    total.backward()
    for name, param in loss.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert student.norm.weight.grad.abs().sum() > 0  # the deep layer is taken after the final norm
    assert all(p.grad is None for p in teacher.parameters())


def test_equal_widths_use_no_projection():
    loss = ViTKDLoss(16, 16)
    assert isinstance(loss.generation_projection, torch.nn.Identity)
    assert all(isinstance(p, torch.nn.Identity) for p in loss.mimic_projections)
    assert len(ViTKDLoss(16, 32, num_mimic_layers=3).mimic_projections) == 3


def test_clear_errors_for_bad_inputs():
    loss = ViTKDLoss(8, 12, grid_size=(4, 4))
    good_s, good_t = [torch.randn(2, 16, 8)] * 3, [torch.randn(2, 16, 12)] * 3
    with pytest.raises(ValueError, match="expects 3 student and teacher feature maps.*got 2 student"):
        loss(good_s[:2], good_t)
    with pytest.raises(ValueError, match=r"17 tokens do not fill \(4, 4\).*split_prefix"):
        loss([torch.randn(2, 17, 8)] * 3, [torch.randn(2, 17, 12)] * 3)
    with pytest.raises(ValueError, match=r"mimic layer 0.*differ in batch or token count.*align_token_grid"):
        loss([torch.randn(2, 17, 8)] + good_s[1:], good_t)
    with pytest.raises(ValueError, match=r"deep layer.*widths student 8 / teacher 10.*teacher_dim=12"):
        loss(good_s, good_t[:2] + [torch.randn(2, 16, 10)])
    with pytest.raises(ValueError, match="non-square"):
        ViTKDLoss(8, 12, num_mimic_layers=0)([torch.randn(2, 12, 8)], [torch.randn(2, 12, 12)])
    with pytest.raises(ValueError, match="reduction must be one of"):
        ViTKDLoss(8, 12, reduction="sum")
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\]"):
        ViTKDLoss(8, 12, mask_ratio=0.0)


def test_per_layer_widths_for_hooked_stages():
    # e.g. CNN stages as teacher layers: one width per feature map (mimic layers, then the deep layer)
    loss = ViTKDLoss(student_dim=8, teacher_dim=[4, 8, 6], num_mimic_layers=2, grid_size=(2, 2))
    assert [type(p).__name__ for p in loss.mimic_projections] == ["Linear", "Identity"]
    assert loss.generation_projection.out_features == 6 and loss.mask_token.shape == (1, 1, 6)
    student = [torch.randn(2, 4, 8, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 4, width) for width in (4, 8, 6)]
    assert torch.isfinite(loss(student, teacher))
    with pytest.raises(ValueError, match=r"mimic layer 0\): widths student 8 / teacher 8 do not match the configured "
                                         r"student_dim=8 / teacher_dim=4"):
        loss(student, [torch.randn(2, 4, 8)] + teacher[1:])
    with pytest.raises(ValueError, match=r"teacher_dim must be a positive int or 3 positive ints"):
        ViTKDLoss(student_dim=8, teacher_dim=[4, 8], num_mimic_layers=2)
