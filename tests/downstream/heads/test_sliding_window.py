"""Sliding-window segmentation inference: window placement, equality with whole-image inference for a per-pixel
model, and the averaging of overlapping windows by hand."""

import pytest
import torch
from torch import nn

from vitkd.downstream.heads import sliding_window_logits, window_starts


@pytest.mark.parametrize("length, crop, stride, expected", [
    (10, 4, 3, [0, 3, 6]),      # the last window flush with the edge
    (10, 4, 4, [0, 4, 6]),      # it overlaps the one before when the stride does not divide
    (9, 4, 4, [0, 4, 5]),
    (4, 4, 2, [0]),             # exactly one window
    (3, 4, 2, [0]),             # shorter than the crop: one (padded) window
])
def test_window_starts_cover_the_axis_without_leaving_it(length, crop, stride, expected):
    starts = window_starts(length, crop, stride)
    assert starts == expected
    covered = set().union(*(range(start, start + crop) for start in starts))
    assert set(range(length)) <= covered and max(starts) + crop <= max(length, crop)


@pytest.mark.parametrize("size", [(37, 53), (20, 20), (12, 40)])
def test_a_per_pixel_model_gives_the_whole_image_logits(size):
    """A 1x1 conv sees one pixel at a time, so averaging windows changes nothing, also where the image is smaller
    than the crop (padded, then cut back)."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, kernel_size=1)
    images = torch.rand(2, 3, *size)
    with torch.no_grad():
        slid = sliding_window_logits(model, images, crop=16, stride=11)
        torch.testing.assert_close(slid, model(images), rtol=1e-5, atol=1e-6)
    assert slid.shape == (2, 5, *size)


def test_overlapping_windows_are_averaged_by_hand():
    """A model whose logit is its window's mean input: a 2 x 3 image whose columns hold 1, 3 and 8, windows of 2 at
    columns 0-1 and 1-2 (means 2 and 5.5); the middle column is covered twice: (2 + 5.5) / 2."""
    def window_mean(crops):  # (B, 1, 2, 2) -> (B, 1, 2, 2)
        return crops.mean(dim=(2, 3), keepdim=True).expand_as(crops)

    image = torch.tensor([[1.0, 3.0, 8.0], [1.0, 3.0, 8.0]]).view(1, 1, 2, 3)
    logits = sliding_window_logits(window_mean, image, crop=2, stride=1)
    assert logits[0, 0].tolist() == [[2.0, 3.75, 5.5], [2.0, 3.75, 5.5]]
