"""`build_logit_cache` under two gloo processes: each rank writes its own batches; one process reads it all back."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_recipe_dict
from vitkd.cache import open_cache
from vitkd.cache.logit_job import build_logit_cache
from vitkd.config import load_recipe
from vitkd.data import build_train_dataset
from vitkd.data.mixup import build_mixup
from vitkd.data.replay import BatchReplay
from vitkd.engine.distributed import DistributedContext
from vitkd.models.factory import build_model
from vitkd.models.teacher import FrozenTeacher

WORLD_SIZE = 2


def _raw(tmp_path):
    raw = tiny_recipe_dict(tmp_path)
    raw["data"].update(mixup=0.8, cutmix=1.0, batch_size=100)
    raw["teacher"] = {"name": "vitkd_small_cnn", "checkpoint": str(tmp_path / "teacher.pt"),
                      "cache": str(tmp_path / "cache"), "cache_topk": 4}
    raw["losses"] = [{"name": "ce"}, {"name": "kd"}]
    return raw


def _rank_main(rank, tmp_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=rank, world_size=WORLD_SIZE)
    try:
        context = DistributedContext(rank=rank, world_size=WORLD_SIZE, local_rank=rank, device=torch.device("cpu"))
        build_logit_cache(load_recipe(raw=_raw(tmp_path)), epochs=1, progress=False, context=context)
    finally:
        dist.destroy_process_group()


def test_two_process_cache_logits_is_read_back_by_one_process(tmp_path):
    torch.manual_seed(0)
    model = build_model("vitkd_small_cnn", {"num_classes": 10})
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    mp.spawn(_rank_main, args=(tmp_path,), nprocs=WORLD_SIZE, join=True)

    reader = open_cache(tmp_path / "cache")
    assert reader.completed_epochs == [0] and reader.verify(progress=False).ok
    assert reader.manifest["augmentation"]["batch_replay"] == {"batch_size": 100, "world_size": WORLD_SIZE}
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == ["epoch_0000.bin", "manifest.json"]

    recipe = load_recipe(raw=_raw(tmp_path))
    dataset = build_train_dataset(recipe.data, recipe.train.seed)
    replay = BatchReplay(dataset, 100, WORLD_SIZE, recipe.train.seed, build_mixup(recipe.data, 10))
    plan = replay.plan(0)
    teacher = FrozenTeacher(model, (0.5,) * 3, (0.5,) * 3)
    for rank in range(WORLD_SIZE):  # the first and last batch each rank wrote (rank 0's last: the left-out ids)
        for ids in (plan.writer_batches(rank)[0], plan.writer_batches(rank)[-1]):
            _, images = replay.replay_batch(0, ids)
            values, indices = teacher(images).softmax(-1).topk(4, dim=1)
            _, cached_values, cached_indices = reader.read(0, ids)
            assert torch.equal(cached_values, values.half()) and torch.equal(cached_indices, indices)
