"""Exact replay under the shipped loader settings (data-loader workers on, Mixup/CutMix on, a feature term): a
resumed run and a run with another worker count end with bitwise the same weights as the uninterrupted one."""

import pytest
import torch

from vitkd.config import load_recipe
from vitkd.engine.checkpoint import load_checkpoint
from vitkd.training import train

TEACHER = {"name": "vit_small_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 2}}


def _recipe(tiny_recipe, name, workers, epochs=3):
    raw = tiny_recipe(name=name, teacher=TEACHER,
                      data=dict(tiny_recipe()["data"], num_workers=workers, mixup=0.8, cutmix=1.0,
                                auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25),
                      losses=[{"name": "ce"}, {"name": "kd", "temperature": 2.0},
                              {"name": "vitkd", "reduction": "mean", "alpha": 1.0, "beta": 1.0}])
    raw["student"]["kwargs"]["drop_path_rate"] = 0.1  # the student draws from the global RNG every step
    raw["train"].update(epochs=epochs, max_steps_per_epoch=3, ema=True, ema_decay=0.9)
    return load_recipe(raw=raw)


def _final_state(recipe):
    state = load_checkpoint(recipe.run_dir / "checkpoints" / "last.pt")
    return {**{f"model.{k}": v for k, v in state["model"].items()},
            **{f"objective.{k}": v for k, v in state["task"]["objective"].items() if isinstance(v, torch.Tensor)},
            **{f"ema.{k}": v for k, v in state["ema"].items()}}


def _assert_same(a, b):
    assert set(a) == set(b)
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_a_run_resumed_with_loader_workers_equals_the_uninterrupted_run(tiny_recipe, interrupt_training):
    straight = _recipe(tiny_recipe, "straight", workers=1)
    train(straight)
    resumed = _recipe(tiny_recipe, "resumed", workers=1)
    disarm = interrupt_training(1)  # killed after the first epoch: the resumed process runs epochs 2 and 3
    with pytest.raises(KeyboardInterrupt):
        train(resumed)
    disarm()
    train(resumed, resume=True)
    _assert_same(_final_state(straight), _final_state(resumed))


def test_the_number_of_loader_workers_does_not_change_the_result(tiny_recipe):
    runs = [_recipe(tiny_recipe, f"workers{workers}", workers=workers) for workers in (0, 2)]
    for recipe in runs:
        train(recipe)
    _assert_same(*(_final_state(recipe) for recipe in runs))
