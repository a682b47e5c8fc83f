"""The per-sample embedding store: round trip, durable resume of the writer and of `embed-targets`, and every refusal
(other data, another width or source, truncated or missing files, directories that are not stores)."""

import json
import pickle

import numpy as np
import pytest
import torch

from conftest import tiny_recipe_dict
from vitkd.cache.embedding_job import embed_targets
from vitkd.cache.embedding_store import DATA_FILE, EmbeddingStoreWriter, open_embedding_store
from vitkd.cache.format import write_manifest_atomic
from vitkd.config import load_recipe
from vitkd.errors import CacheFormatError, CacheMismatchError, CacheWriteError

DATASET = {"name": "toy/train", "num_samples": 5, "samples_hash": "a" * 64}
SOURCE = {"kind": "model", "model": {"name": "toy", "weights_hash": "b" * 64}}


def _writer(path, dim=3, dataset=DATASET, source=SOURCE, num_samples=5):
    return EmbeddingStoreWriter(path, num_samples=num_samples, dim=dim, dataset=dataset, source=source)


def _rows(count=5, dim=3, seed=0):
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed)) * 3


def _complete_store(path, rows):
    with _writer(path, dim=rows.shape[1]) as writer:
        writer.append(rows[:2])
        writer.append(rows[2:])
        writer.finish()
    return open_embedding_store(path)


def test_round_trip_rows_by_sample_id_as_float16(tmp_path):
    rows = _rows()
    store = _complete_store(tmp_path / "store", rows)
    assert (store.num_samples, store.dim) == (5, 3)
    expected = rows.to(torch.float16).float()  # stored as float16, returned as float32
    read = store.read(torch.tensor([3, 0, 3]))
    assert read.dtype == torch.float32 and read.shape == (3, 3)
    assert torch.equal(read, expected[[3, 0, 3]])
    assert torch.equal(store.read(np.arange(5)), expected)
    # one flat little-endian float16 file, row i at byte 6 * i
    data = (tmp_path / "store" / DATA_FILE).read_bytes()
    assert data == rows.numpy().astype("<f2").tobytes() and len(data) == 5 * 3 * 2
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["format"] == "vitkd-embeddings" and manifest["format_version"] == 1
    assert (manifest["dtype"], manifest["row_size"], manifest["rows_written"], manifest["complete"]) == \
        ("float16", 6, 5, True)
    assert manifest["dataset"] == DATASET and manifest["source"] == SOURCE
    assert torch.equal(pickle.loads(pickle.dumps(store)).read([4]), expected[[4]])  # DataLoader workers, deepcopy


def test_an_interrupted_writer_continues_where_its_manifest_says(tmp_path):
    rows = _rows()
    writer = _writer(tmp_path)
    writer.append(rows[:2])
    writer._stream.write(b"\x01" * 7)  # half a chunk that reached the disk before the process died
    writer._stream.flush()
    writer.close()
    again = _writer(tmp_path)
    assert again.rows_written == 2 and not again.complete
    assert (tmp_path / DATA_FILE).stat().st_size == 2 * 6  # the unrecorded bytes are cut off
    again.append(rows[2:])
    again.finish()
    again.close()
    assert torch.equal(open_embedding_store(tmp_path).read(range(5)), rows.half().float())
    with pytest.raises(CacheWriteError, match="is complete; refusing to append"):
        _writer(tmp_path).append(rows[:1])


def test_writer_checks_shapes_overruns_and_finite_rows(tmp_path):
    writer = _writer(tmp_path)
    with pytest.raises(CacheWriteError, match=r"shape \(B, dim=3\), got \(2, 4\)"):
        writer.append(torch.zeros(2, 4))
    with pytest.raises(CacheWriteError, match="overrun the store's 5 samples"):
        writer.append(torch.zeros(6, 3))
    bad = torch.zeros(3, 3)
    bad[1, 0], bad[2, 2] = float("nan"), 1e6  # 1e6 overflows float16
    with pytest.raises(CacheWriteError, match=r"sample ids 1, 2 are not finite in float16"):
        writer.append(bad)
    assert writer.rows_written == 0
    with pytest.raises(CacheWriteError, match="holds 0 of 5 rows"):
        writer.finish()


@pytest.mark.parametrize("change, field", [
    (dict(dim=4), "dim"),
    (dict(dataset={**DATASET, "samples_hash": "c" * 64}), "dataset.samples_hash"),
    (dict(source={**SOURCE, "model": {"name": "toy", "weights_hash": "d" * 64}}), "source.model.weights_hash"),
])
def test_a_store_for_other_settings_refuses_to_be_continued(tmp_path, change, field):
    _writer(tmp_path).append(_rows(2))
    with pytest.raises(CacheMismatchError, match=rf"embedding store .* cannot continue it:\n  {field}:") as error:
        _writer(tmp_path, **change)
    assert error.value.mismatches[0][0] == field
    assert "vitkd embed-targets RECIPE --model toy" in str(error.value)


def test_check_dataset_names_the_fields_and_the_rebuild_command(tmp_path):
    store = _complete_store(tmp_path, _rows())
    store.check_dataset(DATASET)  # the data it was built for
    other = {"name": "toy/train", "num_samples": 6, "samples_hash": "e" * 64}
    with pytest.raises(CacheMismatchError) as error:
        store.check_dataset(other)
    message = str(error.value)
    assert {field for field, _, _ in error.value.mismatches} == {"dataset.num_samples", "dataset.samples_hash"}
    assert "dataset.num_samples: this run has 6, the store has 5" in message
    assert "the training samples (data.dataset, data.root, data.train_split) differ" in message
    assert "`vitkd embed-targets RECIPE --model toy [--checkpoint PATH] --output NEW_DIR`" in message


def test_truncated_missing_incomplete_and_not_a_store(tmp_path):
    store_dir = tmp_path / "store"
    _complete_store(store_dir, _rows())
    data = store_dir / DATA_FILE
    data.write_bytes(data.read_bytes()[:-1])
    with pytest.raises(CacheFormatError, match=r"embeddings.f16 is truncated: 29 bytes; expected 30 bytes = 5 rows "
                                               r"x 3"):
        open_embedding_store(store_dir)
    data.unlink()
    with pytest.raises(CacheFormatError, match="embeddings.f16 is missing"):
        open_embedding_store(store_dir)
    with pytest.raises(CacheFormatError, match=r"the manifest records 5 rows; delete .* and rebuild"):
        _writer(store_dir)

    partial = tmp_path / "partial"
    _writer(partial).append(_rows(2))
    with pytest.raises(CacheFormatError, match=r"incomplete: 2 of 5 rows written .* run `vitkd embed-targets RECIPE "
                                               r"--model toy \[--checkpoint PATH\] --output .*partial` again"):
        open_embedding_store(partial)

    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheFormatError, match=r"no manifest.json in .*empty: not an embedding store; build one with "
                                               r"`vitkd embed-targets"):
        open_embedding_store(tmp_path / "empty")
    with pytest.raises(CacheFormatError, match="does not exist"):
        open_embedding_store(tmp_path / "nowhere")
    logit_cache = tmp_path / "logits"
    write_manifest_atomic(logit_cache, {"format": "vitkd-sparse-logits", "format_version": 1})
    with pytest.raises(CacheFormatError, match=r"'format' is 'vitkd-sparse-logits', expected 'vitkd-embeddings': not "
                                               r"an embedding store"):
        open_embedding_store(logit_cache)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / DATA_FILE).write_bytes(b"\0" * 6)
    with pytest.raises(CacheFormatError, match="holds embeddings.f16 but no manifest.json"):
        _writer(stray)


def test_read_refuses_ids_out_of_range(tmp_path):
    store = _complete_store(tmp_path, _rows())
    with pytest.raises(IndexError, match=r"out of range \[0, 5\).*: 5, -1"):
        store.read([0, 5, -1])
    with pytest.raises(ValueError, match="1-D integer"):
        store.read(np.zeros((2, 2), dtype=np.int64))


# ---------------------------------------------------------------------------------------------------------------------
# embed-targets: interrupted and continued


def _cnn_recipe(tmp_path):
    return load_recipe(raw=tiny_recipe_dict(tmp_path))


def test_an_interrupted_embed_targets_continues_to_the_same_bytes(tmp_path, monkeypatch):
    recipe = _cnn_recipe(tmp_path)
    whole = embed_targets(recipe, tmp_path / "whole", model="vitkd_small_cnn", batch_size=256, progress=False)
    assert (whole.num_samples, whole.dim, whole.written, whole.reused) == (1437, 128, 1437, False)

    original, calls = EmbeddingStoreWriter.append, []

    def dies_at_the_third_chunk(self, rows):
        calls.append(rows.shape[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-run
        original(self, rows)

    monkeypatch.setattr(EmbeddingStoreWriter, "append", dies_at_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        embed_targets(recipe, tmp_path / "resumed", model="vitkd_small_cnn", batch_size=256, progress=False)
    monkeypatch.setattr(EmbeddingStoreWriter, "append", original)
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert (manifest["rows_written"], manifest["complete"]) == (512, False)

    resumed = embed_targets(recipe, tmp_path / "resumed", model="vitkd_small_cnn", batch_size=256, progress=False)
    assert (resumed.written, resumed.reused) == (1437 - 512, False)
    assert (tmp_path / "resumed" / DATA_FILE).read_bytes() == (tmp_path / "whole" / DATA_FILE).read_bytes()
    again = embed_targets(recipe, tmp_path / "resumed", model="vitkd_small_cnn", progress=False)
    assert (again.written, again.reused) == (0, True)  # a finished store is reused, not rewritten
