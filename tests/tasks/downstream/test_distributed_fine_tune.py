"""Fine-tuning on two gloo processes (torchrun's setting): a segmentation fine-tune matches one process with the same
global batch, and a full detection fine-tune runs to its summary with only rank 0 writing."""

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitkd.config import load_recipe
from vitkd.training import build_trainer

from digit_scene_subsets import coco_subset, semantic_subset, written_digit_scenes

WORLD_SIZE = 2
STUDENT = {"name": "vit_tiny_patch16_224",
           "kwargs": {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2}}


def segmentation_recipe(scenes, output_dir, name, batch_size):
    """Semantic FPN without dropout or drop path (both draw per process), 2 AdamW steps of 8 crops in all."""
    return {
        "name": name, "task": "semantic_segmentation", "student": STUDENT,
        "data": {"batch_size": batch_size, "eval_batch_size": 2, "num_workers": 1},
        "optim": {"lr": 3e-3, "warmup_epochs": 0, "weight_decay": 0.01},
        "train": {"epochs": 1, "output_dir": str(output_dir), "progress": False},
        "downstream": {"data": {"dataset": "semantic_folder", **scenes, "size": 64, "scale_range": [0.5, 1.0]},
                       "backbone": {"out_channels": 16, "layer_decay": 0.9, "drop_path_rate": 0.0},
                       "head": {"channels": 16, "dropout": 0.0}}}


def detection_recipe(scenes, output_dir):
    return {
        "name": "det_two", "task": "detection", "student": STUDENT,
        "data": {"batch_size": 2, "num_workers": 1},
        "optim": {"lr": 1e-3, "warmup_epochs": 0},
        "train": {"epochs": 1, "output_dir": str(output_dir), "progress": False},
        "downstream": {
            "data": {"dataset": "coco", **scenes, "size": 64, "scale_range": [0.5, 1.0]},
            "backbone": {"out_channels": 16},
            "head": {"anchor_sizes": [8, 16, 32, 64, 128], "box_head_width": 32, "detections_per_img": 10,
                     "rpn_post_nms_top_n_train": 50, "box_batch_size_per_image": 32}}}


def _two_process_main(rank, init_file, segmentation_raw, detection_raw, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        from vitkd.engine.distributed import DistributedContext

        context = DistributedContext(rank=rank, world_size=WORLD_SIZE)
        trainer = build_trainer(load_recipe(raw=segmentation_raw), context=context)
        trainer.train_one_epoch(0)
        if rank == 0:
            torch.save(trainer.task.model.state_dict(), os.path.join(out_dir, "segmentation_two.pt"))
        summary = build_trainer(load_recipe(raw=detection_raw), context=context).fit()
        with open(os.path.join(out_dir, f"detection_summary{rank}.json"), "w") as handle:
            json.dump(summary, handle)
    finally:
        dist.destroy_process_group()


def test_two_process_fine_tunes_match_one_process_and_only_rank_0_writes(tmp_path):
    """2 x 4 crops against 1 x 8: each crop's augmentation comes from its own seed and no layer draws random numbers
    (no dropout, drop path or batch norm), so after 2 steps the weights agree up to float summation order (bound
    5e-5, as for classification). The detection fine-tune (Faster R-CNN's proposal sampling draws per process, so it
    is not compared with one process) evaluates on both shards and reports one summary, written by rank 0 only."""
    paths = written_digit_scenes()
    semantic = semantic_subset(paths, tmp_path / "ade", {"train": 16, "val": 3})
    (tmp_path / "coco").mkdir()
    coco = coco_subset(paths, tmp_path / "coco", {"train": 4, "val": 3})
    two_runs = tmp_path / "two"
    mp.spawn(_two_process_main, nprocs=WORLD_SIZE, join=True,
             args=(str(tmp_path / "init"), segmentation_recipe(semantic, two_runs, "seg_two", 4),
                   detection_recipe(coco, two_runs), str(tmp_path)))

    single = build_trainer(load_recipe(raw=segmentation_recipe(semantic, tmp_path / "one", "seg_one", 8)))
    initial = {key: value.clone() for key, value in single.task.model.state_dict().items()}
    single.train_one_epoch(0)
    one = single.task.model.state_dict()
    assert max((one[key] - initial[key]).abs().max().item() for key in one) > 1e-3  # training moved the weights
    two = torch.load(tmp_path / "segmentation_two.pt", weights_only=True)
    assert one.keys() == two.keys()
    worst = max((one[key] - two[key]).abs().max().item() for key in one)
    assert worst < 5e-5, f"largest parameter difference {worst:g} between 1 and 2 processes"

    summaries = [json.loads((tmp_path / f"detection_summary{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    assert summaries[0]["key_metric"] == "box_AP" and summaries[0]["box_AP"] == summaries[1]["box_AP"]
    run_dir = two_runs / "det_two"
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["box_AP"] == summaries[0]["box_AP"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch, one writer
    leftovers = [path.name for path in run_dir.rglob("*") if "rank" in path.name or path.name.endswith(".tmp")]
    assert not leftovers, leftovers
