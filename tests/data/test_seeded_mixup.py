"""Seeded Mixup/CutMix: every choice comes from the batch's seeds, and batches (hence mixed images) replay exactly."""

import dataclasses

import numpy as np
import pytest
import torch

from vitkd.config import load_recipe
from vitkd.errors import ConfigError
from vitkd.data import build_train_dataset, build_train_loader
from vitkd.data.mixup import SeededMixup, build_mixup
from vitkd.data.replay import BatchReplay, plan_epoch_batches


def _images(batch, size=8, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_plan_is_a_function_of_the_seeds_and_leaves_global_rng_alone():
    mixup = SeededMixup(10, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    seeds = torch.tensor([11, 22, 33, 44, 55, 66, 77, 88])
    np.random.seed(123)
    torch.manual_seed(123)
    numpy_before, torch_before = np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    first = mixup.plan(seeds, (8, 8))
    assert np.array_equal(np.random.get_state()[1], numpy_before)
    assert torch.equal(torch.random.get_rng_state(), torch_before)
    np.random.seed(999)  # any global state: same plan
    second = mixup.plan(seeds, (8, 8))
    for name in ("partner", "lam", "cutmix", "boxes"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    other = mixup.plan(seeds + 1, (8, 8))
    assert not torch.equal(first.lam, other.lam)
    # each sample's draws depend on its own seed only (its partner position also on the batch size)
    swapped = mixup.plan(seeds.flip(0), (8, 8))
    assert torch.equal(swapped.lam.flip(0), first.lam) and torch.equal(swapped.cutmix.flip(0), first.cutmix)


def test_plan_pairs_within_the_batch_and_boxes_match_lambda():
    mixup = SeededMixup(10, mixup_alpha=0.8, cutmix_alpha=1.0)
    plan = mixup.plan(torch.arange(1000, 1064), (16, 12))
    mixed = plan.mixed
    assert mixed.any() and plan.cutmix.any() and (mixed & ~plan.cutmix).any()  # both kinds occur
    assert ((plan.partner >= 0) & (plan.partner < 64)).all()
    assert (plan.partner[mixed] != torch.arange(64)[mixed]).all()  # never mixed with itself
    assert ((plan.lam >= 0) & (plan.lam <= 1)).all()
    for i in torch.nonzero(plan.cutmix).flatten().tolist():
        y_low, y_high, x_low, x_high = plan.boxes[i].tolist()
        assert 0 <= y_low <= y_high <= 16 and 0 <= x_low <= x_high <= 12
        area = (y_high - y_low) * (x_high - x_low)
        assert plan.lam[i].item() == pytest.approx(1 - area / (16 * 12), abs=1e-6)  # timm's corrected lambda


def test_mixed_images_and_targets_follow_the_plan_exactly():
    mixup = SeededMixup(5, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    images, labels, seeds = _images(16), torch.arange(16) % 5, torch.arange(500, 516)
    mixed, targets = mixup(images, labels, seeds)
    plan = mixup.plan(seeds, (8, 8))
    for i in range(16):
        p, lam = int(plan.partner[i]), plan.lam[i]
        if not plan.mixed[i]:
            assert torch.equal(mixed[i], images[i])
        elif plan.cutmix[i]:
            y_low, y_high, x_low, x_high = plan.boxes[i].tolist()
            expected = images[i].clone()
            expected[:, y_low:y_high, x_low:x_high] = images[p, :, y_low:y_high, x_low:x_high]
            assert torch.equal(mixed[i], expected)
        else:
            assert torch.equal(mixed[i], images[i] * lam + images[p] * (1 - lam))
        smooth = torch.full((5,), 0.1 / 5)
        own, other = smooth.clone(), smooth.clone()
        own[labels[i]] += 0.9
        other[labels[p]] += 0.9
        assert torch.allclose(targets[i], own * lam + other * (1 - lam))
    assert torch.allclose(targets.sum(1), torch.ones(16))


def test_probability_zero_and_single_sample_batches_leave_images_alone():
    images, labels = _images(4), torch.arange(4)
    unmixed, _ = SeededMixup(4, mixup_alpha=1.0, prob=0.0)(images, labels, torch.arange(4))
    assert torch.equal(unmixed, images)
    single, targets = SeededMixup(4, cutmix_alpha=1.0, label_smoothing=0.0)(images[:1], labels[:1], torch.tensor([7]))
    assert torch.equal(single, images[:1]) and targets[0, 0] == 1.0


def test_build_mixup_is_off_by_default_and_names_bad_settings(tiny_recipe):
    recipe = load_recipe(raw=tiny_recipe())
    assert build_mixup(recipe.data, 10) is None
    with pytest.raises(ConfigError, match=r"data\.mixup_prob must be >= 0 and <= 1, got 1\.5"):  # at validation
        load_recipe(raw=tiny_recipe(data=dict(tiny_recipe()["data"], mixup=0.8, mixup_prob=1.5)))
    unchecked = dataclasses.replace(recipe.data, mixup=0.8, mixup_prob=1.5)  # built without the recipe checks
    with pytest.raises(ConfigError, match=r"prob must be in \[0, 1\]"):
        build_mixup(unchecked, 10)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_batch_plan_equals_the_training_loaders_batches(tiny_recipe, world_size):
    recipe = load_recipe(raw=tiny_recipe(data=dict(tiny_recipe()["data"], batch_size=100)))
    dataset = build_train_dataset(recipe.data, seed=4)
    plan = plan_epoch_batches(len(dataset), 100, seed=4, epoch=3, world_size=world_size)
    seen = []
    for rank in range(world_size):
        loader = build_train_loader(dataset, recipe.data, seed=4, rank=rank, world_size=world_size)
        loader.sampler.set_epoch(3)
        batches = [list(batch) for batch in loader.batch_sampler]
        assert batches == plan.rank_batches[rank][: len(batches)]  # training drops only the last short batch
        assert len(plan.rank_batches[rank]) - len(batches) in (0, 1)
        seen += [i for batch in plan.writer_batches(rank) for i in batch]
    assert sorted(seen) == list(range(len(dataset)))  # the caching job sees every sample exactly once
    assert len(plan.left_out) == len(dataset) % world_size


def test_replayed_teacher_input_is_bitwise_the_mixed_training_image(tiny_recipe):
    raw = tiny_recipe(data=dict(tiny_recipe()["data"], mixup=0.8, cutmix=1.0, batch_size=48,
                                auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25))
    recipe = load_recipe(raw=raw)
    dataset = build_train_dataset(recipe.data, seed=7)
    mixup = build_mixup(recipe.data, 10)
    dataset.use_batch_replay(BatchReplay(dataset, 48, world_size=1, seed=7, mixup=mixup))
    loader = build_train_loader(dataset, recipe.data, seed=7)
    dataset.set_epoch(2)
    loader.sampler.set_epoch(2)
    for step, batch in enumerate(loader):
        if step == 2:
            break
        mixed, _ = mixup(batch.images, batch.labels, batch.seeds)
        assert not torch.equal(mixed, batch.images)
        for row in (0, 17, 47):
            sample_id = int(batch.sample_ids[row])
            assert torch.equal(dataset.teacher_input(2, sample_id), mixed[row])
    dataset.set_epoch(0)  # teacher_input does not depend on the dataset's current epoch
    assert torch.equal(dataset.teacher_input(2, sample_id), mixed[47])
