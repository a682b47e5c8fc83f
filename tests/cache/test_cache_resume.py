"""An interrupted cache run keeps its finished epochs, shows no partial epoch, and resumes where it stopped."""

import numpy as np
import pytest
import torch

import vitkd.cache.writer as writer_module
from vitkd.cache import MissingEpochError, SparseLogitWriter, open_cache

NUM_SAMPLES, TOPK, NUM_CLASSES, TOTAL_EPOCHS = 16, 3, 9, 4


@pytest.fixture
def identity(cache_identity):
    return cache_identity(NUM_SAMPLES, TOPK, NUM_CLASSES)


class SimulatedCrash(Exception):
    pass


def teacher_probs(epoch):
    """[N, C] deterministic teacher probabilities of one epoch."""
    return torch.randn(NUM_SAMPLES, NUM_CLASSES, generator=torch.Generator().manual_seed(epoch)).softmax(-1)


def run_cache_logits(cache_dir, identity, crash_at=None):
    """What `vitkd cache-logits` does: resume at the missing epochs; optionally crash at (epoch, batch)."""
    writer = SparseLogitWriter(cache_dir, **identity)
    for epoch in writer.missing_epochs(TOTAL_EPOCHS):
        writer.begin_epoch(epoch)
        for batch_index, sample_ids in enumerate(torch.arange(NUM_SAMPLES).split(5)):
            if crash_at == (epoch, batch_index):
                raise SimulatedCrash(f"killed in epoch {epoch}")
            writer.write(sample_ids, sample_ids + 1000 * epoch, teacher_probs(epoch)[sample_ids])
        writer.finish_epoch()
    return writer


def visible_files(cache_dir):
    return sorted(path.name for path in cache_dir.iterdir() if not path.name.endswith((".partial", ".tmp")))


def test_crash_mid_epoch_then_resume(tmp_path, identity):
    with pytest.raises(SimulatedCrash):
        run_cache_logits(tmp_path, identity, crash_at=(2, 2))  # a hard kill: no cleanup code runs
    assert visible_files(tmp_path) == ["epoch_0000.bin", "epoch_0001.bin", "manifest.json"]
    reader = open_cache(tmp_path)
    assert reader.completed_epochs == [0, 1]
    with pytest.raises(MissingEpochError):
        reader.read(2, [0])

    writer = SparseLogitWriter(tmp_path, **identity)
    assert writer.first_incomplete_epoch(TOTAL_EPOCHS) == 2
    assert writer.missing_epochs(TOTAL_EPOCHS) == [2, 3]
    finished_before = (tmp_path / "epoch_0001.bin").read_bytes()

    writer = run_cache_logits(tmp_path, identity)
    assert writer.first_incomplete_epoch(TOTAL_EPOCHS) == TOTAL_EPOCHS
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"epoch_{e:04d}.bin" for e in range(4)] + [
        "manifest.json"
    ]  # the crashed run's leftovers are gone
    assert (tmp_path / "epoch_0001.bin").read_bytes() == finished_before

    uninterrupted = tmp_path / "uninterrupted"
    run_cache_logits(uninterrupted, identity)
    for epoch in range(TOTAL_EPOCHS):
        name = f"epoch_{epoch:04d}.bin"
        assert (tmp_path / name).read_bytes() == (uninterrupted / name).read_bytes()
    assert open_cache(tmp_path).verify(progress=False).ok


def test_exception_inside_with_block_removes_temporary_files(tmp_path, identity):
    with pytest.raises(SimulatedCrash):
        with SparseLogitWriter(tmp_path, **identity) as writer:
            writer.begin_epoch(0)
            writer.write(torch.arange(4), torch.arange(4), teacher_probs(0)[:4])
            raise SimulatedCrash
    assert sorted(path.name for path in tmp_path.iterdir()) == ["manifest.json"]


def test_crash_between_rename_and_manifest_update_redoes_the_epoch(tmp_path, identity, monkeypatch):
    def failing_manifest_write(*args, **kwargs):
        raise SimulatedCrash("power cut before the manifest was updated")

    writer = SparseLogitWriter(tmp_path, **identity)
    monkeypatch.setattr(writer_module, "write_manifest_atomic", failing_manifest_write)
    writer.begin_epoch(0)
    writer.write(torch.arange(NUM_SAMPLES), torch.zeros(NUM_SAMPLES, dtype=torch.long), teacher_probs(0))
    with pytest.raises(SimulatedCrash):
        writer.finish_epoch()
    monkeypatch.undo()
    assert (tmp_path / "epoch_0000.bin").is_file()
    assert open_cache(tmp_path).completed_epochs == []  # the renamed file is not trusted without the manifest
    writer = run_cache_logits(tmp_path, identity)
    assert writer.completed_epochs() == list(range(TOTAL_EPOCHS))
    seeds, values, indices = open_cache(tmp_path).read(0, np.arange(NUM_SAMPLES))
    assert seeds.tolist() == list(range(NUM_SAMPLES))
