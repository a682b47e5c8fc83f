"""Detection and segmentation augmentation keeps boxes and masks on the image content they describe."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from vitkd.downstream.data.transforms import detection_transforms, segmentation_transforms
from vitkd.errors import ConfigError


def detection_sample(height: int = 48, width: int = 64) -> tuple[tv_tensors.Image, dict]:
    """Two bright L-shaped objects on a dark image: masks (2, H, W), boxes tight around them."""
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 5:25, 4:10] = 1
    masks[0, 19:25, 4:30] = 1  # an L: the box is not filled by the mask
    masks[1, 30:44, 40:60] = 1
    masks[1, 30:36, 34:40] = 1
    image = torch.full((3, height, width), 0.1)
    image[:, masks.bool().any(0)] = 0.9
    boxes = tv_tensors.BoundingBoxes([[4, 5, 30, 25], [34, 30, 60, 44]], format="XYXY", canvas_size=(height, width))
    target = {"boxes": boxes, "labels": torch.tensor([3, 7]), "masks": tv_tensors.Mask(masks), "image_id": 9}
    return tv_tensors.Image(image), target


def tight_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_flip_moves_image_masks_and_boxes_together():
    image, target = detection_sample()
    flip = detection_transforms(train=True, size=64, scale_range=(1.0, 1.0), hflip_prob=1.0)
    # scale 1 fits the 48 x 64 image into 64 x 64 unchanged; the crop then pads 16 rows at a random offset
    out_image, out = flip(image, target)
    assert out_image.shape == (3, 64, 64) and out["masks"].shape == (2, 64, 64)
    assert out["labels"].tolist() == [3, 7] and out["image_id"] == 9
    rows = torch.nonzero(out_image[0].sum(1) > 0, as_tuple=True)[0]  # the image's rows inside the padding
    top = int(rows.min())
    assert torch.equal(out_image[:, top:top + 48], image.flip(-1))
    assert torch.equal(out["masks"][:, top:top + 48], target["masks"].flip(-1))
    # x' = W - x: [4, 5, 30, 25] -> [34, 5 + top, 60, 25 + top]
    assert out["boxes"].tolist() == [[34, 5 + top, 60, 25 + top], [4, 30 + top, 30, 44 + top]]
    for box, mask in zip(out["boxes"], out["masks"]):
        assert box.tolist() == tight_box(mask)  # the mask's ink is still exactly under its box


@pytest.mark.parametrize("seed", range(6))
def test_random_scale_crop_and_flip_keep_boxes_and_masks_on_the_objects(seed):
    torch.manual_seed(seed)
    image, target = detection_sample()
    out_image, out = detection_transforms(train=True, size=40, scale_range=(0.5, 2.0), hflip_prob=0.5)(image, target)
    assert out_image.shape == (3, 40, 40) and out["masks"].shape[1:] == (40, 40)
    assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"])
    assert set(out["labels"].tolist()) <= {3, 7}
    for box, mask in zip(out["boxes"], out["masks"]):
        x1, y1, x2, y2 = box.tolist()
        assert x2 - x1 >= 1 and y2 - y1 >= 1  # degenerate boxes were removed
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(xs) > 0
        # resampling moves edges by under a pixel: the ink stays within the box, reaching its sides
        assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1 and ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
        assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
    # the image's bright pixels are where the masks are (a mask left unflipped or unscaled would overlap them little)
    union = out["masks"].bool().any(0) if len(out["masks"]) else torch.zeros(40, 40, dtype=torch.bool)
    if union.any():  # bright (0.9) objects on a dark (0.1) image; only resampled edges take values in between
        assert out_image[0][union].mean() > 0.6 and out_image[0][~union].mean() < 0.25


def test_boxes_cropped_away_are_removed_with_their_labels_and_masks():
    image, target = detection_sample()
    torch.manual_seed(0)
    removed = 0
    for _ in range(20):  # 16 x 16 crops of a 2x image: objects often fall outside
        _, out = detection_transforms(train=True, size=16, scale_range=(2.0, 2.0), hflip_prob=0.0)(image, target)
        assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"])
        removed += 2 - len(out["boxes"])
        for label, mask in zip(out["labels"].tolist(), out["masks"]):
            assert mask.any(), f"label {label} kept without its object"
    assert removed > 0


def test_evaluation_transforms_change_no_geometry():
    image, target = detection_sample()
    out_image, out = detection_transforms(train=False, size=32)(image, target)
    assert torch.equal(out_image, image) and torch.equal(out["boxes"], target["boxes"])
    mask = tv_tensors.Mask(torch.randint(0, 4, (48, 64)))
    out_image, out_mask = segmentation_transforms(train=False, size=32)(image, mask)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
    uint8_image = tv_tensors.Image((image * 255).round().to(torch.uint8))
    assert torch.allclose(detection_transforms(train=False, size=32)(uint8_image, target)[0], image, atol=1 / 255)


def test_segmentation_padding_is_ignored_and_labels_follow_the_pixels():
    torch.manual_seed(0)
    labels = torch.zeros(20, 30, dtype=torch.int64)
    labels[:, 10:20] = 1
    labels[5:15, 20:] = 2
    image = tv_tensors.Image((0.2 + 0.3 * labels.float()).expand(3, -1, -1).clone())  # grey level encodes class
    transform = segmentation_transforms(train=True, size=64, scale_range=(0.5, 0.5), hflip_prob=0.5, ignore_index=255)
    out_image, out_mask = transform(image, tv_tensors.Mask(labels))
    # shorter side -> 32: a 32 x 48 image padded into 64 x 64; padding is black in the image, ignored in the mask
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64) and out_mask.dtype == torch.int64
    padding = out_image[0] == 0
    assert torch.equal(padding, out_mask == 255) and int((~padding).sum()) == 32 * 48
    inside = out_mask != 255
    expected = ((out_image[0][inside] - 0.2) / 0.3).round().long()
    assert (expected == out_mask[inside]).float().mean() > 0.95  # only resampled edges may differ
    assert set(out_mask[inside].tolist()) == {0, 1, 2}


def test_segmentation_random_resize_draws_the_shorter_side_within_the_scale_range():
    image, mask = tv_tensors.Image(torch.rand(3, 10, 20)), tv_tensors.Mask(torch.zeros(10, 20, dtype=torch.int64))
    transform = segmentation_transforms(train=True, size=32, scale_range=(0.5, 1.0), hflip_prob=0.0)
    torch.manual_seed(0)
    # the shorter side (height) becomes 16..32 and fits the 32 x 32 crop: the rows left unpadded show it
    heights = [int((transform(image, mask)[1] != 255).any(1).sum()) for _ in range(40)]
    assert min(heights) >= 16 and max(heights) <= 32 and len(set(heights)) > 5


@pytest.mark.parametrize("arguments, message", [
    ({"size": 0}, r"transform size must be a positive integer, got 0"),
    ({"size": 8, "scale_range": (2.0, 1.0)},
     r"scale_range must be \[low, high\] with 0 < low <= high, got \[2\.0, 1\.0\]"),
    ({"size": 8, "hflip_prob": 1.5}, r"hflip_prob must be in \[0, 1\], got 1\.5"),
])
def test_bad_arguments_are_config_errors(arguments, message):
    for build in (detection_transforms, segmentation_transforms):
        with pytest.raises(ConfigError, match=message):
            build(train=True, **arguments)
