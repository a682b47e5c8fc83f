"""Tiny timm students for the backbone tests (built in milliseconds, random weights)."""

import timm

#: a 2-block ViT on a 4x4 grid of 16-pixel patches
TINY_VIT = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2)
#: TinyViT with one block per stage and 16..64 channels (strides 4, 8, 16, 32)
TINY_TINYVIT = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                    window_sizes=(2, 2, 2, 2))


def tiny_vit(**kwargs):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY_VIT, **kwargs})


def tiny_tinyvit(**kwargs):
    return timm.create_model("tiny_vit_5m_224", pretrained=False, **{**TINY_TINYVIT, **kwargs})
