"""The bundled offline dataset: scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes).

The scans ship inside scikit-learn, so no download is needed. Each scan (grey levels 0..16) is upsampled to
`image_size` x `image_size` and repeated over 3 channels. The train/val split is fixed and stratified (80/20,
seed 0): 1,437 training and 360 validation images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

DIGITS_NUM_CLASSES = 10
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2


@lru_cache(maxsize=None)
def _digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # (1797, 8, 8) grey levels 0..255
    labels = digits.target.astype(np.int64)
    train_x, val_x, train_y, val_y = train_test_split(
        images, labels, test_size=DIGITS_VAL_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED)
    return (train_x, train_y) if split == "train" else (val_x, val_y)


class DigitsDataset(Dataset):
    """Real handwritten digits as PIL RGB images of `image_size` x `image_size`, with integer labels 0..9.

    Args:
        split: "train" (1,437 images) or "val" (360 images).
        image_size: side of the upsampled image (bicubic).
    Items: (PIL.Image RGB, int label).
    """

    num_classes = DIGITS_NUM_CLASSES
    classes = [str(i) for i in range(DIGITS_NUM_CLASSES)]

    def __init__(self, split: str = "train", image_size: int = 32) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
        images, labels = _digits_split(split)
        self.split = split
        self.labels = labels
        self.images = [Image.fromarray(img, mode="L").resize((image_size, image_size), Image.BICUBIC).convert("RGB")
                       for img in images]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.images[index], int(self.labels[index])

    def sample_keys(self) -> list[str]:
        """Stable identity of every sample, for dataset fingerprints."""
        return [f"digits/{self.split}/{i}:{int(y)}" for i, y in enumerate(self.labels)]
