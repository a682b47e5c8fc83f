"""Two gloo processes write halves of each epoch; the merged cache equals a single-process write."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitkd.cache import CacheWriteError, SparseLogitWriter, open_cache

NUM_SAMPLES, TOPK, NUM_CLASSES, EPOCHS, WORLD_SIZE = 37, 4, 15, 2, 2


@pytest.fixture
def identity(cache_identity):
    return cache_identity(NUM_SAMPLES, TOPK, NUM_CLASSES)


def teacher_outputs(epoch):
    """Deterministic (seeds [N] int64, probs [N, C] float32) of one epoch, identical in every process."""
    generator = torch.Generator().manual_seed(epoch)
    probs = torch.randn(NUM_SAMPLES, NUM_CLASSES, generator=generator).mul(2).softmax(-1)
    seeds = torch.randint(0, 2**32, (NUM_SAMPLES,), generator=generator, dtype=torch.int64)
    return seeds, probs


def write_epoch(writer, epoch, sample_ids):
    seeds, probs = teacher_outputs(epoch)
    writer.begin_epoch(epoch)
    for batch in sample_ids.split(6):
        writer.write(batch, seeds[batch], probs[batch])
    return writer.finish_epoch()


def _rank_main(rank, init_file, cache_dir, outcome_dir, identity):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        writer = SparseLogitWriter(cache_dir, **identity, rank=rank, world_size=WORLD_SIZE)
        for epoch in writer.missing_epochs(EPOCHS):
            write_epoch(writer, epoch, torch.arange(NUM_SAMPLES)[rank::WORLD_SIZE])  # uneven halves: 19 and 18
        assert writer.completed_epochs() == list(range(EPOCHS))  # every rank sees what rank 0 published
        # an epoch where rank 1 drops a sample must fail on every rank (no hang) and stay invisible
        own_ids = torch.arange(NUM_SAMPLES)[rank::WORLD_SIZE]
        try:
            write_epoch(writer, EPOCHS, own_ids[:-1] if rank == 1 else own_ids)
        except CacheWriteError as error:
            with open(os.path.join(outcome_dir, f"rank{rank}.txt"), "w") as stream:
                stream.write(str(error))
    finally:
        dist.destroy_process_group()


def test_two_process_sharded_write_equals_single_process(tmp_path, identity):
    sharded, single, outcomes = tmp_path / "sharded", tmp_path / "single", tmp_path / "outcomes"
    outcomes.mkdir()
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(sharded), str(outcomes), identity), nprocs=WORLD_SIZE,
             join=True)

    writer = SparseLogitWriter(single, **identity)
    for epoch in range(EPOCHS):
        write_epoch(writer, epoch, torch.randperm(NUM_SAMPLES))

    reader = open_cache(sharded)
    assert reader.completed_epochs == list(range(EPOCHS))
    assert sorted(path.name for path in sharded.iterdir()) == ["epoch_0000.bin", "epoch_0001.bin", "manifest.json"]
    for epoch in range(EPOCHS):
        name = f"epoch_{epoch:04d}.bin"
        assert (sharded / name).read_bytes() == (single / name).read_bytes()
        seeds, probs = teacher_outputs(epoch)
        read_seeds, read_values, read_indices = reader.read(epoch, torch.arange(NUM_SAMPLES))
        values, indices = probs.topk(TOPK, dim=1)
        assert torch.equal(read_seeds, seeds)
        assert torch.equal(read_values, values.half())
        assert torch.equal(read_indices, indices)

    rank0_error = (outcomes / "rank0.txt").read_text()
    rank1_error = (outcomes / "rank1.txt").read_text()
    assert "1 sample ids never written (35)" in rank0_error and "over all 2 rank(s)" in rank0_error
    assert "rank 0 failed to finalise epoch 2" in rank1_error


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 2)])
def test_rank_outside_world_is_rejected(tmp_path, identity, rank, world_size):
    with pytest.raises(ValueError, match="rank must be in"):
        SparseLogitWriter(tmp_path, **identity, rank=rank, world_size=world_size, barrier=lambda: None)


def test_several_ranks_need_a_barrier(tmp_path, identity):
    with pytest.raises(ValueError, match="needs a barrier"):
        SparseLogitWriter(tmp_path, **identity, rank=0, world_size=2)
