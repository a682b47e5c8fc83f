import pytest
import torch
from torch import nn

from vitkd.downstream.backbones import SimpleFeaturePyramid, build_backbone
from vitkd.downstream.backbones.simple_pyramid import VITDET_SCALES, scales_for_patch

from tiny_students import tiny_vit


def test_scales_for_patch():
    assert scales_for_patch(16) == VITDET_SCALES == (4.0, 2.0, 1.0, 0.5)
    assert scales_for_patch(4) == (1.0, 0.5, 0.25, 0.125)


def test_vitdet_levels_and_channels():
    pyramid = SimpleFeaturePyramid(32, 16, out_channels=8)
    x4, x2, x1, half = (stage[0] for stage in pyramid.stages)
    assert [type(layer) for layer in x4] == [nn.ConvTranspose2d, type(x4[1]), nn.GELU, nn.ConvTranspose2d]
    assert (x4[0].out_channels, x4[3].out_channels, x2.out_channels) == (16, 8, 16)  # D/2, D/4, D/2
    assert isinstance(x1, nn.Identity) and isinstance(half, nn.MaxPool2d)
    levels = pyramid(torch.randn(2, 32, 6, 5))
    assert [tuple(level.shape) for level in levels.values()] == [(2, 8, 24, 20), (2, 8, 12, 10), (2, 8, 6, 5),
                                                                 (2, 8, 3, 2), (2, 8, 2, 1)]
    assert pyramid.strides == [4, 8, 16, 32, 64]


@pytest.mark.parametrize("patch", [4, 8])
def test_other_patch_sizes_reach_the_same_strides(patch):
    backbone = build_backbone(tiny_vit(patch_size=patch), out_channels=8)
    assert backbone.strides == [4, 8, 16, 32, 64]
    assert [level.shape[-1] for level in backbone(torch.randn(1, 3, 64, 64)).values()] == [16, 8, 4, 2, 1]


def test_refuses_scales_it_cannot_build():
    with pytest.raises(ValueError, match="not a power of two"):
        SimpleFeaturePyramid(32, 16, scales=(3.0,))
    with pytest.raises(ValueError, match="divisible by 4"):
        SimpleFeaturePyramid(30, 16, scales=(4.0,))
