"""Images of the detection and segmentation datasets as float tensors in [0, 1], decoded like vitkd's classification
folders (every Pillow mode to 8-bit RGB by `vitkd.data.image_modes.to_rgb`, or a refusal naming the file)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from vitkd.data.image_modes import to_rgb
from vitkd.errors import CorruptImageError


def read_rgb_image(path: Path) -> tv_tensors.Image:
    """The image at `path` as a float `tv_tensors.Image` (3, H, W) in [0, 1]. Raises `CorruptImageError` naming the
    file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image = to_rgb(image)  # forces the full decode inside the try
    except Exception as error:
        raise CorruptImageError(f"cannot read image {path}: {error}; fix or remove the file") from None
    pixels = F.pil_to_tensor(image)  # (3, H, W) uint8
    return tv_tensors.Image(F.to_dtype(pixels, torch.float32, scale=True))
