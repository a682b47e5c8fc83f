"""Train and eval transforms through timm's `create_transform` (RandAugment, random erasing, crop pct, mean/std)."""

from __future__ import annotations

from typing import Callable

from timm.data import create_transform

from vitkd.config import DataConfig


def build_train_transform(cfg: DataConfig) -> Callable:
    """PIL image -> (3, img_size, img_size) float tensor, randomly augmented and normalised."""
    return create_transform(
        input_size=cfg.img_size,
        is_training=True,
        scale=tuple(cfg.scale),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment,
        interpolation=cfg.interpolation,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        re_prob=cfg.re_prob,
        re_mode="pixel",
        re_count=1,
    )


def build_eval_transform(img_size: int, mean: tuple, std: tuple, crop_pct: float = 0.875,
                         interpolation: str = "bicubic") -> Callable:
    """PIL image -> (3, img_size, img_size): resize to img_size / crop_pct, center crop, normalise."""
    return create_transform(input_size=img_size, is_training=False, interpolation=interpolation,
                            mean=tuple(mean), std=tuple(std), crop_pct=crop_pct)


def augmentation_description(cfg: DataConfig) -> dict:
    """Every setting that changes the training images (hashed into caches to detect a changed transform)."""
    keys = ("img_size", "scale", "hflip", "color_jitter", "auto_augment", "re_prob", "interpolation", "mean", "std",
            "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "label_smoothing")
    return {key: (list(v) if isinstance(v := getattr(cfg, key), tuple) else v) for key in keys}
