"""Layer-wise lr decay through timm's optimizer factory and scheduler, on a whole downstream model."""

import pytest
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from vitkd.downstream.backbones import build_backbone
from vitkd.downstream.heads import build_segmenter

from tiny_students import tiny_vit


def _learning_rates(model, layer_decay, lr=1.0):
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=0.1, layer_decay=layer_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=10, warmup_epochs=0)
    scheduler.step(0)  # timm's scheduler writes lr * lr_scale into each group
    by_name = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            by_name[names[id(parameter)]] = (group["lr"], group["weight_decay"])
    return by_name


def test_layer_decay_learning_rates_by_hand():
    """Two blocks, decay 0.5: layers stem 0, block 0 -> 1, block 1 and the final norm -> 2, pyramid and head -> 3;
    scale 0.5 ** (3 - layer)."""
    model = build_segmenter(build_backbone(tiny_vit(), out_channels=16), num_classes=3, channels=8)
    rates = _learning_rates(model, 0.5)
    assert rates["backbone.body.patch_embed.proj.weight"] == (pytest.approx(0.125), 0.1)
    assert rates["backbone.body.pos_embed"] == (pytest.approx(0.125), 0.0)  # no weight decay, as timm lists it
    assert rates["backbone.body.blocks.0.attn.attention.qkv.weight"] == (pytest.approx(0.25), 0.1)
    assert rates["backbone.body.blocks.1.mlp.fc2.weight"] == (pytest.approx(0.5), 0.1)
    assert rates["backbone.body.norm.weight"] == (pytest.approx(0.5), 0.0)  # 1-D: no weight decay
    assert rates["backbone.pyramid.stages.0.1.weight"] == (pytest.approx(1.0), 0.1)
    assert rates["head.classifier.weight"] == (pytest.approx(1.0), 0.1)
    assert len(rates) == sum(1 for _ in model.parameters())


def test_frozen_body_is_not_optimised_and_stays_in_eval():
    model = build_segmenter(build_backbone(tiny_vit(drop_path_rate=0.5), freeze=True, out_channels=16),
                            num_classes=3, channels=8)
    rates = _learning_rates(model, 0.5)
    assert not any(name.startswith("backbone.body.") for name in rates)
    assert "backbone.pyramid.stages.0.1.weight" in rates
    model.train()
    assert not model.backbone.body.training and model.backbone.pyramid.training
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.backbone.body.blocks[0](torch.ones(2, 2, 2, 32)),
                               model.backbone.body.blocks[0](torch.ones(2, 2, 2, 32)))  # no drop path when frozen
    model(images).sum().backward()
    assert model.backbone.body.patch_embed.proj.weight.grad is None
