"""Every Pillow mode to 8-bit RGB with the right values, or refused (vitkd/data/image_modes.py)."""

import numpy as np
import pytest
from PIL import Image

from vitkd.data.folder import ImageFolderDataset, SkippedImage
from vitkd.data.image_modes import UnsupportedImageModeError, to_rgb
from vitkd.errors import CorruptImageError


def _pixel(image):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    return np.asarray(rgb)[0, 0].tolist()


@pytest.mark.parametrize("value, expected", [(0, 0), (65535, 255), (32768, 128), (257 * 100, 100)])
def test_16_bit_greyscale_is_rescaled_not_clipped(value, expected):
    image = Image.fromarray(np.full((3, 3), value, np.uint16))
    assert image.mode == "I;16"
    assert _pixel(image) == [expected] * 3  # Pillow's own convert("RGB") would give 255 for anything above 255


def test_16_bit_png_round_trip(tmp_path):
    Image.fromarray(np.full((3, 3), 32768, np.uint16)).save(tmp_path / "scan.png")
    with Image.open(tmp_path / "scan.png") as image:
        assert image.mode == "I;16" and _pixel(image) == [128, 128, 128]


@pytest.mark.parametrize("mode, dtype", [("I;16B", ">u2"), ("I;16L", "<u2"), ("I;16N", "=u2")])
def test_16_bit_byte_orders(mode, dtype):
    image = Image.frombytes(mode, (2, 2), np.full(4, 40000, dtype).tobytes())
    assert _pixel(image) == [round(40000 * 255 / 65535)] * 3


def test_float_in_unit_range_is_scaled_and_others_refused():
    assert _pixel(Image.fromarray(np.full((2, 2), 0.5, np.float32))) == [128, 128, 128]
    with pytest.raises(UnsupportedImageModeError, match=r"mode F .* values in \[0, 300\]"):
        to_rgb(Image.fromarray(np.array([[0.0, 300.0]], np.float32)))
    with pytest.raises(UnsupportedImageModeError, match=r"mode F"):
        to_rgb(Image.fromarray(np.array([[np.nan, 0.5]], np.float32)))


def test_32_bit_integer_is_refused():
    with pytest.raises(UnsupportedImageModeError, match=r"mode I has no defined 8-bit conversion"):
        to_rgb(Image.fromarray(np.full((2, 2), 70000, np.int32)))


@pytest.mark.parametrize("mode, colour, expected", [
    ("L", 77, [77, 77, 77]),
    ("1", 1, [255, 255, 255]),
    ("CMYK", (0, 255, 255, 0), [255, 0, 0]),  # no cyan, full magenta and yellow: red
    ("HSV", (0, 255, 255), [255, 0, 0]),
    ("YCbCr", (76, 85, 255), [254, 0, 0]),
    ("RGBA", (10, 20, 30, 0), [10, 20, 30]),  # alpha dropped, colour kept (timm's and torchvision's choice)
    ("LA", (60, 0), [60, 60, 60]),
    ("La", (60, 255), [60, 60, 60]),  # premultiplied; Pillow cannot convert it to RGB directly
    ("RGBX", (1, 2, 3, 0), [1, 2, 3]),
])
def test_eight_bit_modes(mode, colour, expected):
    assert _pixel(Image.new(mode, (2, 2), colour)) == expected


def test_palette_with_transparency(tmp_path):
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as image:
        assert image.mode == "P" and "transparency" in image.info
        assert _pixel(image) == [200, 100, 50]


def test_folder_refuses_or_skips_an_unsupported_mode_by_path(tmp_path):
    folder = tmp_path / "train" / "ant"
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(folder / "0.png")
    Image.fromarray(np.full((4, 4), 7.0, np.float32)).save(folder / "1.tif")
    failing = ImageFolderDataset(tmp_path, "train")
    with pytest.raises(CorruptImageError, match=r"cannot read image .*1\.tif: mode F"):
        failing[1]
    skipped = ImageFolderDataset(tmp_path, "train", on_corrupt="skip")[1]
    assert isinstance(skipped, SkippedImage) and skipped.path.endswith("1.tif") and "mode F" in skipped.reason
