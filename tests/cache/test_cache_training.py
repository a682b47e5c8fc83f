"""Training from a sparse-logit cache: replay, soft labels, no teacher built, every bad input, resumed caching."""

import json
import shutil
import warnings

import pytest
import torch

import vitkd.models.teacher as teacher_module
import vitkd.tasks.classification.task as task_module
from conftest import tiny_recipe_dict
from vitkd.cache import (CacheCorruptionError, CacheFormatError, CacheMismatchError, MissingEpochError, open_cache,
                         rebuild_soft_labels)
from vitkd.cache.logit_job import build_logit_cache
from vitkd.cache.writer import SparseLogitWriter
from vitkd.config import load_recipe
from vitkd.errors import ConfigError
from vitkd.data.loader import Batch
from vitkd.tasks.classification.cached_teacher import CachedTeacher, open_cached_teacher
from vitkd.training import build_trainer, train
from vitkd.models.factory import build_model
from vitkd.models.teacher import FrozenTeacher

TEACHER = "vitkd_small_cnn"
EPOCHS, TOPK, BATCH = 2, 5, 64


def _raw(tmp, cache, checkpoint, **data):
    raw = tiny_recipe_dict(tmp)
    raw["data"].update({"mixup": 0.8, "cutmix": 1.0, "batch_size": BATCH, **data})
    raw["teacher"] = {"name": TEACHER, "checkpoint": str(checkpoint), "cache": str(cache), "cache_topk": TOPK}
    raw["losses"] = [{"name": "ce"}, {"name": "kd", "temperature": 2.0}]
    raw["train"].update(epochs=EPOCHS, max_steps_per_epoch=2)
    return raw


def _teacher_checkpoint(path, seed):
    torch.manual_seed(seed)
    torch.save(build_model(TEACHER, {"num_classes": 10}).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 2-epoch K=5 cache of a small CNN teacher with Mixup+CutMix, and every (ids, image) batch the teacher saw."""
    tmp = tmp_path_factory.mktemp("cached")
    checkpoint = _teacher_checkpoint(tmp / "teacher.pt", seed=1)
    raw = _raw(tmp, tmp / "cache", checkpoint)
    seen = []
    original_forward, original_write = FrozenTeacher.forward, SparseLogitWriter.write
    last_images = {}

    def recording_forward(self, images):
        last_images["value"] = images.clone()
        return original_forward(self, images)

    def recording_write(self, sample_ids, seeds, probs):
        seen.append((self._epoch, sample_ids.clone(), last_images["value"]))
        return original_write(self, sample_ids, seeds, probs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FrozenTeacher, "forward", recording_forward)
        patch.setattr(SparseLogitWriter, "write", recording_write)
        result = build_logit_cache(load_recipe(raw=raw), progress=False)
    return {"tmp": tmp, "raw": raw, "checkpoint": checkpoint, "result": result, "seen": seen}


def _teacher(checkpoint):
    model = build_model(TEACHER, {"num_classes": 10}, str(checkpoint))
    return FrozenTeacher(model, (0.5,) * 3, (0.5,) * 3)


def _copy_cache(built, tmp_path):
    copy = tmp_path / "cache_copy"
    shutil.copytree(built["result"].path, copy)
    return copy


def _raw_with(built, tmp_path, cache=None, teacher=None, **data):
    raw = json.loads(json.dumps(built["raw"]))
    raw["train"]["output_dir"] = str(tmp_path / "runs")
    raw["data"].update(data)
    if cache is not None:
        raw["teacher"]["cache"] = str(cache)
    raw["teacher"].update(teacher or {})
    return raw


# ------------------------------------------------------------------------------------------------------------------
# the cache and its replay


def test_cache_has_every_sample_of_every_epoch_in_4k_plus_8_bytes(built):
    result = built["result"]
    assert result.written == [0, 1] and result.record_size == 4 * TOPK + 8
    reader = open_cache(result.path)
    assert reader.completed_epochs == [0, 1] and reader.verify(progress=False).ok
    manifest = reader.manifest
    assert manifest["augmentation"]["batch_replay"] == {"batch_size": BATCH, "world_size": 1}
    assert manifest["teacher"]["name"] == TEACHER and manifest["dataset"]["name"] == "digits/train"
    ids_per_epoch = {}
    for epoch, ids, _ in built["seen"]:
        ids_per_epoch.setdefault(epoch, []).extend(ids.tolist())
    assert all(sorted(ids) == list(range(1437)) for ids in ids_per_epoch.values())


def test_replayed_images_are_bitwise_the_teachers_and_reproduce_its_topk(built):
    trainer = build_trainer(load_recipe(raw=_raw_with(built, built["tmp"] / "replay")))
    dataset = trainer.task.train_dataset
    reader = open_cache(built["result"].path)
    teacher = _teacher(built["checkpoint"])
    checked_mixed = 0
    for epoch, ids, images in built["seen"][::7]:
        replay_batch, replayed = dataset.batch_replay.replay_batch(epoch, ids.tolist())
        assert torch.equal(replayed, images)  # the whole (mixed) batch, bitwise
        row = len(ids) // 2
        assert torch.equal(dataset.teacher_input(epoch, int(ids[row])), images[row])
        checked_mixed += int(not torch.equal(replayed, replay_batch.images))
        values, indices = teacher(replayed).softmax(-1).topk(TOPK, dim=1)
        _, cached_values, cached_indices = reader.read(epoch, ids)
        assert torch.equal(cached_values, values.half()) and torch.equal(cached_indices, indices)
    assert checked_mixed > 0


def test_training_meets_the_batches_and_images_the_teacher_saw(built, tmp_path, monkeypatch):
    by_first_id = {(epoch, int(ids[0])): (ids, images) for epoch, ids, images in built["seen"]}
    recorded = []
    original = CachedTeacher.__call__

    def recording_call(self, images, batch, epoch):
        recorded.append((epoch, batch.sample_ids.clone(), images.clone()))
        return original(self, images, batch, epoch)

    monkeypatch.setattr(CachedTeacher, "__call__", recording_call)
    train(load_recipe(raw=_raw_with(built, tmp_path)))
    assert len(recorded) == EPOCHS * 2
    for epoch, ids, images in recorded:
        teacher_ids, teacher_images = by_first_id[(epoch, int(ids[0]))]
        assert torch.equal(ids, teacher_ids) and torch.equal(images, teacher_images)


def test_soft_labels_are_rebuilt_from_the_topk_and_hard_targets_are_the_cached_argmax(built):
    reader = open_cache(built["result"].path)
    reader.require_epochs(EPOCHS)
    source = CachedTeacher(reader, num_classes=10, device=torch.device("cpu"))
    ids = torch.tensor([5, 700, 1436, 5])
    seeds, values, indices = reader.read(1, ids)
    images = torch.zeros(4, 3, 16, 16)
    outputs = source(images, Batch(images, torch.zeros(4, dtype=torch.long), ids, seeds), epoch=1)
    assert outputs.from_cache and outputs.logits.shape == (4, 10)
    probs = outputs.logits.softmax(-1)
    for row in range(4):  # by hand: top-K at their classes, the rest of the mass spread evenly
        expected = torch.full((10,), (1 - values[row].float().sum().item()) / (10 - TOPK))
        expected[indices[row]] = values[row].float()
        assert torch.allclose(probs[row], expected, atol=1e-6)
        assert outputs.logits[row].argmax().item() == indices[row, 0].item()
    assert torch.allclose(probs, rebuild_soft_labels(values, indices, 10), atol=1e-6)
    bad_seeds = seeds.clone()
    bad_seeds[2] += 1
    with pytest.raises(CacheMismatchError, match=r"sample 1436: cache \d+, batch \d+"):
        source(images, Batch(images, torch.zeros(4, dtype=torch.long), ids, bad_seeds), epoch=1)


# ------------------------------------------------------------------------------------------------------------------
# training


def test_cached_kd_and_deit_train_without_ever_building_the_teacher(built, tmp_path, monkeypatch):
    real_build = task_module.build_model

    def no_teacher(name, *args, **kwargs):
        if name == TEACHER:
            raise AssertionError("the teacher model must not be built when teacher.cache is set")
        return real_build(name, *args, **kwargs)

    monkeypatch.setattr(task_module, "build_model", no_teacher)  # the student
    monkeypatch.setattr(teacher_module, "build_model", no_teacher)  # every live teacher (training and cache-logits)
    summary = train(load_recipe(raw=_raw_with(built, tmp_path / "kd")))
    assert set(summary["losses"]) == {"ce", "kd"} and summary["top1"] is not None
    for mode in ("hard", "soft"):
        raw = _raw_with(built, tmp_path / mode)
        raw["name"] = f"deit_{mode}"
        raw["student"] = {"name": "deit_tiny_distilled_patch16_224", "kwargs": raw["student"]["kwargs"]}
        raw["losses"] = [{"name": "ce"}, {"name": "deit", "mode": mode}]
        raw["train"]["epochs"] = 1
        trainer = build_trainer(load_recipe(raw=raw))
        assert trainer.task.teacher is None and isinstance(trainer.task.teacher_source, CachedTeacher)
        assert all(torch.isfinite(torch.tensor(v)) for k, v in trainer.train_one_epoch(0).items() if "/" in k)


@pytest.mark.parametrize("feature_loss", ["vitkd", "manifold"])
def test_feature_losses_refuse_the_cache(built, tmp_path, feature_loss):
    raw = _raw_with(built, tmp_path)
    raw["losses"] = [{"name": "ce"}, {"name": feature_loss, "student_layers": [0], "teacher_layers": ["features.2"]}]
    with pytest.raises(ConfigError, match=rf"'{feature_loss}'.*live teacher's tokens.*remove teacher\.cache"):
        build_trainer(load_recipe(raw=raw))


def test_cache_recorded_with_other_library_versions_warns_by_name(built, tmp_path):
    copy = _copy_cache(built, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["recorded_with"]["timm"] = "0.0.1"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"timm 0\.0\.1.*this run has timm"):
        trainer = build_trainer(load_recipe(raw=_raw_with(built, tmp_path, cache=copy)))
    assert isinstance(trainer.task.teacher_source, CachedTeacher)


def test_cycle_policy_replays_the_cached_epochs_and_fail_refuses_before_training(built, tmp_path):
    raw = _raw_with(built, tmp_path / "cycle", teacher={"cache_epochs_policy": "cycle"})
    raw["train"]["epochs"] = 3
    trainer = build_trainer(load_recipe(raw=raw))
    assert [trainer.task.teacher_source.data_epoch(e) for e in range(3)] == [0, 1, 0]
    trainer.fit()  # the per-step seed check would fail if epoch 2 did not replay epoch 0's images
    raw = _raw_with(built, tmp_path / "fail")
    raw["train"]["epochs"] = 3
    with pytest.raises(MissingEpochError, match=r"lacks epochs 2 .*policy='cycle'"):
        build_trainer(load_recipe(raw=raw))


# ------------------------------------------------------------------------------------------------------------------
# bad input: each refused before the first step, naming the field


@pytest.mark.parametrize("change, field", [
    ({"data": {"scale": [0.5, 1.0]}}, "augmentation.transform.scale"),
    ({"data": {"mixup": 0.5}}, "augmentation.mixup.mixup_alpha"),
    ({"data": {"batch_size": 32}}, "augmentation.batch_replay.batch_size"),
    ({"train": {"seed": 3}}, "augmentation.seed"),
    ({"teacher": {"cache_topk": 10}}, "topk"),
    ({"teacher": {"cache_topk": None}}, "topk"),  # unset means K = 10, not "whatever the cache holds"
    ({"teacher": {"name": "resnet18"}}, "teacher.name"),
    ({"teacher": {"kwargs": {"drop_rate": 0.1}}}, "teacher.kwargs"),
])
def test_mismatching_runs_are_refused_naming_the_field(built, tmp_path, change, field):
    raw = _raw_with(built, tmp_path)
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(CacheMismatchError) as error:
        build_trainer(load_recipe(raw=raw))
    assert field in str(error.value) and str(built["result"].path) in str(error.value)
    assert field in [mismatch[0] for mismatch in error.value.mismatches]


def test_other_teacher_weights_are_refused(built, tmp_path):
    other = _teacher_checkpoint(tmp_path / "other.pt", seed=2)
    with pytest.raises(CacheMismatchError, match=r"teacher\.checkpoint_hash"):
        build_trainer(load_recipe(raw=_raw_with(built, tmp_path, teacher={"checkpoint": str(other)})))
    with warnings.catch_warnings(record=True):  # an absent checkpoint cannot be checked: warned, name still checked
        warnings.simplefilter("always")
        trainer = build_trainer(load_recipe(raw=_raw_with(built, tmp_path, teacher={"checkpoint": str(tmp_path / "no.pt")})))
    assert isinstance(trainer.task.teacher_source, CachedTeacher)


def test_other_dataset_and_class_count_are_refused(built, tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b", "c"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (i * 40, 10, 200)).save(tmp_path / "images" / split / label / f"{i}.png")
    raw = _raw_with(built, tmp_path, dataset="folder", root=str(tmp_path / "images"))
    with pytest.raises(CacheMismatchError) as error:
        build_trainer(load_recipe(raw=raw))
    fields = [mismatch[0] for mismatch in error.value.mismatches]
    assert {"num_samples", "num_classes", "dataset.name", "dataset.samples_hash"} <= set(fields)

    copy = _copy_cache(built, tmp_path)  # same samples, other class count in the manifest
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["num_classes"] = 12
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match=r"num_classes: this run has 10, the cache has 12"):
        build_trainer(load_recipe(raw=_raw_with(built, tmp_path, cache=copy)))


def test_world_size_mismatch_under_mixup_is_refused(built, tmp_path):
    trainer = build_trainer(load_recipe(raw=_raw_with(built, tmp_path)))
    with pytest.raises(CacheMismatchError, match=r"augmentation\.batch_replay\.world_size: this run has 2"):
        open_cached_teacher(trainer.recipe, trainer.task.train_dataset, 10, trainer.task.mixup, 2, torch.device("cpu"))


def test_truncated_missing_and_corrupted_files_are_refused(built, tmp_path):
    copy = _copy_cache(built, tmp_path)
    epoch_file = copy / "epoch_0001.bin"
    original = epoch_file.read_bytes()
    epoch_file.write_bytes(original[:-7])
    with pytest.raises(CacheFormatError, match=r"epoch_0001.bin is truncated"):
        build_trainer(load_recipe(raw=_raw_with(built, tmp_path, cache=copy)))
    epoch_file.unlink()
    with pytest.raises(CacheFormatError, match=r"epoch_0001.bin is missing"):
        build_trainer(load_recipe(raw=_raw_with(built, tmp_path, cache=copy)))
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2 :] = bytes(b ^ 0xFF for b in corrupted[len(corrupted) // 2 :])
    epoch_file.write_bytes(bytes(corrupted))  # half of epoch 1 damaged: caught when its records are read
    trainer = build_trainer(load_recipe(raw=_raw_with(built, tmp_path, cache=copy)))
    trainer.train_one_epoch(0)
    with pytest.raises(CacheCorruptionError, match=r"CRC32 mismatch"):
        trainer.train_one_epoch(1)
    with pytest.raises(CacheFormatError, match=r"empty does not exist"):
        build_trainer(load_recipe(raw=_raw_with(built, tmp_path, cache=tmp_path / "empty")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheFormatError, match=r"no manifest.json in .*empty"):
        build_trainer(load_recipe(raw=_raw_with(built, tmp_path, cache=tmp_path / "empty")))


# ------------------------------------------------------------------------------------------------------------------
# cache-logits: interrupted and resumed


class _Interrupt(Exception):
    pass


def test_interrupted_cache_logits_resumes_at_the_first_incomplete_epoch(built, tmp_path, monkeypatch):
    raw = _raw_with(built, tmp_path, cache=tmp_path / "resumed")
    recipe = load_recipe(raw=raw)
    original = FrozenTeacher.forward
    calls = {"count": 0}

    def failing_forward(self, images):
        calls["count"] += 1
        if calls["count"] == 30:  # in epoch 1 (23 batches per epoch)
            raise _Interrupt()
        return original(self, images)

    monkeypatch.setattr(FrozenTeacher, "forward", failing_forward)
    with pytest.raises(_Interrupt):
        build_logit_cache(recipe, progress=False)
    assert open_cache(tmp_path / "resumed").completed_epochs == [0]
    epoch0 = (tmp_path / "resumed" / "epoch_0000.bin").stat().st_mtime_ns
    monkeypatch.setattr(FrozenTeacher, "forward", original)
    result = build_logit_cache(recipe, progress=False)
    assert result.written == [1]
    assert (tmp_path / "resumed" / "epoch_0000.bin").stat().st_mtime_ns == epoch0
    for name in ("epoch_0000.bin", "epoch_0001.bin"):  # same bytes as the uninterrupted cache
        assert (tmp_path / "resumed" / name).read_bytes() == (built["result"].path / name).read_bytes()
    assert sorted(path.name for path in (tmp_path / "resumed").iterdir()) == [
        "epoch_0000.bin", "epoch_0001.bin", "manifest.json"]
    assert build_logit_cache(recipe, progress=False).written == []  # complete: nothing to do
    with pytest.raises(CacheMismatchError, match=r"augmentation\.batch_replay\.batch_size"):
        build_logit_cache(load_recipe(raw=dict(raw, data=dict(raw["data"], batch_size=32))), progress=False)
