"""Top-1/top-5 on hand-made logits, and clear errors when the dataset and the head disagree on classes."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vitkd.bench import ClassCountMismatchError, dataset_class_count, evaluate_accuracy


class LogitsFromPixels(nn.Module):
    """Returns the first `num_classes` pixel values as logits, so a test writes the logits into the images."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, : self.num_classes]


def images_with_logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows).reshape(len(rows), 1, 1, len(rows[0]))  # (B, 1, 1, C)


def ranked_logits(label_rank: int, classes: int = 8) -> tuple[list[float], int]:
    """Logits where class `c` scores `classes - c`, and the label is the class ranked `label_rank` (0 = best)."""
    return [float(classes - c) for c in range(classes)], label_rank


def test_top1_and_top5_from_known_ranks():
    ranks = [0, 2, 4, 5, 7, 0]  # top-1 hits: 2 of 6; top-5 hits (rank < 5): 4 of 6
    rows, labels = zip(*(ranked_logits(rank) for rank in ranks))
    batches = [(images_with_logits(list(rows[:3])), torch.tensor(labels[:3]), torch.arange(3)),
               (images_with_logits(list(rows[3:])), torch.tensor(labels[3:]), torch.arange(3))]
    top1, top5 = evaluate_accuracy(LogitsFromPixels(8), batches, "cpu", progress=False)
    assert top1 == pytest.approx(100 * 2 / 6)
    assert top5 == pytest.approx(100 * 4 / 6)


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor


def test_batch_objects_with_images_and_labels_are_accepted():
    rows, labels = zip(*(ranked_logits(rank) for rank in [0, 1]))
    batches = [Batch(images_with_logits(list(rows)), torch.tensor(labels))]
    accuracy = evaluate_accuracy(LogitsFromPixels(8), batches, "cpu", progress=False)
    assert accuracy.top1 == pytest.approx(50.0)
    assert accuracy.top5 == pytest.approx(100.0)


class NamedClassesDataset(TensorDataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        super().__init__(images, labels)
        self.classes = classes


def test_declared_class_count_mismatch_names_model_and_both_counts():
    dataset = NamedClassesDataset(torch.zeros(4, 1, 1, 10), torch.zeros(4, dtype=torch.long),
                                  [f"class{i}" for i in range(100)])
    loader = DataLoader(dataset, batch_size=2)
    assert dataset_class_count(loader) == 100
    with pytest.raises(ClassCountMismatchError, match=r"model 'tiny-student': the model's head has 10 classes "
                       r"but the dataset has 100 classes; .* num_classes=100"):
        evaluate_accuracy(LogitsFromPixels(10), loader, "cpu", model_name="tiny-student", progress=False)


class HeadWithoutAttribute(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :6]


def test_labels_beyond_the_head_are_reported_when_the_dataset_declares_nothing():
    batches = [(torch.zeros(2, 1, 1, 6), torch.tensor([1, 7]))]
    with pytest.raises(ClassCountMismatchError, match=r"model 'headless': the model's head has 6 classes but the "
                       r"dataset has labels up to 7, so at least 8 classes"):
        evaluate_accuracy(HeadWithoutAttribute(), batches, "cpu", model_name="headless", progress=False)


def test_wrapped_datasets_declare_classes_through_base():
    class Wrapper:
        def __init__(self, base):
            self.base = base

    class Base:
        num_classes = 37

    loader = DataLoader(TensorDataset(torch.zeros(1)), batch_size=1)
    loader.dataset.base = Wrapper(Base())  # type: ignore[attr-defined]
    assert dataset_class_count(loader) == 37


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        evaluate_accuracy(LogitsFromPixels(4), [], "cpu", progress=False)
