"""Dense soft labels rebuilt from cached top-K probabilities."""

import pytest
import torch

from vitkd.cache import cached_argmax, rebuild_soft_labels


def test_hand_checked_case():
    values = torch.tensor([[0.6, 0.3]], dtype=torch.float16)
    indices = torch.tensor([[3, 0]])
    soft = rebuild_soft_labels(values, indices, num_classes=5)
    other = (1 - (float(torch.tensor(0.6, dtype=torch.float16)) + float(torch.tensor(0.3, dtype=torch.float16)))) / 3
    expected = torch.tensor([[0.3, other, other, 0.6, other]])
    assert soft.dtype == torch.float32 and soft.shape == (1, 5)
    torch.testing.assert_close(soft, expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(soft[0, [1, 2, 4]], torch.full((3,), 0.1 / 3), atol=1e-3, rtol=0)
    torch.testing.assert_close(soft.sum(1), torch.ones(1))


def test_remaining_mass_clamped_at_zero_and_full_k():
    values = torch.tensor([[0.7, 0.4]])  # sums above 1 (fp16 rounding in practice): nothing left to spread
    soft = rebuild_soft_labels(values, torch.tensor([[1, 2]]), num_classes=4)
    torch.testing.assert_close(soft, torch.tensor([[0.0, 0.7, 0.4, 0.0]]))
    full = rebuild_soft_labels(torch.tensor([[0.5, 0.5]]), torch.tensor([[1, 0]]), num_classes=2)
    torch.testing.assert_close(full, torch.tensor([[0.5, 0.5]]))


def test_batch_rows_sum_to_one():
    probs = torch.randn(8, 50).softmax(-1)
    values, indices = probs.topk(5, dim=1)
    soft = rebuild_soft_labels(values.half(), indices, num_classes=50)
    torch.testing.assert_close(soft.sum(1), torch.ones(8), atol=2e-3, rtol=0)
    torch.testing.assert_close(soft.gather(1, indices), values, atol=1e-3, rtol=0)


def test_cached_argmax_handles_unsorted_values():
    values = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.1]], dtype=torch.float16)
    indices = torch.tensor([[4, 9, 1], [3, 0, 2]], dtype=torch.int16)
    assert cached_argmax(values, indices).tolist() == [9, 3]
    assert cached_argmax(values, indices).dtype == torch.int64


def test_shape_errors():
    with pytest.raises(ValueError, match="must both be \\[B, K\\]"):
        rebuild_soft_labels(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="exceed num_classes"):
        rebuild_soft_labels(torch.zeros(1, 6), torch.zeros(1, 6, dtype=torch.long), 5)
