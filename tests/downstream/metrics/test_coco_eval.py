"""COCO box and mask AP on hand-made predictions, with the expected values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_api

from vitkd.downstream.data.cocoapi import coco_from_dict
from vitkd.downstream.metrics.coco_eval import COCO_METRIC_NAMES, coco_metrics, to_coco_results

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2

#: two 100 x 100 images; category ids 5 and 9 (labels 1 and 2). Boxes [x, y, w, h]:
#: image 1: a 40 x 40 object (area 1600: "medium") of category 5 and a 20 x 20 one (400: "small") of category 9;
#: image 2: a 30 x 30 object (900: "small") of category 5. No "large" (> 96^2) object anywhere.
OBJECTS = [(1, 5, [10, 10, 40, 40]), (1, 9, [60, 60, 20, 20]), (2, 5, [50, 20, 30, 30])]
LABEL_TO_CATEGORY = {1: 5, 2: 9}


def box_mask(box: list[int]) -> np.ndarray:
    mask = np.zeros((100, 100), dtype=np.uint8)
    x, y, w, h = box
    mask[y:y + h, x:x + w] = 1
    return mask


@pytest.fixture
def ground_truth():
    annotations = []
    for number, (image_id, category_id, box) in enumerate(OBJECTS, start=1):
        rle = mask_api.encode(np.asfortranarray(box_mask(box)))
        annotations.append({"id": number, "image_id": image_id, "category_id": category_id, "bbox": box,
                            "area": box[2] * box[3], "iscrowd": 0,
                            "segmentation": {"size": [100, 100], "counts": rle["counts"].decode("ascii")}})
    return coco_from_dict({"images": [{"id": 1, "width": 100, "height": 100, "file_name": "1.png"},
                                      {"id": 2, "width": 100, "height": 100, "file_name": "2.png"}],
                           "categories": [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}],
                           "annotations": annotations})


def detection(image_id: int, category_id: int, box: list[float], score: float = 0.9) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


def test_perfect_boxes_give_ap_one_and_ranges_without_objects_minus_one(ground_truth, capsys):
    predictions = [detection(image_id, category_id, box) for image_id, category_id, box in OBJECTS]
    metrics = coco_metrics(ground_truth, predictions, "bbox")
    assert list(metrics) == list(COCO_METRIC_NAMES)
    assert metrics == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": 1.0, "APm": 1.0, "APl": -1.0})
    assert capsys.readouterr().out == ""  # COCOeval's prints are captured
    assert "area" not in predictions[0]  # the caller's dicts are left as they were


def test_a_box_at_iou_0_6_counts_at_ap50_and_not_at_ap75(ground_truth):
    # the 40 x 40 box moved 10 px right: overlap 30 * 40 = 1200, union 2 * 1600 - 1200 = 2000, IoU 0.6
    predictions = [detection(1, 5, [20, 10, 40, 40])]
    metrics = coco_metrics(ground_truth, predictions, "bbox", image_ids=[1])
    # category 5 in image 1: one object, found at IoU 0.6; category 9: its object missed (AP 0). Mean over the two
    # categories: AP50 = (1 + 0) / 2; AP75 = (0 + 0) / 2
    assert metrics["AP50"] == pytest.approx(0.5) and metrics["AP75"] == 0.0


def test_ap_averages_the_ten_iou_thresholds_and_101_recall_points(ground_truth):
    # moved 8 px: overlap 32 * 40 = 1280, union 1920, IoU 2/3: matched at thresholds 0.50, 0.55, 0.60, 0.65 only
    shifted = coco_metrics(ground_truth, [detection(1, 5, [18, 10, 40, 40]), detection(1, 9, [60, 60, 20, 20])],
                           "bbox", image_ids=[1])
    assert shifted["AP"] == pytest.approx((4 / 10 + 1.0) / 2)  # category 5: 4 of 10 thresholds; category 9: all
    # one of the two category-5 objects found (precision 1 up to recall 0.5): recall points 0.00..0.50 = 51 of 101
    half = coco_metrics(ground_truth, [detection(1, 5, [10, 10, 40, 40]), detection(1, 9, [60, 60, 20, 20])],
                        "bbox")
    assert half["AP50"] == pytest.approx((51 / 101 + 1.0) / 2)


def test_a_detection_of_the_wrong_category_does_not_count(ground_truth):
    metrics = coco_metrics(ground_truth, [detection(1, 9, [10, 10, 40, 40])], "bbox")
    assert metrics["AP50"] == 0.0


def test_no_predictions_give_zero_not_a_crash(ground_truth):
    for iou_type in ("bbox", "segm"):
        assert coco_metrics(ground_truth, [], iou_type) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0,
                                                            "APm": 0.0, "APl": -1.0}


def test_detector_outputs_convert_to_coco_results_and_perfect_masks_give_mask_ap_one(ground_truth):
    predictions = {"bbox": [], "segm": []}
    for image_id in (1, 2):
        objects = [(category_id, box) for owner, category_id, box in OBJECTS if owner == image_id]
        category_to_label = {category: label for label, category in LABEL_TO_CATEGORY.items()}
        probabilities = torch.stack([torch.from_numpy(box_mask(box)).float() * 0.5 + 0.3 for _, box in objects])
        output = {"boxes": torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in objects], dtype=torch.float32),
                  "labels": torch.tensor([category_to_label[category] for category, _ in objects]),
                  "scores": torch.linspace(0.9, 0.8, len(objects)),
                  "masks": probabilities[:, None]}  # (K, 1, H, W): 0.8 on the object, 0.3 elsewhere
        for iou_type, results in to_coco_results(output, image_id, LABEL_TO_CATEGORY).items():
            predictions[iou_type] += results
    first = predictions["bbox"][0]
    assert first["bbox"] == [10, 10, 40, 40] and first["category_id"] == 5 and first["image_id"] == 1
    assert first["score"] == pytest.approx(0.9)
    # masks thresholded at 0.5: exactly the object's pixels
    assert np.array_equal(mask_api.decode(predictions["segm"][1]["segmentation"]), box_mask([60, 60, 20, 20]))
    assert coco_metrics(ground_truth, predictions["segm"], "segm") == pytest.approx(
        {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": 1.0, "APm": 1.0, "APl": -1.0})
    assert coco_metrics(ground_truth, predictions["bbox"], "bbox")["AP"] == 1.0


def test_an_image_without_detections_and_bad_arguments():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 8, 8)}
    assert to_coco_results(empty, 3, LABEL_TO_CATEGORY) == {"bbox": [], "segm": []}
    unknown = {"boxes": torch.zeros(1, 4), "labels": torch.tensor([7]), "scores": torch.ones(1)}
    with pytest.raises(ValueError, match=r"predicted label 7 has no category id"):
        to_coco_results(unknown, 3, LABEL_TO_CATEGORY)


def test_predictions_for_unknown_images_and_unknown_iou_types_are_refused(ground_truth):
    with pytest.raises(ValueError, match=r"predictions name image ids the ground truth does not have: \[42\]"):
        coco_metrics(ground_truth, [detection(42, 5, [0, 0, 1, 1])], "bbox")
    with pytest.raises(ValueError, match=r"iou_type must be one of bbox, segm, got 'keypoints'"):
        coco_metrics(ground_truth, [], "keypoints")
