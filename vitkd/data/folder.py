"""ImageNet-style folders: `root/<split>/<class>/<image>`, found by timm's folder scan.

Classes are one mapping for every split: the training split's class folders in timm's natural order ("2" before
"10") give the labels 0..C-1, and every other split is read with that mapping (`classes=`), so a class missing from
val or an extra one can never shift labels. Checked before training, each naming what is wrong:

- a split folder or the root that does not exist, a split without images;
- a class folder without images (it would silently drop out of the mapping);
- an image outside `<split>/<class>/` (directly in the split, or in a nested sub-folder that timm would take as a
  class of its own);
- class folders of another split that the training split does not have (a missing one is allowed: its top-1 is
  over the classes present, and `missing_classes` names them).

Images are decoded to 8-bit RGB by `vitkd.data.image_modes.to_rgb` (16-bit, float, alpha and palette images
handled; modes without a defined range refused). An unreadable image or a refused mode is reported by its path;
with `on_corrupt="skip"` the item is a `SkippedImage` naming the path and the reason, which the collate function
drops and the training task reports once per file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

from PIL import Image
from torch.utils.data import Dataset

from vitkd.data.image_modes import to_rgb
from vitkd.errors import ConfigError, CorruptImageError

#: File extensions read as images (timm's defaults are only .png/.jpg/.jpeg; the others Pillow reads as well).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
LAYOUT = "<root>/<split>/<class>/<image>"


@dataclass(frozen=True)
class SkippedImage:
    """Stands in for an unreadable image under `on_corrupt="skip"`: its path and why it was skipped."""

    path: str
    reason: str


def class_folders(split_dir: Path) -> list[str]:
    """The class folder names of a split, in timm's natural order (the label order)."""
    from timm.utils.misc import natural_key

    return sorted((entry.name for entry in split_dir.iterdir() if entry.is_dir()), key=natural_key)


class ImageFolderDataset(Dataset):
    """Items: (PIL.Image RGB, int label), or a `SkippedImage` for an unreadable one when `on_corrupt="skip"`.

    Args:
        root: dataset root holding one folder per split.
        split: the split folder to read.
        on_corrupt: "fail" raises `CorruptImageError` naming the file; "skip" returns `SkippedImage`.
        classes: the class names in label order shared by every split (the training split's `classes`); None
            makes this split's own class folders the mapping (the training split itself).
    """

    def __init__(self, root: Union[str, Path], split: str, on_corrupt: Literal["fail", "skip"] = "fail",
                 classes: Optional[Sequence[str]] = None) -> None:
        from timm.data.readers.reader_image_folder import find_images_and_targets

        root = Path(root)
        split_dir = root / split
        if not root.is_dir():
            raise FileNotFoundError(f"data.root {root} does not exist; expected ImageNet-style folders "
                                    f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg")
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise FileNotFoundError(f"split folder {split_dir} does not exist; {root} has: {present or 'no folders'}")
        found = class_folders(split_dir)
        if classes is None:
            classes = found
        else:
            extra = [name for name in found if name not in set(classes)]
            if extra:
                raise ConfigError(f"split {split_dir} has class folders the training split does not have: "
                                  f"{_listed(extra)}; every split must use the training split's {len(classes)} "
                                  f"classes ({_listed(list(classes))})")
        self.classes: list[str] = list(classes)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.missing_classes = [name for name in self.classes if name not in set(found)]
        # one scan of every image under the split, each labelled by its leaf folder, so that images in the wrong
        # place are named rather than dropped; labels then come from the shared mapping
        found_images, _ = find_images_and_targets(str(split_dir), types=IMAGE_EXTENSIONS, class_to_idx=None)
        misplaced = [path for path, _ in found_images
                     if Path(path).parent.parent != split_dir or Path(path).parent.name not in self.class_to_idx]
        if misplaced:
            raise ConfigError(f"{len(misplaced)} image(s) under {split_dir} are not in a class folder "
                              f"({LAYOUT}): {_listed(misplaced)}; move them into their class folder")
        self.samples: list[tuple[str, int]] = [(str(path), self.class_to_idx[Path(path).parent.name])
                                               for path, _ in found_images]
        if not self.samples:
            raise FileNotFoundError(f"no images found under {split_dir}; expected {split_dir}/<class>/<image> "
                                    f"with one of the extensions {', '.join(IMAGE_EXTENSIONS)}")
        with_images = {label for _, label in self.samples}
        empty = [name for name in found if self.class_to_idx[name] not in with_images]
        if empty:
            raise ConfigError(f"class folder(s) without images in {split_dir}: {_listed(empty)} (images are files "
                              f"ending in {', '.join(IMAGE_EXTENSIONS)}); add images or remove the folders")
        self.num_classes = len(self.classes)
        self.on_corrupt = on_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Union[tuple[Image.Image, int], SkippedImage]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = to_rgb(image)  # forces the full decode inside the try
        except Exception as error:
            if self.on_corrupt == "skip":
                return SkippedImage(path, str(error))
            raise CorruptImageError(f"cannot read image {path}: {error}. Fix or remove the file, or set "
                                    f"data.on_corrupt=skip to skip unreadable images") from None
        return image, label

    def sample_keys(self) -> list[str]:
        return [f"{Path(path).parent.name}/{Path(path).name}:{label}" for path, label in self.samples]


def _listed(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(str(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
