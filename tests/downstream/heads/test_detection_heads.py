import pytest
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN

from vitkd.downstream.heads import build_detector, default_anchor_sizes
from vitkd.errors import ConfigError

from tiny_heads_setup import SMALL_DETECTOR, tiny_backbone


def _scenes(masks: bool):
    images = [torch.rand(3, 64, 80), torch.rand(3, 56, 64)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0], [10.0, 20.0, 50.0, 60.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[1.0, 1.0, 20.0, 30.0]]), "labels": torch.tensor([3])}]
    if masks:
        for image, target in zip(images, targets):
            target["masks"] = torch.zeros(len(target["labels"]), *image.shape[-2:], dtype=torch.uint8)
            for index, (x0, y0, x1, y1) in enumerate(target["boxes"].int().tolist()):
                target["masks"][index, y0:y1, x0:x1] = 1
    return images, targets


def test_default_anchor_sizes_are_torchvision_s():
    assert default_anchor_sizes([4, 8, 16, 32, 64]) == [32, 64, 128, 256, 512]


@pytest.mark.parametrize("kind, masks", [("plain", False), ("plain", True), ("hierarchical", True)])
def test_detector_trains_and_predicts(kind, masks):
    torch.manual_seed(0)
    detector = build_detector(tiny_backbone(kind), num_classes=3, masks=masks, anchor_sizes=[8, 16, 32, 64, 128],
                              **SMALL_DETECTOR)
    assert isinstance(detector, MaskRCNN if masks else FasterRCNN)
    assert detector.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    images, targets = _scenes(masks)
    losses = detector(images, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} | (
        {"loss_mask"} if masks else set())
    assert set(losses) == expected and all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    first_body_weight = next(detector.backbone.body.parameters())  # the patch embedding / stem
    assert first_body_weight.grad is not None and first_body_weight.grad.abs().sum() > 0
    detector.eval()
    with torch.no_grad():
        predictions = detector(images)
    for image, prediction in zip(images, predictions):
        assert prediction["boxes"].shape[1] == 4 and len(prediction["boxes"]) <= 10
        if len(prediction["boxes"]):  # boxes are clipped to the input image, in its pixels
            assert prediction["boxes"][:, 2].max() <= image.shape[-1]
            assert prediction["boxes"][:, 3].max() <= image.shape[-2]
        if masks:
            assert prediction["masks"].shape[-2:] == image.shape[-2:]


def test_fixed_size_resizes_every_image():
    detector = build_detector(tiny_backbone(), num_classes=2, fixed_size=(64, 64), **SMALL_DETECTOR)
    batch, _ = detector.transform([torch.rand(3, 40, 90)])
    assert batch.tensors.shape[-2:] == (64, 64)


def test_anchor_sizes_must_match_the_levels():
    with pytest.raises(ConfigError, match="downstream.head.anchor_sizes has 3 sizes but the backbone has 5 levels"):
        build_detector(tiny_backbone(), num_classes=2, anchor_sizes=[8, 16, 32])


def test_vitdet_heads_four_convs_one_fc_two_rpn_convs_and_layernorm():
    """ViTDet's heads: the box head is 4 convs of the pyramid width with channel-wise LayerNorm and one fully
    connected layer, the RPN has two 3x3 convs, the mask head's convs are normalised too; it trains and predicts."""
    from timm.layers import LayerNorm2d
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead

    torch.manual_seed(0)
    detector = build_detector(tiny_backbone("plain"), num_classes=3, masks=True, anchor_sizes=[8, 16, 32, 64, 128],
                              box_head="4conv1fc", rpn_convs=2, conv_norm="layernorm", **SMALL_DETECTOR)
    box_head = detector.roi_heads.box_head
    assert isinstance(box_head, FastRCNNConvFCHead)
    convs = [module for module in box_head.modules() if isinstance(module, torch.nn.Conv2d)]
    linears = [module for module in box_head.modules() if isinstance(module, torch.nn.Linear)]
    assert len(convs) == 4 and all(conv.out_channels == 16 for conv in convs)  # the pyramid's 16 channels
    assert len(linears) == 1 and linears[0].out_features == SMALL_DETECTOR["box_head_width"]
    assert sum(isinstance(module, LayerNorm2d) for module in box_head.modules()) == 4
    assert sum(isinstance(module, LayerNorm2d) for module in detector.roi_heads.mask_head.modules()) == 4
    assert len(detector.rpn.head.conv) == 2
    images, targets = _scenes(True)
    sum(detector(images, targets).values()).backward()
    detector.eval()
    assert len(detector(images)) == 2


def test_unknown_box_head_and_norm_are_named():
    with pytest.raises(ConfigError, match=r"downstream\.head\.box_head: unknown box head '4conv'; valid: 2mlp, "
                                          r"4conv1fc"):
        build_detector(tiny_backbone("plain"), num_classes=3, anchor_sizes=[8, 16, 32, 64, 128], box_head="4conv")
    with pytest.raises(ConfigError, match=r"downstream\.head\.conv_norm: unknown norm 'bn'; valid: none, layernorm"):
        build_detector(tiny_backbone("plain"), num_classes=3, anchor_sizes=[8, 16, 32, 64, 128], conv_norm="bn")
