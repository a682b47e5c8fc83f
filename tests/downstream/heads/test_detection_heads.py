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
