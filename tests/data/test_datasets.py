"""The bundled digits, ImageNet-style folders (with corrupt images) and the loader's skipping collate."""

import numpy as np
import pytest
import torch
from PIL import Image

from vitkd.config import DataConfig
from vitkd.data import (CorruptImageError, DigitsDataset, ImageFolderDataset, build_base_dataset, build_eval_loader,
                        build_train_dataset, build_train_loader, collate_skipping_corrupt)


def test_digits_split_is_fixed_stratified_and_real():
    train, val = DigitsDataset("train", image_size=32), DigitsDataset("val", image_size=32)
    assert (len(train), len(val)) == (1437, 360)
    image, label = train[0]
    assert image.size == (32, 32) and image.mode == "RGB" and 0 <= label < 10
    # stratified: each of the 10 classes holds about a tenth of the 360 validation images
    counts = np.bincount(val.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # fixed: a second construction gives the same images in the same order
    again = DigitsDataset("val", image_size=32)
    assert np.array_equal(np.asarray(val[5][0]), np.asarray(again[5][0])) and val[5][1] == again[5][1]
    # real scans, not noise: pixels are grey (equal channels) and use most of the range
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and pixels.max() > 200


def _write_folder(root, corrupt: bool):
    for split in ("train", "val"):
        for class_name, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), colour).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"not really a jpeg")


def test_folder_dataset_reads_classes(tmp_path):
    _write_folder(tmp_path, corrupt=False)
    dataset = ImageFolderDataset(tmp_path, "train")
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 6
    image, label = dataset[4]
    assert image.size == (20, 20) and label == 1


def test_corrupt_image_fails_with_path_or_is_skipped_and_counted(tmp_path):
    _write_folder(tmp_path, corrupt=True)
    failing = ImageFolderDataset(tmp_path, "train", on_corrupt="fail")
    broken = [i for i, (path, _) in enumerate(failing.samples) if path.endswith("broken.jpg")][0]
    with pytest.raises(CorruptImageError, match=r"cannot read image .*broken\.jpg.*data\.on_corrupt=skip"):
        failing[broken]
    cfg = DataConfig(dataset="folder", root=str(tmp_path), img_size=16, batch_size=7, num_workers=0,
                     on_corrupt="skip", auto_augment=None, re_prob=0.0)
    loader = build_train_loader(build_train_dataset(cfg, seed=0), cfg, seed=0)
    batches = list(loader)
    assert sum(b.skipped for b in batches) == 1
    assert sum(b.images.shape[0] for b in batches) == 6


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.root .*nowhere does not exist"):
        ImageFolderDataset(tmp_path / "nowhere", "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"split folder .*val does not exist; .* has: \['train'\]"):
        ImageFolderDataset(tmp_path, "val")


def test_collate_drops_none_items():
    item = (torch.zeros(3, 4, 4), 1, 7, 123)
    batch = collate_skipping_corrupt([item, None, item])
    assert batch.images.shape == (2, 3, 4, 4) and batch.skipped == 1
    assert batch.sample_ids.tolist() == [7, 7] and batch.seeds.tolist() == [123, 123]


def test_eval_loader_on_digits_is_normalised():
    loader = build_eval_loader("digits", None, img_size=16, batch_size=50, mean=(0.5,) * 3, std=(0.5,) * 3,
                               crop_pct=1.0)
    batch = next(iter(loader))
    assert batch.images.shape == (50, 3, 16, 16)
    assert batch.images.min() >= -1.0 - 1e-6 and batch.images.max() <= 1.0 + 1e-6


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; valid datasets: 'digits', 'folder'"):
        build_base_dataset("cifar", "train")
