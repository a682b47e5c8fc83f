"""The bundled digits, ImageNet-style folders (with corrupt images) and the loader's skipping collate."""

import numpy as np
import pytest
import torch
from PIL import Image

from vitkd.config import DataConfig
from vitkd.data import (CorruptImageError, DigitsDataset, ImageFolderDataset, build_base_dataset, build_eval_loader,
                        build_train_dataset, build_train_loader, build_val_dataset, collate_skipping_corrupt)
from vitkd.data.folder import SkippedImage
from vitkd.errors import ConfigError


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


def test_collate_drops_skipped_images_and_keeps_their_paths():
    item = (torch.zeros(3, 4, 4), 1, 7, 123)
    skipped = SkippedImage("train/dog/broken.jpg", "cannot identify image file")
    batch = collate_skipping_corrupt([item, skipped, item])
    assert batch.images.shape == (2, 3, 4, 4) and batch.skipped == 1 and batch.skipped_images == (skipped,)
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


def _images(folder, count=2, colour=(90, 90, 90)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), colour).save(folder / f"{i}.png")


def test_every_split_uses_the_training_splits_classes(tmp_path):
    """A class missing from val used to shift every later label down by one: now labels follow the train split."""
    for name in ("ant", "bee", "cat"):
        _images(tmp_path / "train" / name)
    for name in ("ant", "cat"):  # no bee in val
        _images(tmp_path / "val" / name)
    cfg = DataConfig(dataset="folder", root=str(tmp_path), img_size=8)
    train = build_train_dataset(cfg, seed=0)
    val = build_val_dataset(cfg, train.base.classes)
    assert val.base.classes == ["ant", "bee", "cat"] and val.base.missing_classes == ["bee"]
    assert sorted({label for _, label in val.base.samples}) == [0, 2]  # cat keeps label 2, as in train
    # the split read on its own would have labelled cat 1: the shared mapping is what makes it right
    assert sorted({label for _, label in ImageFolderDataset(tmp_path, "val").samples}) == [0, 1]


def test_a_class_only_another_split_has_is_refused(tmp_path):
    for name in ("ant", "bee"):
        _images(tmp_path / "train" / name)
    for name in ("ant", "bee", "wasp"):
        _images(tmp_path / "val" / name)
    with pytest.raises(ConfigError, match=r"val has class folders the training split does not have: wasp; .*2 classes "
                                          r"\(ant, bee\)"):
        ImageFolderDataset(tmp_path, "val", classes=["ant", "bee"])


def test_class_order_is_timms_natural_order(tmp_path):
    for name in ("10", "2", "1"):
        _images(tmp_path / "train" / name, count=1)
    assert ImageFolderDataset(tmp_path, "train").classes == ["1", "2", "10"]


@pytest.mark.parametrize("layout, message", [
    ("empty_class", r"class folder\(s\) without images in .*train: bee"),
    ("only_text_files", r"class folder\(s\) without images in .*train: bee"),
    ("image_in_split_root", r"1 image\(s\) under .*train are not in a class folder .*stray\.png"),
    ("nested_folder", r"1 image\(s\) under .*train are not in a class folder .*ant/sub/0\.png"),
    ("empty_split", r"no images found under .*train"),
])
def test_folder_layout_errors_are_named(tmp_path, layout, message):
    if layout != "empty_split":
        _images(tmp_path / "train" / "ant")
    (tmp_path / "train" / "bee").mkdir(parents=True)
    if layout == "only_text_files":
        (tmp_path / "train" / "bee" / "notes.txt").write_text("not an image")
    elif layout == "image_in_split_root":
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / "stray.png")
    elif layout == "nested_folder":
        _images(tmp_path / "train" / "ant" / "sub", count=1)
        _images(tmp_path / "train" / "bee", count=1)
    with pytest.raises((ConfigError, FileNotFoundError), match=message):
        ImageFolderDataset(tmp_path, "train")


def test_other_image_extensions_are_read(tmp_path):
    folder = tmp_path / "train" / "ant"
    folder.mkdir(parents=True)
    for extension in ("bmp", "gif", "tif", "webp"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / f"x.{extension}")
    dataset = ImageFolderDataset(tmp_path, "train")
    assert len(dataset) == 4 and all(dataset[i][0].mode == "RGB" for i in range(4))


def test_digits_refuses_an_unknown_split():
    with pytest.raises(ConfigError, match=r"the digits dataset has no split 'test'; its splits are train, val"):
        build_base_dataset("digits", "test")
    with pytest.raises(ConfigError, match=r"needs its root folder: data\.root .* --root"):
        build_base_dataset("folder", "val")


def test_evaluation_shards_cover_every_sample_once():
    from vitkd.data.loader import ShardSampler

    shards = [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]  # no padding: torch's DistributedSampler would repeat 0 and 1
    assert sorted(sum(shards, [])) == list(range(7))
