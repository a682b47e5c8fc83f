"""Mixup/CutMix through `timm.data.Mixup`; label smoothing folds into the soft targets it returns."""

from __future__ import annotations

from typing import Optional

from timm.data import Mixup

from vitkd.config import DataConfig


def build_mixup(cfg: DataConfig, num_classes: int) -> Optional[Mixup]:
    """None when neither mixup nor cutmix is on. Batch mode: one lambda per batch, each image mixed with the
    batch's reverse (image i with image B-1-i)."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)
