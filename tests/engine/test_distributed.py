"""Two gloo processes: the one DDP module (student + the objective's projections) keeps every copy identical; device
choice errors."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitkd.engine.distributed import DistributedContext, all_processes_agree, resolve_device
from vitkd.errors import ConfigError

WORLD_SIZE = 2


def _trainer_main(rank, init_file, recipe_raw, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        from vitkd.config import load_recipe
        from vitkd.training import build_trainer

        trainer = build_trainer(load_recipe(raw=recipe_raw), context=DistributedContext(rank=rank, world_size=WORLD_SIZE))
        assert isinstance(trainer.trained_module, torch.nn.parallel.DistributedDataParallel)
        assert trainer.trained_module.module is trainer.task.trainable  # one wrapper around student and projections
        trainer.train_one_epoch(0)
        state = {k: v for k, v in trainer.task.trainable.state_dict().items() if isinstance(v, torch.Tensor)}
        torch.save(state, os.path.join(out_dir, f"trainable{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_student_and_feature_term_projections_stay_identical_across_processes(tiny_recipe, tmp_path):
    raw = tiny_recipe(teacher={"name": "vit_small_patch16_224",
                               "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 2,
                                          "num_heads": 2}},
                      losses=[{"name": "ce"}, {"name": "vitkd", "reduction": "mean", "alpha": 1.0, "beta": 1.0}])
    raw["train"].update(epochs=1, max_steps_per_epoch=2)
    mp.spawn(_trainer_main, args=(str(tmp_path / "init"), raw, str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    a, b = (torch.load(tmp_path / f"trainable{r}.pt", weights_only=True) for r in range(WORLD_SIZE))
    assert set(a) == set(b) and any("mimic_projections" in key for key in a)
    assert any(key.startswith("student.") for key in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_device_choice_errors_name_the_option():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"--device=gpu0 is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0", option="--device")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.device=cuda but CUDA is not available here"):
            resolve_device("cuda")


def _agree_main(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        context = DistributedContext(rank=rank, world_size=WORLD_SIZE)
        answers = [all_processes_agree(torch.tensor(True), context),
                   all_processes_agree(torch.tensor(rank == 0), context)]  # only rank 0 says yes
        torch.save(answers, os.path.join(out_dir, f"agree{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_a_skip_decision_is_taken_by_every_process_alike(tmp_path):
    mp.spawn(_agree_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    answers = [torch.load(tmp_path / f"agree{rank}.pt") for rank in range(WORLD_SIZE)]
    assert answers == [[True, False], [True, False]]
    assert all_processes_agree(torch.tensor(False), DistributedContext()) is False  # single process: the flag itself


class _Killed(BaseException):
    pass


def _fit_main(rank, init_file, recipe_raw, resume, kill_at_step):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        from vitkd.config import load_recipe
        from vitkd.tasks.classification.task import ClassificationTask
        from vitkd.training import build_trainer

        if kill_at_step:
            original, calls = ClassificationTask.training_step, {"n": 0}

            def step(self, trainable, batch, epoch):
                calls["n"] += 1
                if calls["n"] == kill_at_step:
                    raise _Killed()
                return original(self, trainable, batch, epoch)

            ClassificationTask.training_step = step
        trainer = build_trainer(load_recipe(raw=recipe_raw), resume=resume,
                                context=DistributedContext(rank=rank, world_size=WORLD_SIZE))
        try:
            trainer.fit()
        except _Killed:
            pass
    finally:
        dist.destroy_process_group()


def test_two_processes_resume_from_a_mid_epoch_checkpoint_exactly(tiny_recipe, tmp_path):
    """Each process's RNG stream (drop path) and the epoch's loss sums come back; the resumed 2-process run ends
    with bitwise the uninterrupted one's weights and metrics."""
    def recipe(name):
        raw = tiny_recipe(name=name, data=dict(tiny_recipe()["data"], mixup=0.8))
        raw["student"]["kwargs"]["drop_path_rate"] = 0.1
        raw["train"].update(epochs=2, max_steps_per_epoch=4, checkpoint_every=2)
        return raw

    mp.spawn(_fit_main, args=(str(tmp_path / "init_a"), recipe("straight"), False, 0), nprocs=WORLD_SIZE, join=True)
    mp.spawn(_fit_main, args=(str(tmp_path / "init_b"), recipe("killed"), False, 4 + 4), nprocs=WORLD_SIZE, join=True)
    from vitkd.engine.checkpoint import load_checkpoint

    runs = tmp_path / "runs"
    assert load_checkpoint(runs / "killed" / "checkpoints" / "last.pt")["partial_epoch"]["step"] == 2
    mp.spawn(_fit_main, args=(str(tmp_path / "init_c"), recipe("killed"), True, 0), nprocs=WORLD_SIZE, join=True)
    a, b = (load_checkpoint(runs / name / "checkpoints" / "last.pt") for name in ("straight", "killed"))
    assert len(a["rng_per_rank"]) == WORLD_SIZE
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    import json

    def metrics(name):
        return [{k: v for k, v in json.loads(line).items() if k not in ("train/images_per_s", "train/epoch_time_s")}
                for line in (runs / name / "metrics.jsonl").read_text().splitlines()]

    assert metrics("straight") == metrics("killed")


def _parity_main(rank, init_file, recipes, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        from vitkd.config import load_recipe
        from vitkd.training import build_trainer

        for variant, recipe_raw in recipes.items():
            context = DistributedContext(rank=rank, world_size=WORLD_SIZE)
            trainer = build_trainer(load_recipe(raw=recipe_raw), context=context)
            trainer.train_one_epoch(0)
            if rank == 0:
                torch.save(trainer.task.model.state_dict(), os.path.join(out_dir, f"two_processes_{variant}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_recipe, tmp_path):
    """2 x 16 images per step over gloo against 1 x 32, for each kind of teacher signal: live logits (a CNN teacher
    under RandAugment), feature terms from a live ViT teacher (hidden states and MiniLM attention relations, with
    logit KD), and a sparse top-K logit cache written by one process. The same samples form each global batch
    (the sampler strides one permutation), each sample's augmentation comes from its own seed, the cache is read by
    sample id, and DDP averages the per-process mean gradients, so the weights agree after 4 AdamW steps up to float
    summation order, which Adam amplifies for parameters whose gradients are near zero: measured 3e-6 (live logits)
    and 1.6e-5 (feature terms) against ~5e-3 of movement, so the bound is 5e-5, 1% of how far the weights moved. Mixup/CutMix pair images within a process's batch, drop path and ViTKD's masks draw
    per process: those differ by design between 1 and 2 processes and are off here."""
    from vitkd.cache.logit_job import build_logit_cache
    from vitkd.config import load_recipe
    from vitkd.models.factory import build_model
    from vitkd.training import build_trainer

    torch.manual_seed(3)
    cnn_checkpoint = tmp_path / "cnn_teacher.pt"
    torch.save(build_model("vitkd_small_cnn", {"num_classes": 10}).state_dict(), cnn_checkpoint)
    vit_teacher = {"name": "vit_small_patch16_224",
                   "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 2}}
    kd = {"name": "kd", "temperature": 2.0}
    variants = {
        "live_logits": dict(teacher={"name": "vitkd_small_cnn", "checkpoint": str(cnn_checkpoint)},
                            losses=[{"name": "ce"}, kd], auto_augment="rand-m9-mstd0.5-inc1"),
        "feature_terms": dict(teacher=vit_teacher, auto_augment=None,
                              losses=[{"name": "ce"}, kd, {"name": "hidden", "teacher_layers": "uniform"},
                                      {"name": "attention", "student_layers": [0, 1], "teacher_layers": "uniform",
                                       "parts": ["attention", "value"]}]),
        "cached_logits": dict(teacher={"name": "vitkd_small_cnn", "checkpoint": str(cnn_checkpoint),
                                       "cache": str(tmp_path / "cache"), "cache_topk": 5},
                              losses=[{"name": "ce"}, kd], auto_augment="rand-m9-mstd0.5-inc1"),
    }

    def recipe(variant, batch_size, name):
        settings = variants[variant]
        raw = tiny_recipe(name=f"{variant}_{name}", teacher=settings["teacher"], losses=settings["losses"],
                          data=dict(tiny_recipe()["data"], batch_size=batch_size,
                                    auto_augment=settings["auto_augment"]))
        raw["train"].update(epochs=1, max_steps_per_epoch=4)
        return raw

    build_logit_cache(load_recipe(raw=recipe("cached_logits", 32, "cache")), progress=False)
    mp.spawn(_parity_main, args=(str(tmp_path / "init"), {v: recipe(v, 16, "two") for v in variants}, str(tmp_path)),
             nprocs=WORLD_SIZE, join=True)
    for variant in variants:
        single = build_trainer(load_recipe(raw=recipe(variant, 32, "one")))
        initial = {key: value.clone() for key, value in single.task.model.state_dict().items()}
        single.train_one_epoch(0)
        one = single.task.model.state_dict()
        moved = max((one[key] - initial[key]).abs().max().item() for key in one)
        assert moved > 1e-3, f"{variant}: training did not move the weights"
        two = torch.load(tmp_path / f"two_processes_{variant}.pt", weights_only=True)
        worst = max((one[key] - two[key]).abs().max().item() for key in one)
        assert worst < 5e-5, f"{variant}: largest parameter difference {worst:g} between 1 and 2 processes"


def _eval_main(rank, port, run_dir, out_dir):
    import contextlib
    import io

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    from vitkd.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["eval", run_dir, "--batch-size", "50"])
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"eval{rank}.txt"), "w") as handle:
        handle.write(f"{code}\n{printed.getvalue()}")


def test_eval_under_torchrun_shards_the_split_and_counts_every_image_once(tiny_recipe, tmp_path, capsys):
    """`vitkd eval` launched as 2 processes (torchrun's environment variables): each evaluates its own shard, rank 0
    prints the reduced metrics, equal to a single process's (360 images, none counted twice)."""
    import json
    import socket

    from vitkd.cli import main
    from vitkd.config import load_recipe
    from vitkd.training import train

    raw = tiny_recipe()
    raw["train"].update(epochs=1, max_steps_per_epoch=3)
    recipe = load_recipe(raw=raw)
    train(recipe)
    capsys.readouterr()
    assert main(["eval", str(recipe.run_dir), "--batch-size", "50"]) == 0
    single = json.loads(capsys.readouterr().out)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_eval_main, args=(port, str(recipe.run_dir), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    outputs = [(tmp_path / f"eval{rank}.txt").read_text().split("\n", 1) for rank in range(WORLD_SIZE)]
    assert [code for code, _ in outputs] == ["0", "0"] and outputs[1][1].strip() == ""  # only rank 0 prints
    sharded = json.loads(outputs[0][1])
    assert sharded["images"] == single["images"] == 360
    assert sharded["top1"] == single["top1"] and sharded["top5"] == single["top5"]
    assert abs(sharded["loss"] - single["loss"]) < 1e-5
