"""ADE20K-style segmentation folders on written fixtures: labels with and without `reduce_zero_label`, the class
count, and each layout or value problem named with its folder or file."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from vitkd.downstream.data.semantic import SemanticFolder
from vitkd.errors import ConfigError, DatasetError, is_user_error

#: stored values of the two annotations: ADE20K style, 0 = "other", 1..3 classes, 255 = unlabelled
STORED = {
    "room": np.array([[0, 1, 1, 2], [3, 3, 255, 0], [1, 2, 3, 0]], dtype=np.uint8),  # (3, 4)
    "street": np.array([[2, 2], [0, 1]], dtype=np.uint8),  # (2, 2)
}


def write_split(root: Path, split: str = "training", stored: dict = STORED, image_suffix: str = ".jpg") -> Path:
    for name, values in stored.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        height, width = values.shape
        Image.new("RGB", (width, height), (200, 100, 50)).save(root / "images" / split / f"{name}{image_suffix}")
        Image.fromarray(values).save(root / "annotations" / split / f"{name}.png")
    return root


def test_reduce_zero_label_ignores_other_and_shifts_classes_down(tmp_path):
    dataset = SemanticFolder(write_split(tmp_path), "training", reduce_zero_label=True, num_classes=3)
    assert len(dataset) == 2 and [image.stem for image, _ in dataset.samples] == ["room", "street"]
    image, mask = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 3, 4) and image.dtype == torch.float32
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
    assert mask.tolist() == [[255, 0, 0, 1], [2, 2, 255, 255], [0, 1, 2, 255]]  # 0 -> 255, v -> v - 1, 255 stays


def test_without_reduction_values_are_the_labels_and_the_class_count_is_inferred(tmp_path):
    dataset = SemanticFolder(write_split(tmp_path), "training")
    assert dataset.num_classes == 4  # 0..3 stored (255 ignored)
    assert dataset[1][1].tolist() == [[2, 2], [0, 1]]
    assert SemanticFolder(tmp_path, "training", reduce_zero_label=True).num_classes == 3


def test_png_images_and_transforms_receive_image_and_mask(tmp_path):
    seen = []

    def record(image, mask):
        seen.append((tuple(image.shape), tuple(mask.shape)))
        return image, mask + 0

    dataset = SemanticFolder(write_split(tmp_path, image_suffix=".png"), "training", transforms=record)
    dataset[1]
    assert seen == [((3, 2, 2), (2, 2))]


def test_value_outside_the_classes_names_file_and_stored_values(tmp_path):
    write_split(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(f"annotation {tmp_path / 'annotations/training/room.png'} has "
                                                     f"values 3 outside the 2 classes (stored 1..2, with 0 and 255 "
                                                     f"ignored)")) as raised:
        SemanticFolder(tmp_path, "training", reduce_zero_label=True, num_classes=2)
    assert is_user_error(raised.value)
    with pytest.raises(DatasetError, match=r"room\.png has values 3 outside the 3 classes \(stored 0\.\.2, with 255 "
                                           r"ignored\)"):
        SemanticFolder(tmp_path, "training", num_classes=3)


def test_value_check_deferred_to_the_item_with_check_values_false(tmp_path):
    dataset = SemanticFolder(write_split(tmp_path), "training", num_classes=3, check_values=False)
    assert dataset[1][1].shape == (2, 2)  # street holds 0..2: fine
    with pytest.raises(DatasetError, match=r"room\.png has values 3 outside the 3 classes"):
        dataset[0]


def test_ignore_index_inside_the_classes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"ignore_index 2 is one of the 4 classes \(0\.\.3\)"):
        SemanticFolder(write_split(tmp_path), "training", ignore_index=2, num_classes=4)


LAYOUT_PROBLEMS = [
    ("no annotation folder", lambda root: shutil.rmtree(root / "annotations/training"),
     r"image folder .*images/training has no annotations: .*annotations/training does not exist"),
    ("image without annotation", lambda root: (root / "annotations/training/street.png").unlink(),
     r"1 image\(s\) in .*images/training have no annotation PNG in .*annotations/training: street\.jpg"),
    ("annotation without image", lambda root: (root / "images/training/room.jpg").unlink(),
     r"1 annotation\(s\) in .*annotations/training have no image in .*images/training: room\.png"),
    ("size mismatch", lambda root: Image.fromarray(np.zeros((3, 5), np.uint8)).save(
        root / "annotations/training/room.png"),
     r"annotation .*room\.png is 5x3 but its image .*room\.jpg is 4x3 \(width x height\)"),
    ("colour annotation", lambda root: Image.new("RGB", (4, 3)).save(root / "annotations/training/room.png"),
     r"annotation .*room\.png has mode RGB; annotations hold one class index per pixel"),
    ("no images", lambda root: [path.unlink() for path in (root / "images/training").iterdir()],
     r"image folder .*images/training holds no images .* but .*annotations/training holds 2 annotation\(s\)"),
]


@pytest.mark.parametrize("case, damage, message", LAYOUT_PROBLEMS, ids=[case[0] for case in LAYOUT_PROBLEMS])
def test_layout_problems_are_named(tmp_path, case, damage, message):
    damage(write_split(tmp_path))
    with pytest.raises(DatasetError, match=message):
        SemanticFolder(tmp_path, "training", num_classes=4)


def test_missing_split_lists_the_splits_present(tmp_path):
    write_split(tmp_path)
    with pytest.raises(DatasetError, match=r"image folder .*images/validation does not exist \(.*images has: "
                                           r"training\)"):
        SemanticFolder(tmp_path, "validation")
    with pytest.raises(DatasetError, match=r"dataset root .*nowhere does not exist"):
        SemanticFolder(tmp_path / "nowhere", "training")
