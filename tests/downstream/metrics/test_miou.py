"""mIoU and pixel accuracy from a confusion matrix accumulated over the whole set, on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from vitkd.downstream.metrics.miou import ConfusionMatrix

# labels and predictions of a 2 x 3 image, 3 classes, one ignored pixel (255). Evaluated (label, prediction) pairs:
# (0, 0), (0, 1), (1, 1), (1, 1), (2, 0)
TARGET = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
PREDICTION = torch.tensor([[[0, 1, 1], [1, 0, 2]]])


def test_hand_computed_confusion():
    matrix = ConfusionMatrix(num_classes=3, ignore_index=255)
    matrix.update(PREDICTION, TARGET)
    assert matrix.state.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows: label, columns: prediction
    intersection, union = matrix.intersection_and_union()
    assert intersection.tolist() == [1, 2, 0] and union.tolist() == [3, 3, 1]
    # IoU: class 0 = 1 / (2 + 2 - 1) = 1/3; class 1 = 2 / (2 + 3 - 2) = 2/3; class 2 = 0 / (1 + 0 - 0) = 0
    metrics = matrix.compute()
    assert metrics["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert metrics["pixel_acc"] == pytest.approx(3 / 5)  # 3 of the 5 evaluated pixels right


def test_classes_absent_from_labels_and_predictions_are_left_out():
    matrix = ConfusionMatrix(num_classes=5, ignore_index=255)
    matrix.update(PREDICTION, TARGET)  # classes 3 and 4 appear nowhere
    assert matrix.compute()["mIoU"] == pytest.approx(1 / 3)
    predicted_only = ConfusionMatrix(num_classes=5, ignore_index=255)
    predicted_only.update(torch.tensor([[[4, 1]]]), torch.tensor([[[0, 1]]]))  # class 4 predicted, never labelled
    # class 0: 0 / 1; class 1: 1 / 1; class 4: 0 / 1 (counted); classes 2 and 3: left out
    assert predicted_only.compute()["mIoU"] == pytest.approx(1 / 3)


def test_intersections_and_unions_are_summed_over_batches_not_averaged():
    matrix = ConfusionMatrix(num_classes=2, ignore_index=255)
    matrix.update(torch.tensor([[[0, 0, 0, 0]]]), torch.tensor([[[0, 0, 0, 1]]]))  # class 0: 3/4; class 1: 0/1
    matrix.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]))  # class 1: 2/2
    # whole set: class 0 = 3 / (3 + 4 - 3) = 3/4; class 1 = 2 / (3 + 2 - 2) = 2/3
    assert matrix.compute()["mIoU"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    # (the mean of per-batch mIoUs would be ((3/4 + 0) / 2 + 1) / 2 = 0.6875)
    assert matrix.compute()["pixel_acc"] == pytest.approx(5 / 6)


def test_summed_states_of_shards_equal_one_matrix_over_all():
    whole, first, second = (ConfusionMatrix(3, 255) for _ in range(3))
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randint(0, 3, (4, 5, 6), generator=generator)
    targets = torch.randint(0, 3, (4, 5, 6), generator=generator)
    targets[0, 0] = 255
    whole.update(predictions, targets)
    first.update(predictions[:2], targets[:2])
    second.update(predictions[2:], targets[2:])
    first.state += second.state  # what all_reduce(SUM) does across processes
    assert torch.equal(first.state, whole.state) and first.compute() == whole.compute()
    assert int(whole.state.sum()) == 4 * 5 * 6 - 6


def test_bad_values_raise_and_an_empty_set_is_nan():
    matrix = ConfusionMatrix(3, 255)
    with pytest.raises(ValueError, match=r"target holds values outside the classes 0\.\.2 \(ignore index 255\): \[7\]"):
        matrix.update(torch.tensor([[[0, 1]]]), torch.tensor([[[7, 1]]]))
    with pytest.raises(ValueError, match=r"prediction holds values outside the classes 0\.\.2"):
        matrix.update(torch.tensor([[[3, 1]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(ValueError, match=r"prediction shape \(1, 1, 2\) differs from target shape \(1, 2, 1\)"):
        matrix.update(torch.zeros(1, 1, 2, dtype=torch.long), torch.zeros(1, 2, 1, dtype=torch.long))
    matrix.update(torch.tensor([[[0]]]), torch.tensor([[[255]]]))  # only ignored pixels
    assert all(math.isnan(value) for value in matrix.compute().values())
    matrix.update(PREDICTION, TARGET)
    matrix.reset()
    assert int(matrix.state.sum()) == 0
