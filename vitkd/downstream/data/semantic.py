"""Semantic-segmentation folders in the ADE20K layout: `root/images/<split>/NAME.jpg|png` and, for each image, the
class-index PNG `root/annotations/<split>/NAME.png` (one channel: mode L, P or 16-bit; value v is class v).

`reduce_zero_label=True` reads ADE20K's convention, where 0 is "other" (not a class) and 1..C are the classes: 0
becomes `ignore_index` and every other value v becomes v - 1, so the labels are 0..C-1. A stored `ignore_index`
stays ignored either way.

Checked when the dataset is opened, each a `DatasetError` naming the folder or file:

- the root, the split's image folder or its annotation folder does not exist, or the split has no images;
- an image without its annotation PNG, or an annotation PNG without its image;
- an annotation that is not a one-channel PNG, or whose size differs from its image's;
- an annotation value that is not a class (outside 0..C-1 after `reduce_zero_label`) nor `ignore_index`. This check
  decodes every annotation once (a progress bar shows it for large splits); `check_values=False` skips it, and
  values are then checked as each item is read. With `num_classes=None` the class count is taken from the largest
  value found, which a split missing the last classes understates: pass `num_classes` for real data.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from vitkd.data.folder import IMAGE_EXTENSIONS
from vitkd.downstream.data.image_io import read_rgb_image
from vitkd.errors import ConfigError, DatasetError

#: Annotation modes holding one class index per pixel (RGB colour-coded masks are not read).
ANNOTATION_MODES = frozenset({"L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I"})
LAYOUT = "<root>/images/<split>/<name>.jpg|png with <root>/annotations/<split>/<name>.png"
#: Splits with more annotations than this show a progress bar while their values are checked.
PROGRESS_ABOVE = 500


class SemanticFolder(Dataset):
    """Items: `(image, mask)`, or what `transforms(image, mask)` makes of them.

    - image: `tv_tensors.Image` float (3, H, W) in [0, 1].
    - mask: `tv_tensors.Mask` int64 (H, W), values in 0..C-1 or `ignore_index`.

    Args:
        root: dataset root holding `images/` and `annotations/`.
        split: the split folder name under both (ADE20K: "training", "validation").
        transforms: a `torchvision.transforms.v2` transform called as `transforms(image, mask)`.
        reduce_zero_label: stored 0 is ignored and v is class v - 1 (ADE20K's convention).
        ignore_index: the label of pixels that count in no metric and no loss (stored as is, padding, "other").
        num_classes: C; None takes it from the largest stored value (see the module docstring).
        check_values: decode every annotation when the dataset is opened to check its values.

    Attributes: num_classes, ignore_index, samples (a list of (image path, annotation path)).
    """

    def __init__(self, root: Union[str, Path], split: str, transforms: Optional[Callable] = None,
                 reduce_zero_label: bool = False, ignore_index: int = 255, num_classes: Optional[int] = None,
                 *, check_values: bool = True) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = int(ignore_index)
        if num_classes is not None and num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.samples = find_pairs(self.root, split)
        _check_sizes(self.samples)
        largest = None
        if check_values or num_classes is None:
            largest = _largest_labels(self.samples, reduce_zero_label, self.ignore_index)  # one per annotation
            if num_classes is None:
                num_classes = max(max(largest, default=-1) + 1, 1)
        self.num_classes = int(num_classes)
        if 0 <= self.ignore_index < self.num_classes:
            raise ConfigError(f"ignore_index {ignore_index} is one of the {self.num_classes} classes "
                              f"(0..{self.num_classes - 1}); choose a value outside them, such as 255")
        for (_, annotation_path), value in zip(self.samples, largest or []):
            if value >= self.num_classes:
                self._check_values(self.labels_of(annotation_path), annotation_path)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image_path, annotation_path = self.samples[index]
        image = read_rgb_image(image_path)  # (3, H, W)
        labels = self.labels_of(annotation_path)  # (H, W)
        self._check_values(labels, annotation_path)
        mask = tv_tensors.Mask(torch.from_numpy(labels))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def labels_of(self, annotation_path: Path) -> np.ndarray:
        """The annotation's labels as int64 (H, W), after `reduce_zero_label`."""
        return labels_from_stored(_read_annotation(annotation_path), self.reduce_zero_label, self.ignore_index)

    def _check_values(self, labels: np.ndarray, annotation_path: Path) -> None:
        outside = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if outside.any():
            stored = np.unique(labels[outside]) + (1 if self.reduce_zero_label else 0)  # as written in the file
            valid = (f"stored 1..{self.num_classes}, with 0 and {self.ignore_index} ignored" if self.reduce_zero_label
                     else f"stored 0..{self.num_classes - 1}, with {self.ignore_index} ignored")
            raise DatasetError(f"annotation {annotation_path} has values {_listed([str(v) for v in stored.tolist()])} "
                               f"outside the {self.num_classes} classes ({valid})")


def labels_from_stored(stored: np.ndarray, reduce_zero_label: bool, ignore_index: int) -> np.ndarray:
    """Stored annotation values (H, W) -> int64 labels (H, W): with `reduce_zero_label`, 0 -> ignore_index and
    v -> v - 1; `ignore_index` stays."""
    labels = stored.astype(np.int64)
    if reduce_zero_label:
        ignored = (labels == 0) | (labels == ignore_index)
        labels = labels - 1
        labels[ignored] = ignore_index
    return labels


def find_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) paths of a split, sorted by name; raises `DatasetError` for the layout problems."""
    image_dir, annotation_dir = root / "images" / split, root / "annotations" / split
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; expected {LAYOUT}")
    if not image_dir.is_dir():
        present = sorted(path.name for path in (root / "images").iterdir()) if (root / "images").is_dir() else []
        raise DatasetError(f"image folder {image_dir} does not exist ({root / 'images'} has: "
                           f"{', '.join(present) or 'nothing'}); expected {LAYOUT}")
    images = {path.stem: path for path in image_dir.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS}
    if not annotation_dir.is_dir():
        raise DatasetError(f"image folder {image_dir} has no annotations: {annotation_dir} does not exist; expected "
                           f"{LAYOUT}")
    annotations = {path.stem: path for path in annotation_dir.iterdir() if path.suffix.lower() == ".png"}
    if not images:
        raise DatasetError(f"image folder {image_dir} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
                           + (f" but {annotation_dir} holds {len(annotations)} annotation(s)" if annotations else ""))
    without_annotation = sorted(set(images) - set(annotations))
    if without_annotation:
        raise DatasetError(f"{len(without_annotation)} image(s) in {image_dir} have no annotation PNG in "
                           f"{annotation_dir}: {_listed([images[name].name for name in without_annotation])}")
    without_image = sorted(set(annotations) - set(images))
    if without_image:
        raise DatasetError(f"{len(without_image)} annotation(s) in {annotation_dir} have no image in {image_dir}: "
                           f"{_listed([annotations[name].name for name in without_image])}")
    return [(images[name], annotations[name]) for name in sorted(images)]


def _check_sizes(samples: list[tuple[Path, Path]]) -> None:
    """Modes and sizes from the file headers (nothing decoded)."""
    for image_path, annotation_path in samples:
        try:
            with Image.open(image_path) as image, Image.open(annotation_path) as annotation:
                image_size, annotation_size, mode = image.size, annotation.size, annotation.mode
        except OSError as error:
            raise DatasetError(f"cannot read {image_path} or {annotation_path}: {error}") from None
        if mode not in ANNOTATION_MODES:
            raise DatasetError(f"annotation {annotation_path} has mode {mode}; annotations hold one class index per "
                               f"pixel (a one-channel PNG: mode L, P or 16-bit), not colours")
        if image_size != annotation_size:
            raise DatasetError(f"annotation {annotation_path} is {annotation_size[0]}x{annotation_size[1]} but its "
                               f"image {image_path} is {image_size[0]}x{image_size[1]} (width x height)")


def _read_annotation(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as annotation:
            return np.asarray(annotation)  # (H, W) the stored values (palette indices for mode P)
    except OSError as error:
        raise DatasetError(f"cannot read annotation {path}: {error}") from None


def _largest_labels(samples: list[tuple[Path, Path]], reduce_zero_label: bool, ignore_index: int) -> list[int]:
    """For each annotation, its largest label (after `reduce_zero_label`) other than `ignore_index`, -1 for none; a
    negative value (only 32-bit PNGs can hold one) is refused. PNG decoding releases the GIL, so a few threads check
    a large split in a fraction of the time."""
    from tqdm import tqdm

    def largest(path: Path) -> int:
        labels = labels_from_stored(_read_annotation(path), reduce_zero_label, ignore_index)
        kept = labels[labels != ignore_index]
        if not kept.size:
            return -1
        if kept.min() < 0:
            raise DatasetError(f"annotation {path} has negative values ({int(kept.min())}); labels are class indices "
                               f">= 0 or the ignore index {ignore_index}")
        return int(kept.max())

    paths = [annotation for _, annotation in samples]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(tqdm(pool.map(largest, paths), total=len(paths), desc=f"checking {paths[0].parent}", leave=False,
                         disable=len(paths) <= PROGRESS_ABOVE))


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
