"""Tiny backbones and small torchvision detector settings for the head tests."""

import timm

from vitkd.downstream.backbones import build_backbone

#: torchvision detector settings that keep a CPU step well under a second on 64-pixel images
SMALL_DETECTOR = dict(min_size=64, max_size=96, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64,
                      box_batch_size_per_image=32, box_detections_per_img=10, box_head_width=64,
                      mask_head_width=16)


def tiny_backbone(kind="plain", **kwargs):
    """A 2-block ViT (4x4 grid of 16-pixel patches) or a one-block-per-stage TinyViT, 16-channel neck."""
    if kind == "plain":
        student = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=16,
                                    embed_dim=32, depth=2, num_heads=2)
    else:
        student = timm.create_model("tiny_vit_5m_224", pretrained=False, embed_dims=(16, 32, 48, 64),
                                    depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_sizes=(2, 2, 2, 2))
    return build_backbone(student, **{"out_channels": 16, **kwargs})
