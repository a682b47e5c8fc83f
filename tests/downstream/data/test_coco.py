"""COCO-format loader on small written fixtures: contiguous labels from non-contiguous category ids, polygon and RLE
masks, crowd annotations out of the targets, and every kind of bad input named with its file and item."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_api
from torchvision import tv_tensors

from vitkd.downstream.data.coco import CocoDataset
from vitkd.errors import DatasetError, is_user_error

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2

#: image 1 (40 x 30): a polygon rectangle (category 7) and an RLE blob (category 12); image 2 (32 x 32): one box of
#: category 3 without a mask plus a crowd region; category ids deliberately out of order and with gaps
RLE_BLOB = np.zeros((30, 40), dtype=np.uint8)
RLE_BLOB[10:20, 25:31] = 1
RLE_BLOB[12:14, 31:35] = 1


CROWD_REGION = np.zeros((32, 32), dtype=np.uint8)
CROWD_REGION[20:32, :] = 1


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths (zeros first) over the column-major pixels, as a plain list."""
    pixels = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(pixels)) + 1
    runs = np.diff(np.concatenate([[0], changes, [pixels.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] + runs) if pixels[0] else runs}


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_api.encode(np.asfortranarray(mask))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}


def instances() -> dict:
    return {
        "images": [{"id": 101, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 205, "file_name": "b.png", "width": 32, "height": 32}],
        "categories": [{"id": 12, "name": "blob"}, {"id": 3, "name": "box"}, {"id": 7, "name": "rect"}],
        "annotations": [
            {"id": 1, "image_id": 101, "category_id": 7, "bbox": [2, 3, 10, 6], "area": 60.0, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 9, 2, 9]]},
            {"id": 2, "image_id": 101, "category_id": 12, "bbox": [25, 10, 10, 10], "area": 68.0, "iscrowd": 0,
             "segmentation": _rle(RLE_BLOB)},
            {"id": 3, "image_id": 205, "category_id": 3, "bbox": [4, 5, 20, 10], "area": 200.0, "iscrowd": 0,
             "segmentation": [[4, 5, 24, 5, 24, 15, 4, 15]]},
            {"id": 4, "image_id": 205, "category_id": 3, "bbox": [0, 20, 32, 12], "area": 384.0, "iscrowd": 1,
             "segmentation": _uncompressed_rle(CROWD_REGION)},
        ],
    }


def write_fixture(root: Path, dataset: dict) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image in dataset["images"]:
        pixels = rng.integers(0, 256, size=(image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / image["file_name"])
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps(dataset))
    return images, annotation_file


@pytest.fixture
def coco_files(tmp_path):
    return write_fixture(tmp_path, instances())


def test_category_ids_become_contiguous_labels_in_id_order(coco_files):
    dataset = CocoDataset(*coco_files)
    assert dataset.num_classes == 3
    assert dataset.label_to_category_id == {1: 3, 2: 7, 3: 12}
    assert dataset.category_id_to_label == {3: 1, 7: 2, 12: 3}
    assert dataset.category_names == ["box", "rect", "blob"]
    assert len(dataset) == 2 and dataset.image_ids == [101, 205]


def test_item_holds_xyxy_boxes_labels_and_polygon_and_rle_masks(coco_files):
    image, target = CocoDataset(*coco_files, with_masks=True)[0]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 30, 40) and image.dtype == torch.float32
    stored = np.array(Image.open(coco_files[0] / "a.png"))  # (30, 40, 3) uint8
    assert torch.allclose(image, torch.from_numpy(stored).permute(2, 0, 1).float() / 255)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].format.name == "XYXY"
    assert target["boxes"].dtype == torch.float32 and target["boxes"].canvas_size == (30, 40)
    assert target["boxes"].tolist() == [[2, 3, 12, 9], [25, 10, 35, 20]]  # [x, y, w, h] -> [x1, y1, x2, y2]
    assert target["labels"].tolist() == [2, 3] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 101
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.shape == (2, 30, 40) and masks.dtype == torch.uint8
    # the rectangle polygon covers exactly the pixels whose centres lie inside it: columns 2..11, rows 3..8
    expected_rectangle = np.zeros((30, 40), dtype=np.uint8)
    expected_rectangle[3:9, 2:12] = 1
    assert np.array_equal(masks[0].numpy(), expected_rectangle)
    assert np.array_equal(masks[1].numpy(), RLE_BLOB)  # compressed RLE decodes to the very mask written


def test_crowd_annotations_stay_out_of_targets_but_in_the_evaluation_index(coco_files):
    dataset = CocoDataset(*coco_files, with_masks=True)
    _, target = dataset[1]
    assert target["labels"].tolist() == [1] and target["boxes"].tolist() == [[4, 5, 24, 15]]
    assert target["masks"].shape == (1, 32, 32)
    crowd = [ann for ann in dataset.coco.imgToAnns[205] if ann["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["id"] == 4
    assert np.array_equal(dataset.coco.annToMask(crowd[0]), CROWD_REGION)  # uncompressed RLE, as COCO stores crowds


def test_without_masks_the_target_has_none_and_transforms_receive_image_and_target(coco_files):
    seen = []

    def record(image, target):
        seen.append((image.shape, sorted(target)))
        return image * 0, target

    image, target = CocoDataset(*coco_files, transforms=record)[0]
    assert "masks" not in target and seen == [((3, 30, 40), ["boxes", "image_id", "labels"])]
    assert float(image.abs().sum()) == 0.0  # what the transform returned is the item


def test_missing_ids_iscrowd_and_areas_are_filled_for_evaluation(tmp_path):
    dataset = instances()
    for annotation in dataset["annotations"]:
        del annotation["area"]
    del dataset["annotations"][0]["id"], dataset["annotations"][1]["iscrowd"]
    loaded = CocoDataset(*write_fixture(tmp_path, dataset))
    by_box = {tuple(ann["bbox"]): ann for ann in loaded.coco.dataset["annotations"]}
    assert by_box[(2, 3, 10, 6)]["id"] == 5  # after the largest id present (4)
    assert by_box[(2, 3, 10, 6)]["area"] == 60.0  # the polygon's pixels, as COCO defines area
    assert by_box[(25, 10, 10, 10)]["area"] == float(RLE_BLOB.sum()) and by_box[(25, 10, 10, 10)]["iscrowd"] == 0
    assert loaded.coco.anns[5] is by_box[(2, 3, 10, 6)]


def _edit(change):
    def edited() -> dict:
        dataset = instances()
        change(dataset)
        return dataset
    return edited


BAD_FILES = [
    ("missing image", _edit(lambda d: d["images"].append({"id": 300, "file_name": "gone.png", "width": 8,
                                                          "height": 8})),
     r"instances\.json: image id 300 \(gone\.png\) is not in the image folder .*images"),
    ("unknown image id", _edit(lambda d: d["annotations"][0].update(image_id=999)),
     r"instances\.json: annotation id 1 refers to image id 999, which the images list does not have"),
    ("box outside", _edit(lambda d: d["annotations"][0].update(bbox=[30, 3, 15, 6])),
     r"instances\.json: annotation id 1 \(image id 101, a\.png\) has box \[30, 3, 15, 6\] .* outside its 40x30 "
     r"image"),
    ("zero width", _edit(lambda d: d["annotations"][1].update(bbox=[25, 10, 0, 10])),
     r"instances\.json: annotation id 2 \(image id 101, a\.png\) has box \[25, 10, 0, 10\] of non-positive size"),
    ("negative height", _edit(lambda d: d["annotations"][2].update(bbox=[4, 5, 20, -1])),
     r"annotation id 3 \(image id 205, b\.png\) has box \[4, 5, 20, -1\] of non-positive size"),
    ("mask size", _edit(lambda d: d["annotations"][1].update(segmentation=_rle(np.zeros((32, 40), np.uint8)))),
     r"annotation id 2 \(image id 101, a\.png\) has a mask of size 32x40 \(height x width\), which differs from its "
     r"image's 30x40"),
    ("unknown category", _edit(lambda d: d["annotations"][2].update(category_id=5)),
     r"annotation id 3 \(image id 205, b\.png\) has category id 5, absent from the categories list \(ids 3, 7, 12\)"),
    ("short polygon", _edit(lambda d: d["annotations"][0].update(segmentation=[[2, 3, 12, 3]])),
     r"annotation id 1 .* has a polygon with 4 coordinates"),
    ("no images", _edit(lambda d: d.update(images=[], annotations=[])),
     r"instances\.json lists no images"),
    ("not instances", lambda: {"images": []},
     r"instances\.json has no 'annotations' list"),
]


@pytest.mark.parametrize("case, dataset, message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_annotation_files_are_named_with_the_item(tmp_path, case, dataset, message):
    written = dataset()
    image_dir, annotation_file = write_fixture(tmp_path, instances())  # the fixture's images exist
    annotation_file.write_text(json.dumps(written))
    with pytest.raises(DatasetError, match=message) as raised:
        CocoDataset(image_dir, annotation_file, with_masks=True)
    assert is_user_error(raised.value) and "\n" not in str(raised.value)


def test_several_problems_are_counted_after_the_first(tmp_path):
    dataset = instances()
    dataset["annotations"][0]["category_id"] = 5
    dataset["annotations"][2]["bbox"] = [4, 5, 0, 10]
    with pytest.raises(DatasetError, match=r"annotation id 1 .* category id 5, .* \(1 more problem\(s\) in this "
                                           r"file\)"):
        CocoDataset(*write_fixture(tmp_path, dataset))


def test_image_folder_without_annotation_file_and_missing_folder(tmp_path):
    image_dir, annotation_file = write_fixture(tmp_path, instances())
    with pytest.raises(DatasetError, match=re.escape(f"annotation file {tmp_path / 'nope.json'} for the images in "
                                                     f"{image_dir} does not exist")):
        CocoDataset(image_dir, tmp_path / "nope.json")
    with pytest.raises(DatasetError, match=re.escape(f"image folder {tmp_path / 'nowhere'} (the images of "
                                                     f"{annotation_file}) does not exist")):
        CocoDataset(tmp_path / "nowhere", annotation_file)
    annotation_file.write_text("{not json")
    with pytest.raises(DatasetError, match=r"instances\.json is not valid JSON"):
        CocoDataset(image_dir, annotation_file)


def test_image_of_another_size_than_its_entry_is_named_when_read(tmp_path):
    image_dir, annotation_file = write_fixture(tmp_path, instances())
    Image.new("RGB", (41, 30)).save(image_dir / "a.png")
    dataset = CocoDataset(image_dir, annotation_file)
    with pytest.raises(DatasetError, match=r"image .*a\.png is 41x30 pixels but .*instances\.json gives image id 101 "
                                           r"as 40x30"):
        dataset[0]


def test_box_within_a_pixel_of_the_border_is_clamped_to_the_image(tmp_path):
    dataset = instances()
    dataset["annotations"][0]["bbox"] = [-0.5, 3, 41, 6]  # half a pixel past both sides (rounding in an export)
    _, target = CocoDataset(*write_fixture(tmp_path, dataset))[0]
    assert target["boxes"][0].tolist() == [0, 3, 40, 9]
