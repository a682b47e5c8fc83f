"""COCO-format detection and instance-segmentation datasets: one image folder and one instances JSON.

Category ids (any integers, COCO's own have gaps) become contiguous labels 1..C in increasing id order; label 0 is
the background, as torchvision's detectors expect. `label_to_category_id` turns predicted labels back into the
file's ids for COCO evaluation. Crowd annotations (`iscrowd: 1`) are left out of the training targets; they stay in
the `coco` index, where COCOeval uses them as regions whose detections are neither rewarded nor punished.

The whole file is checked when the dataset is opened, and the first problem is raised as one `DatasetError` naming
the file and the item (with a count of any further problems):

- the annotation file or the image folder does not exist, the file is not COCO instances JSON, or it lists no images;
- an image listed in the file is not in the image folder;
- an annotation refers to an image id or a category id that the file does not list;
- a box `[x, y, width, height]` with a non-positive width or height, or lying outside its image by more than
  `BOX_TOLERANCE` pixels (boxes within the tolerance are clamped to the image);
- an RLE mask whose `size` differs from its image's height and width, or a polygon with fewer than 3 points;
- with `with_masks=True`, a non-crowd annotation without a segmentation.

An image whose decoded size differs from the width and height the file gives it is found when it is read (the check
needs the pixels) and raises `DatasetError` naming both.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from vitkd.downstream.data.cocoapi import coco_from_dict, pycocotools_mask
from vitkd.downstream.data.image_io import read_rgb_image
from vitkd.errors import DatasetError

#: Pixels a box may extend past the image border (rounding in exported annotations) before it is refused.
BOX_TOLERANCE = 1.0

Target = dict[str, Any]


class CocoDataset(Dataset):
    """Items: `(image, target)`, or what `transforms(image, target)` makes of them.

    - image: `tv_tensors.Image` float (3, H, W) in [0, 1].
    - target: `boxes` `tv_tensors.BoundingBoxes` XYXY float32 (K, 4) in pixels; `labels` int64 (K,) in 1..C;
      `masks` `tv_tensors.Mask` uint8 (K, H, W) (only with `with_masks`); `image_id` int (the file's id).
      K counts the image's non-crowd annotations and may be 0.

    Args:
        image_dir: folder holding the images the file names (`file_name` is relative to it).
        annotation_file: COCO instances JSON (`images`, `annotations`, `categories`).
        transforms: a `torchvision.transforms.v2` transform called as `transforms(image, target)`.
        with_masks: decode each annotation's polygon or RLE segmentation into `target["masks"]`.

    Attributes:
        num_classes: C, the number of categories (without the background).
        category_names: the category names in label order (label k is `category_names[k - 1]`).
        label_to_category_id / category_id_to_label: the label mapping both ways.
        coco: the `pycocotools.coco.COCO` index of the file (the ground truth COCOeval compares with).
        image_ids: the image ids in item order.
    """

    def __init__(self, image_dir: Union[str, Path], annotation_file: Union[str, Path],
                 transforms: Optional[Callable] = None, with_masks: bool = False) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.transforms = transforms
        self.with_masks = with_masks
        dataset = read_instances_file(self.annotation_file, self.image_dir)
        check_instances(dataset, self.annotation_file, self.image_dir, with_masks)
        _number_annotations(dataset)
        self.coco = coco_from_dict(dataset)
        _fill_areas(self.coco)
        categories = sorted(dataset["categories"], key=lambda category: category["id"])
        self.num_classes = len(categories)
        self.category_names: list[str] = [str(category.get("name", category["id"])) for category in categories]
        self.label_to_category_id: dict[int, int] = {label: category["id"]
                                                     for label, category in enumerate(categories, start=1)}
        self.category_id_to_label: dict[int, int] = {category_id: label
                                                     for label, category_id in self.label_to_category_id.items()}
        self.image_ids: list[int] = [image["id"] for image in dataset["images"]]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, Target]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = read_rgb_image(path)  # (3, H, W)
        height, width = image.shape[-2:]
        if (width, height) != (info["width"], info["height"]):
            raise DatasetError(f"image {path} is {width}x{height} pixels but {self.annotation_file} gives image id "
                               f"{image_id} as {info['width']}x{info['height']}; fix its width and height there")
        annotations = [ann for ann in self.coco.imgToAnns[image_id] if not ann.get("iscrowd", 0)]
        xywh = torch.tensor([ann["bbox"] for ann in annotations], dtype=torch.float32).reshape(-1, 4)  # (K, 4)
        boxes = tv_tensors.BoundingBoxes(xywh, format="XYWH", canvas_size=(height, width))
        boxes = F.clamp_bounding_boxes(F.convert_bounding_box_format(boxes, new_format="XYXY"))  # (K, 4)
        labels = torch.tensor([self.category_id_to_label[ann["category_id"]] for ann in annotations],
                              dtype=torch.int64)  # (K,)
        target: Target = {"boxes": boxes, "labels": labels, "image_id": int(image_id)}
        if self.with_masks:
            masks = np.zeros((0, height, width), dtype=np.uint8)
            if annotations:
                masks = np.stack([self.coco.annToMask(ann) for ann in annotations])  # (K, H, W) 0/1
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def read_instances_file(annotation_file: Path, image_dir: Path) -> dict[str, Any]:
    """The parsed JSON of a COCO instances file, after checking that it and its image folder exist."""
    if not image_dir.is_dir():
        raise DatasetError(f"image folder {image_dir} (the images of {annotation_file}) does not exist")
    if not annotation_file.is_file():
        raise DatasetError(f"annotation file {annotation_file} for the images in {image_dir} does not exist; "
                           f"expected a COCO instances JSON with images, annotations and categories")
    try:
        dataset = json.loads(annotation_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"annotation file {annotation_file} is not valid JSON: {error}") from None
    if not isinstance(dataset, dict):
        raise DatasetError(f"annotation file {annotation_file} holds a {type(dataset).__name__}, not a COCO "
                           f"instances object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DatasetError(f"annotation file {annotation_file} has no '{key}' list; a COCO instances file holds "
                               f"images, annotations and categories")
    return dataset


class _Problems:
    """The problems found in one file: the first is reported in full, the rest counted."""

    def __init__(self, annotation_file: Path) -> None:
        self.annotation_file = annotation_file
        self.found: list[str] = []

    def add(self, message: str) -> None:
        self.found.append(message)

    def raise_if_any(self) -> None:
        if self.found:
            more = f" ({len(self.found) - 1} more problem(s) in this file)" if len(self.found) > 1 else ""
            raise DatasetError(f"{self.annotation_file}: {self.found[0]}{more}")


def check_instances(dataset: dict[str, Any], annotation_file: Path, image_dir: Path, with_masks: bool) -> None:
    """Raise `DatasetError` for the first problem of a parsed instances file (see the module docstring)."""
    problems = _Problems(annotation_file)
    images = _checked_images(dataset["images"], image_dir, problems)
    problems.raise_if_any()
    if not images:
        raise DatasetError(f"annotation file {annotation_file} lists no images; its images list must name the "
                           f"images of {image_dir}")
    category_ids = _checked_categories(dataset["categories"], problems)
    problems.raise_if_any()
    valid_ids = ", ".join(str(category_id) for category_id in sorted(category_ids))
    annotation_ids: set[Any] = set()
    for position, annotation in enumerate(dataset["annotations"]):
        if not isinstance(annotation, dict):
            problems.add(f"annotations[{position}] is not an object")
            continue
        where = f"annotation id {annotation['id']}" if "id" in annotation else f"annotations[{position}]"
        if "id" in annotation:
            if annotation["id"] in annotation_ids:
                problems.add(f"{where} appears more than once; annotation ids must be unique")
            annotation_ids.add(annotation["id"])
        image = images.get(annotation.get("image_id"))
        if image is None:
            problems.add(f"{where} refers to image id {annotation.get('image_id')!r}, which the images list does "
                         f"not have")
            continue
        where += f" (image id {image['id']}, {image['file_name']})"
        if annotation.get("category_id") not in category_ids:
            problems.add(f"{where} has category id {annotation.get('category_id')!r}, absent from the categories "
                         f"list (ids {valid_ids})")
        _check_box(annotation.get("bbox"), image, where, problems)
        segmentation = annotation.get("segmentation")
        if segmentation is None:
            if with_masks and not annotation.get("iscrowd", 0):
                problems.add(f"{where} has no segmentation; instance masks need a polygon or RLE mask for every "
                             f"annotation")
        else:
            _check_segmentation(segmentation, image, where, problems)
    problems.raise_if_any()


def _checked_images(entries: list[Any], image_dir: Path, problems: _Problems) -> dict[Any, dict[str, Any]]:
    """image id -> image entry of the well-formed entries whose file is in `image_dir`."""
    on_disk = {entry.name for entry in os.scandir(image_dir) if entry.is_file()}
    images: dict[Any, dict[str, Any]] = {}
    for position, image in enumerate(entries):
        where = f"images[{position}]"
        if not isinstance(image, dict) or any(key not in image for key in ("id", "file_name", "width", "height")):
            problems.add(f"{where} needs id, file_name, width and height")
            continue
        where = f"image id {image['id']} ({image['file_name']})"
        if image["id"] in images:
            problems.add(f"{where}: the id appears more than once; image ids must be unique")
        if not all(isinstance(image[key], int) and image[key] > 0 for key in ("width", "height")):
            problems.add(f"{where} has width {image['width']!r} and height {image['height']!r}; both must be "
                         f"positive integers")
            continue
        name = str(image["file_name"])
        present = name in on_disk if "/" not in name else (image_dir / name).is_file()
        if not present:
            problems.add(f"{where} is not in the image folder {image_dir}")
            continue
        images[image["id"]] = image
    return images


def _checked_categories(entries: list[Any], problems: _Problems) -> set[int]:
    category_ids: set[int] = set()
    for position, category in enumerate(entries):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            problems.add(f"categories[{position}] needs an integer id")
            continue
        if category["id"] in category_ids:
            problems.add(f"category id {category['id']} appears more than once; category ids must be unique")
        category_ids.add(category["id"])
    if not category_ids and not problems.found:
        problems.add("the categories list is empty; it must name every category the annotations use")
    return category_ids


def _check_box(box: Any, image: dict[str, Any], where: str, problems: _Problems) -> None:
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(value, (int, float)) for value in box)
            and all(math.isfinite(value) for value in box)):
        problems.add(f"{where} has bbox {box!r}; a box is [x, y, width, height], four finite numbers in pixels")
        return
    x, y, width, height = box
    if width <= 0 or height <= 0:
        problems.add(f"{where} has box {box} of non-positive size; width and height must be > 0")
    elif (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + width > image["width"] + BOX_TOLERANCE
          or y + height > image["height"] + BOX_TOLERANCE):
        problems.add(f"{where} has box {box} ([x, y, width, height]) outside its {image['width']}x{image['height']} "
                     f"image")


def _check_segmentation(segmentation: Any, image: dict[str, Any], where: str, problems: _Problems) -> None:
    if isinstance(segmentation, dict):  # RLE, compressed (counts a string) or not (counts a list)
        size = segmentation.get("size")
        if "counts" not in segmentation or not isinstance(size, list) or len(size) != 2:
            problems.add(f"{where} has an RLE mask without counts and size [height, width]")
        elif list(size) != [image["height"], image["width"]]:
            problems.add(f"{where} has a mask of size {size[0]}x{size[1]} (height x width), which differs from its "
                         f"image's {image['height']}x{image['width']}")
    elif isinstance(segmentation, list):  # polygons: flat [x1, y1, x2, y2, ...] lists
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                count = len(polygon) if isinstance(polygon, list) else polygon
                problems.add(f"{where} has a polygon with {count} coordinates; a polygon is a flat list "
                             f"[x1, y1, x2, y2, ...] of at least 3 points")
                return
    else:
        problems.add(f"{where} has a segmentation of type {type(segmentation).__name__}; expected polygons (a list) "
                     f"or an RLE mask (an object with counts and size)")


def _number_annotations(dataset: dict[str, Any]) -> None:
    """Give annotations without an `id` one after the largest present (the COCO index and COCOeval key on it) and
    a missing `iscrowd` the value 0."""
    annotations = dataset["annotations"]
    next_id = max((ann["id"] for ann in annotations if isinstance(ann.get("id"), int)), default=0) + 1
    for annotation in annotations:
        if "id" not in annotation:
            annotation["id"], next_id = next_id, next_id + 1
        annotation.setdefault("iscrowd", 0)


def _fill_areas(coco: Any) -> None:
    """COCOeval reads every ground-truth annotation's `area` (for APs/APm/APl); a missing one is the mask's area, as
    COCO defines it, or the box's where there is no mask."""
    missing = [ann for ann in coco.dataset["annotations"] if "area" not in ann]
    if not missing:
        return
    mask_api = pycocotools_mask()
    for annotation in missing:
        if annotation.get("segmentation") is not None:
            annotation["area"] = float(mask_api.area(coco.annToRLE(annotation)))
        else:
            annotation["area"] = float(annotation["bbox"][2] * annotation["bbox"][3])
