import pytest
import timm
import torch

from vitkd.downstream.backbones import HierarchicalBackbone, build_backbone
from vitkd.downstream.backbones.hierarchical import default_out_indices
from vitkd.errors import ConfigError

from tiny_students import tiny_tinyvit


def test_default_out_indices_skip_the_stride_two_stem():
    info = [{"reduction": 2}, {"reduction": 4}, {"reduction": 4}, {"reduction": 8}, {"reduction": 16}]
    assert default_out_indices(info) == [2, 3, 4]  # the last feature of each stride >= 4


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_tinyvit_stages_feed_the_fpn(size):
    backbone = build_backbone(tiny_tinyvit(), out_channels=16)
    assert isinstance(backbone, HierarchicalBackbone)
    assert backbone.strides == [4, 8, 16, 32, 64] and backbone.level_names == ["0", "1", "2", "3", "pool"]
    levels = backbone(torch.randn(2, 3, *size))
    h, w = size
    assert [tuple(level.shape) for level in levels.values()] == [
        (2, 16, h // 4, w // 4), (2, 16, h // 8, w // 8), (2, 16, h // 16, w // 16), (2, 16, h // 32, w // 32),
        (2, 16, -(-h // 64), -(-w // 64))]  # "pool": max-pool k1 s2 of the stride-32 level rounds up
    assert not any("head" in name for name, _ in backbone.named_parameters())


def test_chosen_out_indices():
    backbone = build_backbone(tiny_tinyvit(), out_indices=[1, 2], out_channels=16, extra_pool_level=False)
    assert backbone.strides == [8, 16]
    assert list(backbone(torch.randn(1, 3, 64, 64))) == ["0", "1"]
    with pytest.raises(ConfigError, match=r"downstream\.backbone\.out_indices \[5\] must name features"):
        build_backbone(tiny_tinyvit(), out_indices=[5])


def test_model_without_stage_description_is_refused():
    with pytest.raises(ConfigError, match="SmallCNN does not describe its stages"):
        build_backbone(timm.create_model("vitkd_small_cnn", pretrained=False))
