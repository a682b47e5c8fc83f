"""Every bad input to the logit cache fails loudly, naming the file, epoch, sample id or field involved."""

import json

import pytest
import torch

from vitkd.cache import (
    CacheCorruptionError,
    CacheFormatError,
    CacheMismatchError,
    CacheWriteError,
    MissingEpochError,
    SkippedSampleError,
    SparseLogitWriter,
    UnwrittenRecordError,
    open_cache,
)
from vitkd.cli import main as vitkd_main

NUM_SAMPLES, TOPK, NUM_CLASSES = 12, 3, 10


@pytest.fixture
def identity(cache_identity):
    return cache_identity(NUM_SAMPLES, TOPK, NUM_CLASSES)


def fill_epoch(writer, epoch, sample_ids=None):
    """Write deterministic top-K targets for `sample_ids` (default: all) of `epoch`."""
    sample_ids = torch.arange(NUM_SAMPLES) if sample_ids is None else torch.as_tensor(sample_ids)
    probs = torch.randn(len(sample_ids), NUM_CLASSES, generator=torch.Generator().manual_seed(epoch)).softmax(-1)
    writer.write(sample_ids, sample_ids * 10 + epoch, probs)


@pytest.fixture
def cache_dir(tmp_path, identity):
    writer = SparseLogitWriter(tmp_path, **identity)
    for epoch in (0, 1):
        writer.begin_epoch(epoch)
        fill_epoch(writer, epoch)
        writer.finish_epoch()
    return tmp_path


RECORD_SIZE = 4 * TOPK + 8


# ------------------------------------------------------------------------------------------------ manifest mismatch

MISMATCHES = [
    ("topk", dict(topk=4)),
    ("num_classes", dict(num_classes=11)),
    ("num_samples", dict(num_samples=13, dataset_fingerprint={"num_samples": 13, "samples_hash": "b" * 64})),
    ("teacher.weights_hash", dict(teacher_id={"name": "toy_teacher", "weights_hash": "c" * 64})),
    ("dataset.samples_hash", dict(dataset_fingerprint={"num_samples": NUM_SAMPLES, "samples_hash": "e" * 64})),
    ("augmentation_hash", dict(augmentation_hash="aug-v2")),
]


@pytest.mark.parametrize("field, change", MISMATCHES, ids=[field for field, _ in MISMATCHES])
def test_writer_refuses_existing_cache_with_other_identity(cache_dir, identity, field, change):
    before = (cache_dir / "epoch_0000.bin").read_bytes()
    with pytest.raises(CacheMismatchError) as error:
        SparseLogitWriter(cache_dir, **dict(identity, **change))
    message = str(error.value)
    assert f"  {field}: this run has" in message and "manifest.json" in message
    assert error.value.mismatches[0][0] == field
    assert (cache_dir / "epoch_0000.bin").read_bytes() == before  # finished epochs untouched


@pytest.mark.parametrize(
    "expected, field, wanted, found",
    [
        ({"topk": 5}, "topk", "5", "3"),
        ({"num_classes": 1000}, "num_classes", "1000", "10"),
        ({"num_samples": 99}, "num_samples", "99", "12"),
        ({"teacher": {"name": "other", "weights_hash": "a" * 64}}, "teacher.name", '"other"', '"toy_teacher"'),
        ({"dataset_fingerprint": {"num_samples": 12, "samples_hash": "x"}}, "dataset.samples_hash", '"x"', "b" * 64),
        ({"augmentation_hash": "aug-v9"}, "augmentation_hash", '"aug-v9"', '"aug-v1"'),
    ],
)
def test_check_compatible_names_field_and_both_values(cache_dir, expected, field, wanted, found):
    reader = open_cache(cache_dir)
    with pytest.raises(CacheMismatchError) as error:
        reader.check_compatible(expected)
    line = next(line for line in str(error.value).splitlines() if line.strip().startswith(field + ":"))
    assert wanted in line.split("cache has")[0] and found in line.split("cache has")[1]


def test_check_compatible_lists_every_mismatch_and_accepts_match(cache_dir, identity):
    reader = open_cache(cache_dir)
    reader.check_compatible({key: value for key, value in identity.items()})
    with pytest.raises(CacheMismatchError) as error:
        reader.check_compatible({"topk": 1, "num_classes": 2, "augmentation_hash": "z"})
    assert [field for field, _, _ in error.value.mismatches] == ["topk", "num_classes", "augmentation_hash"]
    with pytest.raises(ValueError, match="unknown cache identity field 'top_k'"):
        reader.check_compatible({"top_k": 3})


# ------------------------------------------------------------------------------------------------ damaged files


def test_truncated_epoch_file(cache_dir):
    path = cache_dir / "epoch_0001.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CacheFormatError) as error:
        open_cache(cache_dir)
    message = str(error.value)
    assert "epoch_0001.bin" in message and "truncated" in message
    assert f"expected {NUM_SAMPLES * RECORD_SIZE}" in message


def test_missing_epoch_file(cache_dir):
    (cache_dir / "epoch_0000.bin").unlink()
    with pytest.raises(CacheFormatError, match="epoch_0000.bin is missing"):
        open_cache(cache_dir)


def test_missing_manifest_and_unknown_version(cache_dir):
    empty = cache_dir / "empty"
    empty.mkdir()
    with pytest.raises(CacheFormatError, match="no manifest.json in .*empty"):
        open_cache(empty)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["format_version"] = 7
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheFormatError, match="unknown cache format_version 7"):
        open_cache(cache_dir)


def test_flipped_byte_names_file_epoch_and_sample(cache_dir):
    path = cache_dir / "epoch_0001.bin"
    data = bytearray(path.read_bytes())
    data[7 * RECORD_SIZE + 5] ^= 0x10  # inside sample 7's values
    path.write_bytes(bytes(data))
    reader = open_cache(cache_dir)
    reader.read(1, [0, 6, 8])  # neighbours still read fine
    with pytest.raises(CacheCorruptionError) as error:
        reader.read(1, [3, 7])
    assert not isinstance(error.value, UnwrittenRecordError)
    message = str(error.value)
    assert "epoch_0001.bin" in message and "epoch 1" in message and "sample ids 7" in message
    assert error.value.sample_ids == [7] and error.value.epoch == 1
    report = reader.verify(progress=False)
    assert not report.ok and report.epochs[1].corrupted_ids == [7] and report.epochs[0].ok
    with pytest.raises(CacheCorruptionError):
        reader.verify(progress=False, raise_on_error=True)


def test_unwritten_record_is_never_returned(cache_dir):
    path = cache_dir / "epoch_0000.bin"
    data = bytearray(path.read_bytes())
    data[4 * RECORD_SIZE : 5 * RECORD_SIZE] = bytes(RECORD_SIZE)  # a hole where sample 4 should be
    path.write_bytes(bytes(data))
    reader = open_cache(cache_dir)
    with pytest.raises(UnwrittenRecordError, match="sample ids 4 were never written") as error:
        reader.read(0, [2, 4])
    assert error.value.file.endswith("epoch_0000.bin")
    assert reader.verify(progress=False).epochs[0].unwritten_ids == [4]


def test_record_moved_to_another_sample_fails_its_check(cache_dir):
    path = cache_dir / "epoch_0000.bin"
    data = bytearray(path.read_bytes())
    data[2 * RECORD_SIZE : 3 * RECORD_SIZE] = data[5 * RECORD_SIZE : 6 * RECORD_SIZE]
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptionError, match="sample ids 2"):
        open_cache(cache_dir).read(0, [2])


# ------------------------------------------------------------------------------------------------ epoch policies


def test_fail_policy_names_missing_epoch_and_cached_ones(cache_dir):
    reader = open_cache(cache_dir)
    assert reader.require_epochs(2, policy="fail") == [0, 1]
    with pytest.raises(MissingEpochError) as error:
        reader.require_epochs(4, policy="fail")
    assert "lacks epochs 2, 3" in str(error.value) and "cached: [0, 1]" in str(error.value)
    with pytest.raises(MissingEpochError, match="training epoch 2 is not in logit cache .*cached epochs: \\[0, 1\\]"):
        reader.epoch_for(2)
    with pytest.raises(MissingEpochError, match="epoch 5 is not in logit cache"):
        reader.read(5, [0])
    with pytest.raises(ValueError, match="epoch policy must be one of"):
        reader.require_epochs(2, policy="wrap")


def test_cycle_policy_maps_train_epoch_modulo_cached(cache_dir):
    reader = open_cache(cache_dir)
    assert reader.require_epochs(5, policy="cycle") == [0, 1, 0, 1, 0]
    assert reader.epoch_for(7) == 1
    seeds, _, _ = reader.read(reader.epoch_for(6), [3])
    assert seeds.tolist() == [30]  # seed of sample 3 in cached epoch 0


# ------------------------------------------------------------------------------------------------ writer misuse


def test_writer_rejects_bad_batches(tmp_path, identity):
    writer = SparseLogitWriter(tmp_path, **identity)
    with pytest.raises(CacheWriteError, match="call begin_epoch"):
        fill_epoch(writer, 0)
    writer.begin_epoch(0)
    ids = torch.arange(2)
    logits = torch.randn(2, NUM_CLASSES) * 5
    with pytest.raises(ValueError, match="not logits"):
        writer.write(ids, ids, logits)
    probs = logits.softmax(-1)
    with pytest.raises(ValueError, match="sample ids out of range \\[0, 12\\): 12"):
        writer.write(torch.tensor([0, 12]), ids, probs)
    with pytest.raises(ValueError, match="seeds must fit uint32"):
        writer.write(ids, torch.tensor([0, 2**32]), probs)
    with pytest.raises(ValueError, match="shape \\[B, num_classes=10\\]"):
        writer.write(ids, ids, probs[:, :5])
    with pytest.raises(ValueError, match="repeated class indices"):
        writer.write_topk(ids, ids, torch.full((2, TOPK), 0.2), torch.zeros(2, TOPK, dtype=torch.long))
    with pytest.raises(CacheWriteError, match="still in progress"):
        writer.begin_epoch(1)
    writer.abort_epoch()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["manifest.json"]


def test_epoch_with_missing_or_repeated_samples_is_not_saved(tmp_path, identity):
    writer = SparseLogitWriter(tmp_path, **identity)
    writer.begin_epoch(0)
    fill_epoch(writer, 0, sample_ids=range(0, NUM_SAMPLES - 2))
    fill_epoch(writer, 0, sample_ids=[3])
    with pytest.raises(CacheWriteError) as error:
        writer.finish_epoch()
    message = str(error.value)
    assert "2 sample ids never written (10, 11)" in message and "written more than once (3)" in message
    assert writer.completed_epochs() == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["manifest.json"]


def test_finished_epoch_is_never_overwritten(cache_dir, identity):
    writer = SparseLogitWriter(cache_dir, **identity)
    with pytest.raises(CacheWriteError, match="epoch 1 of .* is already complete"):
        writer.begin_epoch(1)


def test_writer_refuses_epoch_files_without_manifest(cache_dir, identity):
    (cache_dir / "manifest.json").unlink()
    with pytest.raises(CacheFormatError, match="holds epoch files .* but no manifest.json"):
        SparseLogitWriter(cache_dir, **identity)


# ------------------------------------------------------------------------------------------------ vitkd cache-info


def test_cache_info_reports_and_exit_codes(cache_dir, tmp_path, capsys):
    assert vitkd_main(["cache-info", str(cache_dir), "--verify", "--no-progress"]) == 0
    output = capsys.readouterr().out
    assert "epochs present:        2 [0, 1]" in output and f"bytes per sample-epoch: {RECORD_SIZE}" in output
    assert "integrity of" in output and ": OK" in output and '"weights_hash":"' + "a" * 64 in output
    data = bytearray((cache_dir / "epoch_0000.bin").read_bytes())
    data[RECORD_SIZE * 2] ^= 1
    (cache_dir / "epoch_0000.bin").write_bytes(bytes(data))
    assert vitkd_main(["cache-info", str(cache_dir), "--verify", "--no-progress"]) == 1
    assert "1 records fail CRC32 (sample ids 2)" in capsys.readouterr().out
    (cache_dir / "epoch_0001.bin").write_bytes(b"")
    assert vitkd_main(["cache-info", str(cache_dir)]) == 1
    assert "truncated" in capsys.readouterr().out
    assert vitkd_main(["cache-info", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ skipped samples


def test_skipped_samples_are_stored_counted_and_never_returned(tmp_path, identity):
    writer = SparseLogitWriter(tmp_path, **identity)
    writer.begin_epoch(0)
    fill_epoch(writer, 0, sample_ids=[0, 1, 2, 3, 5, 6, 7, 8, 9])
    writer.mark_skipped([4])  # e.g. the loader dropped an unreadable image
    writer.finish_epoch(allow_missing=2)  # 10 and 11 were dropped without their ids being known
    assert writer.manifest["skipped_samples"] == {"0": 3}
    reader = open_cache(tmp_path)
    reader.read(0, [0, 3, 5, 9])
    with pytest.raises(SkippedSampleError, match="sample ids 4, 11 were skipped") as error:
        reader.read(0, [11, 0, 4])
    assert error.value.epoch == 0 and error.value.file.endswith("epoch_0000.bin")
    report = reader.verify(progress=False)
    assert report.ok and report.epochs[0].skipped_ids == [4, 10, 11]
    assert "3 skipped samples" in report.to_text()


def test_more_missing_samples_than_allowed_fail(tmp_path, identity):
    writer = SparseLogitWriter(tmp_path, **identity)
    writer.begin_epoch(0)
    fill_epoch(writer, 0, sample_ids=range(NUM_SAMPLES - 3))
    with pytest.raises(CacheWriteError, match="3 sample ids never written \\(9, 10, 11, allow_missing=2\\)"):
        writer.finish_epoch(allow_missing=2)
    writer.begin_epoch(0)
    with pytest.raises(ValueError, match="all K values are zero .* use mark_skipped"):
        writer.write_topk([0], [0], torch.zeros(1, TOPK), torch.arange(TOPK).unsqueeze(0))
