"""COCO box AP and mask AP from pycocotools' COCOeval, and the conversion of torchvision detector outputs into the
result format it reads.

The six numbers are COCOeval's standard summary, as fractions in [0, 1]: AP (mean over IoU thresholds 0.50:0.05:0.95,
101 recall points, up to 100 detections per image), AP50 and AP75 (at IoU 0.5 and 0.75), and APs, APm, APl (objects
of area < 32^2, 32^2..96^2, > 96^2 pixels). As in COCOeval, a size range without any ground-truth object in the
evaluated images gives -1. No predictions at all give 0 for every range that has objects (COCOeval's own loader
refuses an empty list; an empty result set is evaluated instead). pycocotools is chosen over faster-coco-eval
because it is the reference every published number comes from and is fast enough at these sizes.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from vitkd.downstream.data.cocoapi import coco_from_dict, pycocotools_mask

COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def coco_metrics(coco_gt: Any, predictions: Sequence[dict[str, Any]], iou_type: str,
                 image_ids: Optional[Sequence[int]] = None) -> dict[str, float]:
    """COCO AP of `predictions` against the ground truth `coco_gt` (a `pycocotools.coco.COCO`, e.g.
    `CocoDataset.coco`), COCOeval's prints captured.

    Args:
        predictions: COCO result dicts (`image_id`, `category_id`, `score`, and `bbox` [x, y, w, h] for "bbox" or
            `segmentation` (RLE) for "segm"), e.g. from `to_coco_results`. They are not modified.
        iou_type: "bbox" (box AP) or "segm" (mask AP).
        image_ids: evaluate only these images (default: every image of `coco_gt`); images without predictions
            count as missed objects.
    Returns: {"AP", "AP50", "AP75", "APs", "APm", "APl"} as floats.
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    unknown = sorted({prediction["image_id"] for prediction in predictions} - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"predictions name image ids the ground truth does not have: {unknown[:5]}")
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints every step and the summary table
        if predictions:
            coco_dt = coco_gt.loadRes([dict(prediction) for prediction in predictions])  # loadRes edits its input
        else:
            coco_dt = coco_from_dict({"images": list(coco_gt.dataset["images"]), "annotations": [],
                                      "categories": list(coco_gt.dataset["categories"])})
        evaluation = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            evaluation.params.imgIds = sorted(int(image_id) for image_id in image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluation.stats[:len(COCO_METRIC_NAMES)])}


def to_coco_results(output: Mapping[str, torch.Tensor], image_id: int,
                    label_to_category_id: Union[Mapping[int, int], Sequence[int]],
                    mask_threshold: float = 0.5) -> dict[str, list[dict[str, Any]]]:
    """One image's torchvision detector output as COCO result dicts.

    Args:
        output: `boxes` (K, 4) XYXY in the image's pixels, `labels` (K,) int in 1..C, `scores` (K,), and for Mask
            R-CNN `masks` (K, 1, H, W) probabilities (all as torchvision's detectors return them in eval mode).
        image_id: the image's COCO id (`target["image_id"]`).
        label_to_category_id: label -> COCO category id (`CocoDataset.label_to_category_id`).
        mask_threshold: masks are the pixels whose probability is above it.
    Returns: {"bbox": [...]} with boxes as [x, y, w, h], plus {"segm": [...]} with compressed RLE masks when the
        output has masks; each dict also holds image_id, category_id and score.
    """
    from torchvision.ops import box_convert

    boxes = box_convert(output["boxes"].detach().float().cpu(), in_fmt="xyxy", out_fmt="xywh")  # (K, 4)
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    try:
        category_ids = [int(label_to_category_id[label]) for label in labels]
    except (KeyError, IndexError) as error:
        raise ValueError(f"predicted label {error.args[0]} has no category id in label_to_category_id") from None
    common = [{"image_id": int(image_id), "category_id": category_id, "score": score}
              for category_id, score in zip(category_ids, scores)]
    results = {"bbox": [dict(entry, bbox=box) for entry, box in zip(common, boxes.tolist())]}
    if "masks" in output:
        mask_api = pycocotools_mask()
        binary = (output["masks"].detach()[:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)  # (K, H, W)
        encoded = mask_api.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []  # K RLEs
        results["segm"] = [dict(entry, segmentation={"size": [int(size) for size in rle["size"]],
                                                     "counts": rle["counts"].decode("ascii")})
                           for entry, rle in zip(common, encoded)]
    return results
