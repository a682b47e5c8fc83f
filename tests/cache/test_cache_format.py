"""Record layout, checksums, hashes and manifest validation of the logit cache format."""

import json
import zlib

import numpy as np
import pytest
import torch

from vitkd.cache import (
    CacheFormatError,
    dataset_fingerprint,
    fingerprint_samples,
    hash_config,
    hash_state_dict,
    index_dtype_for,
    record_dtype,
    record_size,
    teacher_identity,
)
from vitkd.cache.format import (
    build_manifest,
    load_manifest,
    record_checksums,
    unwritten_mask,
    write_manifest_atomic,
)


@pytest.mark.parametrize("topk", [1, 2, 5, 10, 100])
def test_record_is_4k_plus_8_bytes_with_int16_indices(topk):
    assert record_size(topk, num_classes=1000) == 4 * topk + 8
    assert record_dtype(topk, "int16").itemsize == 4 * topk + 8


def test_index_dtype_switches_to_int32_above_int16_range():
    assert index_dtype_for(32767) == np.int16
    assert index_dtype_for(32768) == np.int32
    assert record_size(10, num_classes=50_000) == 6 * 10 + 8


def test_record_field_offsets():
    dtype = record_dtype(3, "int16")
    offsets = {name: dtype.fields[name][1] for name in dtype.names}
    assert offsets == {"seed": 0, "values": 4, "indices": 10, "crc": 16}


def test_checksum_is_zlib_crc32_of_epoch_sample_id_and_payload():
    dtype = record_dtype(2, "int16")
    records = np.zeros(2, dtype=dtype)
    records["seed"] = [7, 8]
    records["values"] = [[0.5, 0.25], [0.75, 0.125]]
    records["indices"] = [[3, 1], [0, 4]]
    sample_ids = np.array([5, 9])
    checksums = record_checksums(records, epoch=3, sample_ids=sample_ids)
    for row, sample_id, checksum in zip(records, sample_ids, checksums):
        covered = row.tobytes()[: dtype.itemsize - 4]
        prefix = np.uint32(3).astype("<u4").tobytes() + np.uint64(sample_id).astype("<u8").tobytes()
        assert checksum == zlib.crc32(prefix + covered)
    # bound to position: the same record under another sample id or epoch gets another checksum
    assert record_checksums(records[:1], epoch=3, sample_ids=np.array([6]))[0] != checksums[0]
    assert record_checksums(records[:1], epoch=4, sample_ids=np.array([5]))[0] != checksums[0]


def test_all_zero_record_is_unwritten_and_fails_its_checksum():
    records = np.zeros(3, dtype=record_dtype(4, "int16"))
    records["seed"][1] = 1
    assert unwritten_mask(records).tolist() == [True, False, True]
    assert (record_checksums(records, 0, np.arange(3)) != records["crc"]).all()


def test_hash_state_dict_is_stable_and_sensitive():
    torch.manual_seed(0)
    weights = {"b.weight": torch.randn(3, 4), "a.bias": torch.randn(4), "n": torch.tensor(5)}
    reordered = {key: weights[key].clone() for key in reversed(list(weights))}
    assert hash_state_dict(weights) == hash_state_dict(reordered)
    changed = dict(weights, **{"a.bias": weights["a.bias"].clone().index_fill_(0, torch.tensor([0]), 1.0)})
    assert hash_state_dict(changed) != hash_state_dict(weights)
    assert hash_state_dict(dict(weights, **{"b.weight": weights["b.weight"].double()})) != hash_state_dict(weights)
    assert hash_state_dict(dict(weights, **{"b.weight": weights["b.weight"].reshape(4, 3)})) != hash_state_dict(weights)
    assert hash_state_dict({"x": torch.ones(2, dtype=torch.bfloat16)}) != hash_state_dict({"x": torch.ones(2)})
    with pytest.raises(TypeError, match="'bad'"):
        hash_state_dict({"bad": object()})
    identity = teacher_identity("deit_base", weights)
    assert identity == {"name": "deit_base", "weights_hash": hash_state_dict(weights)}


def test_fingerprint_samples_is_order_sensitive_and_type_stable():
    samples = [("train/a.jpg", 0), ("train/b.jpg", 1)]
    assert fingerprint_samples(samples) == fingerprint_samples([["train/a.jpg", 0], ["train/b.jpg", 1]])
    assert fingerprint_samples(samples) != fingerprint_samples(samples[::-1])
    assert fingerprint_samples(["x", "y"]) != fingerprint_samples(["x", "y", "z"])
    assert dataset_fingerprint(samples) == {"num_samples": 2, "samples_hash": fingerprint_samples(samples)}


def test_hash_config_ignores_key_order_and_refuses_opaque_objects():
    assert hash_config({"a": 1, "b": [1, 2]}) == hash_config({"b": (1, 2), "a": 1})
    assert hash_config({"a": 1}) != hash_config({"a": 2})
    with pytest.raises(TypeError, match="object"):
        hash_config({"a": object()})


def _manifest(tmp_path):
    manifest = build_manifest(num_samples=4, topk=2, num_classes=5, teacher={"name": "t", "weights_hash": "h"},
                              dataset={"num_samples": 4}, augmentation_hash="aug")
    write_manifest_atomic(tmp_path, manifest)
    return manifest


def test_manifest_written_atomically_and_reads_back(tmp_path):
    manifest = _manifest(tmp_path)
    assert load_manifest(tmp_path) == manifest
    assert [path.name for path in tmp_path.iterdir()] == ["manifest.json"]  # no temporary left behind
    for field in ("format_version", "topk", "num_classes", "index_dtype", "record_size", "num_samples", "teacher",
                  "dataset", "augmentation_hash", "completed_epochs", "created_time", "vitkd_version"):
        assert field in manifest


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=99), "unknown cache format_version 99"),
        (lambda m: m.pop("teacher"), "lacks required fields \\['teacher'\\]"),
        (lambda m: m.update(record_size=12), "record_size 12 disagrees"),
        (lambda m: m.update(index_dtype="int32"), "index_dtype 'int32' does not fit"),
        (lambda m: m.update(format="other"), "'format' is 'other'"),
    ],
)
def test_bad_manifest_is_rejected_with_file_name(tmp_path, edit, message):
    manifest = _manifest(tmp_path)
    edit(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheFormatError, match=message) as error:
        load_manifest(tmp_path)
    assert "manifest.json" in str(error.value)


def test_missing_or_garbled_manifest(tmp_path):
    with pytest.raises(CacheFormatError, match="no manifest.json in"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheFormatError, match="cannot read cache manifest"):
        load_manifest(tmp_path)
