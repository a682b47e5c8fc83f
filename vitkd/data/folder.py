"""ImageNet-style folders: `root/<split>/<class>/<image>`, read through timm's folder reader.

A corrupt or unreadable image is reported by its path. With `on_corrupt="skip"` the item is returned as None, the
collate function drops it and the trainer counts it in the logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from PIL import Image
from torch.utils.data import Dataset

from vitkd.errors import CorruptImageError


class ImageFolderDataset(Dataset):
    """Items: (PIL.Image RGB, int label), or None for a corrupt image when `on_corrupt="skip"`."""

    def __init__(self, root: str | Path, split: str, on_corrupt: Literal["fail", "skip"] = "fail") -> None:
        from timm.data import create_dataset

        root = Path(root)
        split_dir = root / split
        if not root.is_dir():
            raise FileNotFoundError(f"data.root {root} does not exist; expected ImageNet-style folders "
                                    f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg")
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise FileNotFoundError(f"split folder {split_dir} does not exist; {root} has: {present or 'no folders'}")
        dataset = create_dataset("", root=str(split_dir), split=split, search_split=False)
        self.reader = dataset.reader
        self.samples: list[tuple[str, int]] = [(str(path), int(target)) for path, target in self.reader.samples]
        if not self.samples:
            raise FileNotFoundError(f"no images found under {split_dir}; expected {split_dir}/<class>/*.jpg")
        self.class_to_idx: dict[str, int] = dict(self.reader.class_to_idx)
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.get)
        self.num_classes = len(self.classes)
        self.on_corrupt = on_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Optional[tuple[Image.Image, int]]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")  # forces the full decode inside the try
        except Exception as error:
            if self.on_corrupt == "skip":
                return None
            raise CorruptImageError(f"cannot read image {path}: {error}. Fix or remove the file, or set "
                                    f"data.on_corrupt=skip to skip unreadable images") from None
        return image, label

    def sample_keys(self) -> list[str]:
        return [f"{Path(path).parent.name}/{Path(path).name}:{label}" for path, label in self.samples]
