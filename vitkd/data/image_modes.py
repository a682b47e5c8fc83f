"""Every Pillow image mode to 8-bit RGB, or a refusal naming the file: never a silently wrong picture.

Pillow's own `convert("RGB")` clips 16-bit values at 255 (a mid-grey 16-bit scan becomes white) and truncates float
pixels in [0, 1] to 0 (black), so those modes are rescaled here instead:

- 8-bit modes (`1`, `L`, `P`, `RGB`, `RGBX`, `CMYK`, `YCbCr`, `LAB`, `HSV`): Pillow's conversion.
- Modes with alpha (`RGBA`, `RGBa`, `LA`, `La`, `PA`, `P` with a transparency entry): the alpha channel is dropped
  and the colour under it kept, as timm's and torchvision's folder loaders do, so a model sees the same pixels
  here as in their pipelines.
- 16-bit greyscale (`I;16`, `I;16L`, `I;16B`, `I;16N`: 16-bit PNG and TIFF scans): value * 255 / 65535, rounded.
- 32-bit float (`F`): pixels in [0, 1] are scaled by 255; any other range (or a NaN) is refused, because a float
  image carries no statement of its range.
- 32-bit integer (`I`) and any other mode: refused; they have no defined intensity range.

Multi-frame files (GIF, TIFF stacks) give their first frame.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Modes Pillow converts to RGB correctly.
EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBa", "LA", "PA"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class UnsupportedImageModeError(ValueError):
    """An image whose pixel values cannot be mapped to 8-bit RGB without guessing their range."""


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB (fully decoded). Raises `UnsupportedImageModeError` naming the mode."""
    mode = image.mode
    if mode == "La":  # premultiplied alpha: Pillow converts it only through LA
        image, mode = image.convert("LA"), "LA"
    if mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")  # the palette's colours; the transparency entry is dropped
    if mode in EIGHT_BIT_MODES:
        return image.convert("RGB")
    if mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image).astype(np.float64)  # (H, W) in [0, 65535]
        return _grey_to_rgb(pixels * (255.0 / 65535.0))
    if mode == "F":
        pixels = np.asarray(image, dtype=np.float64)  # (H, W)
        low, high = float(np.min(pixels)), float(np.max(pixels))
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            raise UnsupportedImageModeError(
                f"mode F (32-bit float) with pixel values in [{low:g}, {high:g}]: only float images in [0, 1] are "
                f"converted; save it as 8- or 16-bit")
        return _grey_to_rgb(pixels * 255.0)
    raise UnsupportedImageModeError(
        f"mode {mode} has no defined 8-bit conversion; supported modes: {', '.join(sorted(EIGHT_BIT_MODES))}, "
        f"16-bit greyscale ({', '.join(sorted(SIXTEEN_BIT_MODES))}) and F in [0, 1]")


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    """(H, W) float values in [0, 255] -> RGB image with three equal channels."""
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))  # uint8 (H, W, 3): RGB
