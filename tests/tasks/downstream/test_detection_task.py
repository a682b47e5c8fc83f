"""End-to-end Mask R-CNN fine-tune on a subset of the digit scenes (COCO-format files), through the engine."""

import json

import pytest

from vitkd.config import load_recipe
from vitkd.downstream.metrics import COCO_METRIC_NAMES
from vitkd.errors import CheckpointError
from vitkd.training import build_trainer

from digit_scene_subsets import coco_subset, written_digit_scenes

STUDENT = {"name": "vit_tiny_patch16_224",
           "kwargs": {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2}}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return coco_subset(written_digit_scenes(), tmp_path_factory.mktemp("coco"), {"train": 4, "val": 2})


def recipe(tmp_path, scenes, **student):
    return load_recipe(raw={
        "name": "inst", "task": "instance_segmentation", "student": {**STUDENT, **student},
        "data": {"batch_size": 4, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_epochs": 0},
        "train": {"epochs": 1, "output_dir": str(tmp_path / "runs"), "progress": False},
        "downstream": {
            "data": {"dataset": "coco", **scenes, "size": 64, "scale_range": [0.5, 1.0]},
            "backbone": {"out_channels": 16, "window_size": 2, "global_blocks": [1], "drop_path_rate": 0.1},
            "head": {"anchor_sizes": [8, 16, 32, 64, 128], "min_size": 64, "max_size": 64, "box_head_width": 32,
                     "mask_head_width": 8, "detections_per_img": 10, "rpn_pre_nms_top_n_train": 200,
                     "rpn_post_nms_top_n_train": 100, "rpn_post_nms_top_n_test": 50, "rpn_batch_size_per_image": 32,
                     "box_batch_size_per_image": 16}}})


def test_mask_rcnn_fine_tune_reports_box_and_mask_ap(tmp_path, scenes):
    trainer = build_trainer(recipe(tmp_path, scenes))
    assert trainer.task.num_classes == 10 and trainer.task.class_names == [str(digit) for digit in range(10)]
    model = trainer.task.model  # the proposal and sample counts reach torchvision's detector
    assert model.rpn._pre_nms_top_n["training"] == 200 and model.rpn._post_nms_top_n == {"training": 100,
                                                                                         "testing": 50}
    assert model.rpn.fg_bg_sampler.batch_size_per_image == 32
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    summary = trainer.fit()
    assert summary["key_metric"] == "mask_AP"
    for prefix in ("box", "mask"):
        assert all(f"{prefix}_{name}" in summary for name in COCO_METRIC_NAMES)
        assert -1.0 <= summary[f"{prefix}_AP"] <= 1.0  # COCOeval's -1: no ground truth of that size
    line = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train/loss_mask", "train/loss_objectness", "val/box_AP50", "val/mask_AP"} <= set(line)
    assert json.loads((trainer.run_dir / "export" / "model.json").read_text())["task"] == "instance_segmentation"


def test_a_student_checkpoint_of_another_architecture_fails_before_training(tmp_path, scenes):
    import timm
    import torch

    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=16, embed_dim=48,
                              depth=2, num_heads=2)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt does not fit model 'vit_tiny_patch16_224': .*shape "
                                              r"mismatches \[cls_token"):
        build_trainer(recipe(tmp_path, scenes, checkpoint=str(tmp_path / "other.pt")))
