"""The bundled offline detection and segmentation dataset: scenes composed of the bundled digit scans.

Each scene is a 128 x 128 RGB canvas (a dark colour gradient with noise) holding 2 to 5 real handwritten digits
from `vitkd.data.digits`, each scan upsampled (bicubic) to a side of 20 to 60 pixels, tinted a random bright
colour and alpha-blended at a random place. Later digits may cover earlier ones, but every digit keeps at least
`MIN_VISIBLE` of its ink visible. A digit's instance mask is its ink (upsampled scan >= `INK_THRESHOLD`) minus what
later digits cover; its box is tight around that mask; the per-pixel class map holds digit + 1 on the mask and 0
(background, "other") elsewhere. Training scenes use only the training scans, validation scenes only the
validation scans (the classification split of `vitkd.data.digits`). Fixed seeds: every run writes the same bytes.

Written once under a root folder, in the layouts the real loaders read:

    <root>/coco/train/00000.png ...                 <root>/ade/images/train/00000.png ...
    <root>/coco/val/00000.png ...                   <root>/ade/images/val/00000.png ...
    <root>/coco/annotations/instances_train.json    <root>/ade/annotations/train/00000.png ...
    <root>/coco/annotations/instances_val.json      <root>/ade/annotations/val/00000.png ...
    <root>/digit_scenes.json                        (written last: the dataset is complete)

COCO categories are named "0".."9" with the non-contiguous ids 1, 3, 5, ..., 19 (`CATEGORY_IDS`), as real COCO's
ids have gaps; masks are compressed RLE; each annotation also records its source scan (`scan`: split, index in
that split, placement). The ADE20K-style class maps follow ADE20K's convention (0 is not a class), so
`SemanticFolder(..., reduce_zero_label=True)` reads the 10 digit classes with the background ignored, and
`reduce_zero_label=False` reads 11 classes with the background as class 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
from PIL import Image

from vitkd.downstream.data.cocoapi import pycocotools_mask
from vitkd.errors import ConfigError, DatasetError
from vitkd.files import atomic_write

DIGIT_SCENES = "digit_scenes"
SPLITS = ("train", "val")
MARKER = "digit_scenes.json"
#: Raise when the scenes change: a root written by another version is rebuilt.
VERSION = 1
SETTINGS: dict[str, Any] = {
    "canvas": 128,
    "scenes": {"train": 200, "val": 50},
    "seeds": {"train": 1101, "val": 1102},
    "digits_per_scene": [2, 5],
    "digit_sides": [20, 60],
    "min_visible": 0.6,
    "ink_threshold": 0.5,
}
CANVAS = SETTINGS["canvas"]
MIN_VISIBLE = SETTINGS["min_visible"]
INK_THRESHOLD = SETTINGS["ink_threshold"]
#: COCO category id of digit d: odd numbers, so that labels (1..10) and ids differ and have gaps.
CATEGORY_IDS = tuple(2 * digit + 1 for digit in range(10))
#: zlib level of the written PNGs: fast to write (the noisy canvases barely compress at higher levels)
PNG_COMPRESSION = 1
#: Placements tried for a digit before it is left out of the scene (too much overlap everywhere).
PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class DigitScenesPaths:
    """Where the parts of a digit-scenes root are; splits "train" and "val"."""

    root: Path
    splits: tuple[str, ...] = SPLITS
    #: detection categories (COCO) and semantic classes with `reduce_zero_label=True`
    num_classes: int = 10

    def coco_images(self, split: str) -> Path:
        return self.root / "coco" / _checked_split(split)

    def coco_annotations(self, split: str) -> Path:
        return self.root / "coco" / "annotations" / f"instances_{_checked_split(split)}.json"

    @property
    def semantic_root(self) -> Path:
        """The ADE20K-style root for `SemanticFolder(semantic_root, split)`."""
        return self.root / "ade"

    def semantic_num_classes(self, reduce_zero_label: bool) -> int:
        """10 digit classes with the background ignored, or 11 with the background as class 0."""
        return self.num_classes if reduce_zero_label else self.num_classes + 1


def default_data_dir() -> Path:
    """Where generated datasets go unless told: `$VITKD_DATA_DIR`, else `$XDG_CACHE_HOME/vitkd` (~/.cache/vitkd)."""
    if os.environ.get("VITKD_DATA_DIR"):
        return Path(os.environ["VITKD_DATA_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitkd"


def dataset_paths(name_or_root: Union[str, Path], data_dir: Optional[Union[str, Path]] = None) -> DigitScenesPaths:
    """`"digit_scenes"`: the bundled scenes under `data_dir` (default `default_data_dir()`), written on first use.
    A folder: a digit-scenes root written before (by `ensure_digit_scenes`), used as it is."""
    if str(name_or_root) == DIGIT_SCENES:
        return DigitScenesPaths(ensure_digit_scenes(Path(data_dir or default_data_dir()) / DIGIT_SCENES))
    root = Path(name_or_root)
    if not (root / MARKER).is_file():
        raise ConfigError(f"dataset {str(name_or_root)!r} is neither the bundled {DIGIT_SCENES!r} nor a folder holding "
                          f"written digit scenes ({root / MARKER} does not exist)")
    return DigitScenesPaths(root)


def ensure_digit_scenes(root: Union[str, Path]) -> Path:
    """Write the digit scenes to `root` unless a complete copy of this version is already there; returns `root`.

    The scenes are written into a temporary folder beside `root`, its marker file last, and the folder is then
    renamed to `root`: an interrupted run leaves no half-written dataset that a later run could take as finished (its
    temporary folder is removed by the next run). Processes writing the same root at once wait for each other.
    A `root` that holds other files (no marker) is refused rather than replaced.
    """
    root = Path(root)
    if is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root.parent / f".{root.name}.lock"):
        if is_complete(root):  # another process finished it while this one waited
            return root
        if root.exists() and not (root / MARKER).is_file() and (not root.is_dir() or any(root.iterdir())):
            raise DatasetError(f"{root} exists and is not a digit-scenes dataset (no {MARKER}); choose an empty or "
                               f"new folder for the digit scenes")
        for stale in root.parent.glob(f".{root.name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        building = root.parent / f".{root.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        building.mkdir()  # (not mkdtemp: its folders are private, the dataset gets the usual permissions)
        try:
            counts = write_digit_scenes(building)
            atomic_write(building / MARKER, json.dumps({"name": DIGIT_SCENES, "version": VERSION,
                                                        "settings": SETTINGS, "counts": counts}, indent=1) + "\n",
                         durable=True)
            if root.exists():  # an empty folder, or scenes of another version
                shutil.rmtree(root)
            os.replace(building, root)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return root


def is_complete(root: Path) -> bool:
    """True when `root` holds digit scenes of this version and settings, finished (its marker written)."""
    try:
        marker = json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("version") == VERSION and marker.get("settings") == SETTINGS


def write_digit_scenes(root: Path) -> dict[str, dict[str, int]]:
    """Write both splits under `root` (see the module docstring); returns {split: {"images": n, "annotations": m}}."""
    from tqdm import tqdm

    from vitkd.data.digits import DigitsDataset

    counts = {}
    for split in SPLITS:
        digits = DigitsDataset(split, image_size=8)  # 8 x 8: the scans as stored, no resampling
        scans = [np.asarray(image)[:, :, 0] for image in digits.images]  # each (8, 8) uint8, ink bright
        rng = np.random.default_rng(SETTINGS["seeds"][split])
        directories = {"coco": root / "coco" / split, "ade_images": root / "ade" / "images" / split,
                       "ade_annotations": root / "ade" / "annotations" / split}
        for directory in directories.values():
            directory.mkdir(parents=True)
        images, annotations = [], []
        for index in tqdm(range(SETTINGS["scenes"][split]), desc=f"digit scenes ({split})", leave=False):
            picture, instances = compose_scene(rng, scans, digits.labels)
            name = f"{index:05d}.png"
            Image.fromarray(picture).save(directories["coco"] / name, compress_level=PNG_COMPRESSION)
            shutil.copyfile(directories["coco"] / name, directories["ade_images"] / name)
            Image.fromarray(class_map(instances)).save(directories["ade_annotations"] / name,
                                                       compress_level=PNG_COMPRESSION)
            image_id = index + 1
            images.append({"id": image_id, "file_name": name, "width": CANVAS, "height": CANVAS})
            for instance in instances:
                annotations.append(coco_annotation(instance, len(annotations) + 1, image_id, split))
        instances_file = {
            "info": {"description": f"vitkd digit scenes ({split}): handwritten digit scans composed on canvases",
                     "version": VERSION},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": CATEGORY_IDS[digit], "name": str(digit), "supercategory": "digit"}
                           for digit in range(10)],
        }
        atomic_write(root / "coco" / "annotations" / f"instances_{split}.json", json.dumps(instances_file) + "\n")
        counts[split] = {"images": len(images), "annotations": len(annotations)}
    return counts


@dataclass
class PlacedDigit:
    """One digit of a scene: its class, source scan (index in its split), placement and visible ink (H, W) bool."""

    digit: int
    scan_index: int
    x: int
    y: int
    side: int
    mask: np.ndarray


def digit_ink(scan: np.ndarray, side: int) -> np.ndarray:
    """An (8, 8) uint8 scan upsampled (bicubic) to (side, side) ink opacity in [0, 1]."""
    upsampled = Image.fromarray(scan).resize((side, side), Image.BICUBIC)
    return np.asarray(upsampled, dtype=np.float32) / 255.0


def compose_scene(rng: np.random.Generator, scans: list[np.ndarray],
                  labels: np.ndarray) -> tuple[np.ndarray, list[PlacedDigit]]:
    """One scene: the picture uint8 (CANVAS, CANVAS, 3) and its digits, each with its visible ink mask."""
    rows, columns = np.mgrid[0:CANVAS, 0:CANVAS] / (CANVAS - 1)  # (H, W) each, in [0, 1]
    base = rng.uniform(0, 70, size=3)
    slope = rng.uniform(-40, 40, size=(2, 3))
    picture = (base + rows[..., None] * slope[0] + columns[..., None] * slope[1]
               + rng.normal(0.0, 6.0, size=(CANVAS, CANVAS, 3)))  # (H, W, 3) dark gradient with noise
    owner = np.full((CANVAS, CANVAS), -1, dtype=np.int64)  # which digit's ink each pixel shows
    fewest, most = SETTINGS["digits_per_scene"]
    ink_pixels = np.zeros(most, dtype=np.int64)  # each placed digit's ink, in pixels
    visible = np.zeros(most, dtype=np.int64)  # how much of it no later digit covers
    placed: list[PlacedDigit] = []
    for _ in range(int(rng.integers(fewest, most + 1))):
        scan_index = int(rng.integers(len(scans)))
        side = int(rng.integers(SETTINGS["digit_sides"][0], SETTINGS["digit_sides"][1] + 1))
        opacity = digit_ink(scans[scan_index], side)  # (side, side)
        ink = opacity >= INK_THRESHOLD
        for _ in range(PLACEMENT_TRIES):
            x, y = (int(value) for value in rng.integers(0, CANVAS - side + 1, size=2))
            covered = owner[y:y + side, x:x + side][ink]  # owners of the pixels this digit would cover
            lost = np.bincount(covered[covered >= 0], minlength=most)  # (most,) ink each digit would lose
            if np.all(visible - lost >= MIN_VISIBLE * ink_pixels):
                break
        else:
            continue  # no placement keeps the earlier digits visible enough: leave this one out
        colour = rng.uniform(150, 255, size=3)
        region = picture[y:y + side, x:x + side]
        region[:] = region * (1.0 - opacity[..., None]) + colour * opacity[..., None]
        owner[y:y + side, x:x + side][ink] = len(placed)
        visible -= lost
        ink_pixels[len(placed)] = visible[len(placed)] = np.count_nonzero(ink)
        placed.append(PlacedDigit(int(labels[scan_index]), scan_index, x, y, side, mask=np.zeros(0, dtype=bool)))
    for number, digit in enumerate(placed):
        digit.mask = owner == number  # (H, W) its ink not covered by later digits
    return np.clip(np.rint(picture), 0, 255).astype(np.uint8), placed


def class_map(instances: list[PlacedDigit]) -> np.ndarray:
    """(CANVAS, CANVAS) uint8: digit + 1 on each digit's visible ink, 0 (background, "other") elsewhere."""
    classes = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    for instance in instances:
        classes[instance.mask] = instance.digit + 1
    return classes


def coco_annotation(instance: PlacedDigit, annotation_id: int, image_id: int, split: str) -> dict[str, Any]:
    """The COCO annotation of one digit: the box tight around its mask, the mask as compressed RLE."""
    mask_api = pycocotools_mask()
    ys, xs = np.nonzero(instance.mask)
    # a pixel (x, y) covers [x, x + 1) x [y, y + 1): the tight box runs to the last pixel's far edge
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    rle = mask_api.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": CATEGORY_IDS[instance.digit],
        "bbox": bbox,
        "area": int(np.count_nonzero(instance.mask)),
        "iscrowd": 0,
        "segmentation": {"size": [int(size) for size in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "scan": {"split": split, "index": instance.scan_index, "x": instance.x, "y": instance.y,
                 "side": instance.side},
    }


def _checked_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"the digit scenes have no split {split!r}; their splits are {', '.join(SPLITS)}")
    return split


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing); a no-op where `fcntl` does not exist."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
