"""Writing then reading a logit cache gives back exactly what was stored, one record-sized read per sample."""

import pickle

import numpy as np
import pytest
import torch

from conftest import cache_identity_dict
from vitkd.cache import SparseLogitWriter, open_cache, record_dtype


def random_topk(num_samples, topk, num_classes, seed):
    """Deterministic per-sample targets: seeds [N] int64, values [N, K] float16, indices [N, K] int64."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.randn(num_samples, num_classes, generator=generator).mul(3).softmax(-1)
    values, indices = probs.topk(topk, dim=1)
    seeds = torch.randint(0, 2**32, (num_samples,), generator=generator, dtype=torch.int64)
    return seeds, values.half(), indices, probs


def make_writer(path, num_samples=37, topk=4, num_classes=20, **overrides):
    return SparseLogitWriter(path, **dict(cache_identity_dict(num_samples, topk, num_classes), **overrides))


def write_epochs(path, epochs, num_samples=37, topk=4, num_classes=20, batch_size=8):
    writer = make_writer(path, num_samples, topk, num_classes)
    stored = {}
    for epoch in epochs:
        seeds, values, indices, _ = random_topk(num_samples, topk, num_classes, seed=epoch)
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(100 + epoch))  # shuffled loader
        writer.begin_epoch(epoch)
        for batch in order.split(batch_size):
            writer.write_topk(batch, seeds[batch], values[batch], indices[batch])
        writer.finish_epoch()
        stored[epoch] = (seeds, values, indices)
    return stored


@pytest.mark.parametrize("num_classes, index_dtype", [(20, np.int16), (40_000, np.int32)])
def test_round_trip_is_exact(tmp_path, num_classes, index_dtype):
    topk, num_samples = 4, 37
    stored = write_epochs(tmp_path, [0, 1], num_samples, topk, num_classes)
    reader = open_cache(tmp_path)
    assert reader.completed_epochs == [0, 1]
    assert reader.manifest["index_dtype"] == np.dtype(index_dtype).name
    for epoch, (seeds, values, indices) in stored.items():
        read_seeds, read_values, read_indices = reader.read(epoch, torch.arange(num_samples))
        assert read_seeds.dtype == torch.int64 and read_values.dtype == torch.float16
        assert read_indices.dtype == torch.int64 and read_values.shape == (num_samples, topk)
        assert torch.equal(read_seeds, seeds)
        assert torch.equal(read_values, values)
        assert torch.equal(read_indices, indices)
        size = tmp_path.joinpath(f"epoch_{epoch:04d}.bin").stat().st_size
        bytes_per_sample_epoch = 4 * topk + 8 if index_dtype == np.int16 else 6 * topk + 8
        assert size == num_samples * bytes_per_sample_epoch


def test_random_order_reads_touch_one_record_each(tmp_path):
    stored = write_epochs(tmp_path, [0])
    seeds, values, indices = stored[0]
    reader = open_cache(tmp_path)
    sample_ids = torch.tensor([36, 0, 17, 17, 5, 29])
    read_seeds, read_values, read_indices = reader.read(0, sample_ids)
    assert torch.equal(read_seeds, seeds[sample_ids])
    assert torch.equal(read_values, values[sample_ids])
    assert torch.equal(read_indices, indices[sample_ids])
    # the record of sample i is the record_size bytes at offset i * record_size: one seek
    dtype = record_dtype(4, "int16")
    with open(tmp_path / "epoch_0000.bin", "rb") as stream:
        for sample_id in (29, 3):
            stream.seek(sample_id * dtype.itemsize)
            record = np.frombuffer(stream.read(dtype.itemsize), dtype=dtype)[0]
            assert record["seed"] == seeds[sample_id].item()
            assert np.array_equal(record["indices"], indices[sample_id].numpy())
    assert reader.read(0, np.array([], dtype=np.int64))[1].shape == (0, 4)


def test_write_takes_topk_of_full_probabilities(tmp_path):
    seeds, _, _, probs = random_topk(37, 4, 20, seed=3)
    writer = make_writer(tmp_path / "full")
    writer.begin_epoch(0)
    for batch in torch.arange(37).split(10):
        writer.write(batch, seeds[batch], probs[batch])
    writer.finish_epoch()
    read_seeds, read_values, read_indices = open_cache(tmp_path / "full").read(0, torch.arange(37))
    values, indices = probs.topk(4, dim=1)
    assert torch.equal(read_indices, indices)
    assert torch.equal(read_values, values.half())
    assert torch.equal(read_seeds, seeds)


def test_reader_pickles_without_file_contents(tmp_path):
    write_epochs(tmp_path, [0])
    reader = open_cache(tmp_path)
    expected = reader.read(0, [1, 2])
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._memmaps == {}
    assert all(torch.equal(a, b) for a, b in zip(clone.read(0, [1, 2]), expected))


def test_verify_reports_clean_cache(tmp_path):
    write_epochs(tmp_path, [0, 1])
    report = open_cache(tmp_path).verify(progress=False)
    assert report.ok and report.num_records == 2 * 37
    assert "OK" in report.to_text()
