"""A small CNN registered with timm (`vitkd_small_cnn`): the teacher of the offline demo.

CNN teachers suit data-scarce ViT students (DeiT's observation): their inductive bias is what the student lacks.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three stages of two 3x3 conv blocks (the first two stages end in 2x2 max-pooling), global average pool, head.

    Input (B, in_chans, H, W) with H, W >= 4 -> logits (B, num_classes). Follows timm's model contract
    (`forward_features`, `forward_head`, `num_classes`, `reset_classifier`).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, widths: tuple[int, int, int] = (32, 64, 128),
                 drop_rate: float = 0.0, **kwargs) -> None:
        super().__init__()
        unknown = set(kwargs) - {"pretrained_cfg", "pretrained_cfg_overlay", "img_size", "cache_dir"}
        if unknown:
            raise TypeError(f"SmallCNN got unexpected arguments: {sorted(unknown)}")
        self.num_classes = num_classes
        self.num_features = widths[-1]
        stages = []
        channels = in_chans
        for index, width in enumerate(widths):
            stages += [_conv_block(channels, width), _conv_block(width, width)]
            if index < len(widths) - 1:
                stages.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, D, H/4, W/4)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # (B, D)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


default_cfgs = {
    "vitkd_small_cnn": dict(url="", num_classes=10, input_size=(3, 16, 16), pool_size=None, crop_pct=1.0,
                            interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                            first_conv="features.0.0", classifier="head"),
}


@register_model
def vitkd_small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """Small CNN (about 0.3M parameters at the default widths). No pretrained weights exist."""
    if pretrained:
        raise ValueError("vitkd_small_cnn has no pretrained weights; train it (see recipes/demo/teacher_cnn.yaml)")
    return SmallCNN(**kwargs)
