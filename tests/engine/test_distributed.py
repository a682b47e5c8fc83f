"""Two gloo processes: the objective's trainable parts (outside DDP) get averaged gradients and stay identical."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitkd.engine.distributed import DistributedContext, average_gradients, broadcast_parameters

WORLD_SIZE = 2


def _helpers_main(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        context = DistributedContext(rank=rank, world_size=WORLD_SIZE)
        torch.manual_seed(rank)  # different initial weights on each rank
        module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
        broadcast_parameters(module, context)
        module(torch.full((4, 3), float(rank + 1))).sum().backward()  # different data -> different gradients
        module[1].bias.grad = None if rank == 1 else module[1].bias.grad  # a gradient only rank 0 has
        local = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]
        average_gradients(module, context)
        torch.save({"weights": [p.detach() for p in module.parameters()], "local": local,
                    "averaged": [p.grad for p in module.parameters()]}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_broadcast_and_average_gradients_across_two_processes(tmp_path):
    mp.spawn(_helpers_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        assert torch.equal(a, b)  # rank 0's initial weights everywhere
    for index, (a, b) in enumerate(zip(ranks[0]["averaged"], ranks[1]["averaged"])):
        assert torch.equal(a, b)
        expected = (ranks[0]["local"][index] + ranks[1]["local"][index]) / WORLD_SIZE
        assert torch.allclose(a, expected)
    assert not torch.equal(ranks[0]["local"][0], ranks[1]["local"][0])  # the ranks did disagree before averaging


def _trainer_main(rank, init_file, recipe_raw, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        from vitkd.config import load_recipe
        from vitkd.engine.trainer import Trainer

        trainer = Trainer(load_recipe(raw=recipe_raw), context=DistributedContext(rank=rank, world_size=WORLD_SIZE))
        trainer.train_one_epoch(0)
        state = {k: v for k, v in trainer.objective.state_dict().items() if isinstance(v, torch.Tensor)}
        torch.save(state, os.path.join(out_dir, f"objective{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_feature_term_projections_stay_identical_across_processes(tiny_recipe, tmp_path):
    raw = tiny_recipe(teacher={"name": "vit_small_patch16_224",
                               "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 2,
                                          "num_heads": 2}},
                      losses=[{"name": "ce"}, {"name": "vitkd", "reduction": "mean", "alpha": 1.0, "beta": 1.0}])
    raw["train"].update(epochs=1, max_steps_per_epoch=2)
    mp.spawn(_trainer_main, args=(str(tmp_path / "init"), raw, str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    a, b = (torch.load(tmp_path / f"objective{r}.pt", weights_only=True) for r in range(WORLD_SIZE))
    assert set(a) == set(b) and any("mimic_projections" in key for key in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
