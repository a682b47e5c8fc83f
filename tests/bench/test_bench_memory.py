"""Peak memory: resident tensors plus the peak of live intermediates, checked on hand-sized modules."""

import torch
from torch import nn

from vitkd.bench import RuntimeOptions, measure_peak_memory
from vitkd.bench.memory import LiveTensorTracker, resident_bytes

FLOAT32 = 4


class TwoIntermediates(nn.Module):
    """Keeps two same-sized intermediates alive at once, then returns a view of the last."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        doubled = images * 2
        shifted = doubled + 1
        return shifted.flatten(1)


def test_peak_counts_input_and_the_intermediates_alive_together():
    batch, input_size = 2, (1, 2, 2)
    elements = batch * 4
    peak = measure_peak_memory(TwoIntermediates(), input_size, batch, RuntimeOptions(device="cpu"))
    assert peak == FLOAT32 * (elements + 2 * elements)  # input + doubled + shifted


def test_peak_of_a_linear_is_weights_input_and_output():
    model = nn.Linear(4, 3)
    batch, input_size = 2, (1, 1, 4)
    peak = measure_peak_memory(model, input_size, batch, RuntimeOptions(device="cpu"))
    weights = (4 * 3 + 3) * FLOAT32
    assert peak == weights + batch * 4 * FLOAT32 + batch * 3 * FLOAT32


def test_resident_bytes_count_tied_weights_once():
    first, second = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
    second.weight = first.weight
    model = nn.Sequential(first, second)
    assert resident_bytes(model) == 8 * 8 * FLOAT32


def test_tracker_releases_freed_storages():
    with LiveTensorTracker() as tracker:
        temporary = torch.ones(256)
        del temporary
        kept = torch.zeros(64)
    assert tracker.peak_bytes == 256 * FLOAT32
    assert tracker.live_bytes == 64 * FLOAT32
    assert kept.numel() == 64
