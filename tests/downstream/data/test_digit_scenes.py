"""The bundled digit scenes: exact boxes and masks, class maps that agree with them, validation scenes made of
validation scans only, written once (atomically, deterministically) and read by the real loaders."""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_api

from vitkd.data.digits import DigitsDataset
from vitkd.downstream.data import digit_scenes
from vitkd.downstream.data.coco import CocoDataset
from vitkd.downstream.data.digit_scenes import (CATEGORY_IDS, DIGIT_SCENES, INK_THRESHOLD, MARKER, MIN_VISIBLE,
                                                dataset_paths, digit_ink, ensure_digit_scenes)
from vitkd.downstream.data.semantic import SemanticFolder
from vitkd.errors import ConfigError, DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2


#: scene counts of the tests' copy: scenes are drawn one after another from one generator per split, so these are
#: the first 60 and 20 scenes of the shipped 200 and 50 (same images and annotations), written in a third of the time
TEST_COUNTS = {"train": 60, "val": 20}


def _settings_with(counts: dict) -> dict:
    settings = json.loads(json.dumps(digit_scenes.SETTINGS))
    settings["scenes"] = counts
    return settings


@pytest.fixture(scope="module", autouse=True)
def fewer_scenes():
    with pytest.MonkeyPatch.context() as patch:  # the marker records the counts, so such a root is its own dataset
        patch.setattr(digit_scenes, "SETTINGS", _settings_with(TEST_COUNTS))
        yield


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fewer_scenes):
    return dataset_paths(DIGIT_SCENES, data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture
def few_scenes(monkeypatch):
    monkeypatch.setattr(digit_scenes, "SETTINGS", _settings_with({"train": 4, "val": 3}))


def instances(scenes, split: str) -> dict:
    return json.loads(scenes.coco_annotations(split).read_text())


def test_layout_sizes_and_non_contiguous_category_ids(scenes):
    marker = json.loads((scenes.root / MARKER).read_text())
    assert {split: marker["counts"][split]["images"] for split in ("train", "val")} == TEST_COUNTS
    train = instances(scenes, "train")
    assert [category["id"] for category in train["categories"]] == list(CATEGORY_IDS) == list(range(1, 20, 2))
    assert [category["name"] for category in train["categories"]] == [str(digit) for digit in range(10)]
    per_image = np.bincount([ann["image_id"] for ann in train["annotations"]])[1:]
    assert per_image.min() >= 1 and per_image.max() <= 5 and per_image.mean() > 2.5  # several digits per scene
    sides = {ann["scan"]["side"] for ann in train["annotations"]}
    assert min(sides) < 30 and max(sides) > 50  # several scales
    for split in ("train", "val"):
        assert len(list(scenes.coco_images(split).glob("*.png"))) == marker["counts"][split]["images"]
        assert len(list((scenes.semantic_root / "annotations" / split).glob("*.png"))) == marker["counts"][split][
            "images"]


def test_boxes_are_tight_around_the_mask_ink_and_some_digits_overlap(scenes):
    overlapped = 0
    for split in ("train", "val"):
        scans = _scans(split)
        for ann in instances(scenes, split)["annotations"]:
            mask = mask_api.decode(ann["segmentation"])  # (128, 128)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == mask_api.toBbox(ann["segmentation"]).tolist()
            assert ann["area"] == mask.sum()
            scan = ann["scan"]
            ink = digit_ink(scans[scan["index"]], scan["side"]) >= INK_THRESHOLD
            overlapped += mask.sum() < ink.sum()
    assert overlapped > 20  # partial overlaps happen


@functools.lru_cache(maxsize=None)
def _scans(split: str) -> list[np.ndarray]:
    return [np.asarray(image)[:, :, 0] for image in DigitsDataset(split, image_size=8).images]


def test_validation_scenes_use_only_validation_scans(scenes):
    val_digits = DigitsDataset("val", image_size=8)
    scans = _scans("val")
    for ann in instances(scenes, "val")["annotations"]:
        scan = ann["scan"]
        assert scan["split"] == "val"
        assert CATEGORY_IDS[val_digits.labels[scan["index"]]] == ann["category_id"]
        # the visible mask is that validation scan's ink at its recorded place, at least MIN_VISIBLE of it
        placed = np.zeros((128, 128), dtype=bool)
        ink = digit_ink(scans[scan["index"]], scan["side"]) >= INK_THRESHOLD
        placed[scan["y"]:scan["y"] + scan["side"], scan["x"]:scan["x"] + scan["side"]] = ink
        mask = mask_api.decode(ann["segmentation"]).astype(bool)
        assert not (mask & ~placed).any() and mask.sum() >= MIN_VISIBLE * ink.sum()
    assert all(ann["scan"]["split"] == "train" for ann in instances(scenes, "train")["annotations"])


def test_the_loaders_read_the_scenes_and_class_maps_agree_with_the_instances(scenes):
    boxes = CocoDataset(scenes.coco_images("val"), scenes.coco_annotations("val"), with_masks=True)
    classes = SemanticFolder(scenes.semantic_root, "val", reduce_zero_label=True,
                             num_classes=scenes.semantic_num_classes(reduce_zero_label=True))
    with_background = SemanticFolder(scenes.semantic_root, "val")
    assert boxes.num_classes == classes.num_classes == 10 and with_background.num_classes == 11
    assert boxes.label_to_category_id[1] == 1 and boxes.label_to_category_id[10] == 19
    for index in (0, 7, len(boxes) - 1):
        image, target = boxes[index]
        semantic_image, labels = classes[index]
        assert image.shape == (3, 128, 128) and (image == semantic_image).all()
        expected = np.full((128, 128), 255)
        for label, mask in zip(target["labels"].tolist(), target["masks"].numpy()):
            expected[mask.astype(bool)] = label - 1  # digit d: label d + 1, semantic class d
        assert (labels.numpy() == expected).all()
        assert (with_background[index][1].numpy() == np.where(expected == 255, 0, expected + 1)).all()
        # the digits are drawn where their masks are: ink pixels are brighter than the background
        ink = target["masks"].bool().any(0)
        assert image.mean(0)[ink].mean() > image.mean(0)[~ink].mean() + 0.3


def test_a_second_call_reuses_the_written_scenes(scenes, monkeypatch):
    marker = scenes.root / MARKER
    written = marker.stat().st_mtime_ns

    def refuse(root):
        raise AssertionError("rewrote finished scenes")

    monkeypatch.setattr(digit_scenes, "write_digit_scenes", refuse)
    assert ensure_digit_scenes(scenes.root) == scenes.root
    assert dataset_paths(scenes.root).root == scenes.root
    assert marker.stat().st_mtime_ns == written


def test_writing_is_deterministic(tmp_path, few_scenes):
    first, second = ensure_digit_scenes(tmp_path / "a"), ensure_digit_scenes(tmp_path / "b")
    assert _digests(first) == _digests(second) and len(_digests(first)) == 3 * 7 + 3  # 3 files a scene, 2 JSON, marker


def _digests(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_an_interrupted_write_is_never_taken_as_finished(tmp_path, few_scenes, monkeypatch):
    real_writer = digit_scenes.write_digit_scenes

    def interrupted(root):
        real_writer(root)  # every scene written, then killed before the marker
        raise KeyboardInterrupt

    monkeypatch.setattr(digit_scenes, "write_digit_scenes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_digit_scenes(tmp_path / "scenes")
    assert not (tmp_path / "scenes").exists() and not list(tmp_path.glob(".scenes.building-*"))
    monkeypatch.setattr(digit_scenes, "write_digit_scenes", real_writer)
    stale = tmp_path / ".scenes.building-killed"  # what a SIGKILL would leave behind
    stale.mkdir()
    root = ensure_digit_scenes(tmp_path / "scenes")
    assert (root / MARKER).is_file() and not stale.exists()


def test_processes_starting_together_write_once(tmp_path, few_scenes, monkeypatch):
    real_writer, calls = digit_scenes.write_digit_scenes, []

    def counted(root):
        calls.append(root)
        return real_writer(root)

    monkeypatch.setattr(digit_scenes, "write_digit_scenes", counted)
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:  # each opens the lock file on its own
        roots = list(pool.map(lambda _: ensure_digit_scenes(tmp_path / "scenes"), range(3)))
    assert roots == [tmp_path / "scenes"] * 3 and len(calls) == 1


def test_a_marker_of_another_version_is_rebuilt_and_a_foreign_folder_refused(tmp_path, few_scenes):
    root = ensure_digit_scenes(tmp_path / "scenes")
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps(dict(marker, version=0)))
    (root / "coco" / "val" / "00000.png").unlink()
    ensure_digit_scenes(root)
    assert (root / "coco" / "val" / "00000.png").is_file() and json.loads((root / MARKER).read_text()) == marker
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(DatasetError, match=r"photos exists and is not a digit-scenes dataset \(no digit_scenes\.json"):
        ensure_digit_scenes(foreign)
    assert (foreign / "holiday.jpg").read_bytes() == b"mine"


def test_dataset_paths_refuses_unknown_names_and_splits(tmp_path, scenes):
    with pytest.raises(ConfigError, match=r"dataset 'digit_scene' is neither the bundled 'digit_scenes' nor a folder"):
        dataset_paths("digit_scene")
    with pytest.raises(ConfigError, match=r"the digit scenes have no split 'test'; their splits are train, val"):
        scenes.coco_images("test")
