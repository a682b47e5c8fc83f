"""`vitkd embed-targets` and `vitkd import-embeddings`: stores from a model or from a user's matrix, reordered by
sample keys, and one clear error (exit status 2) for each bad input."""

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_recipe_dict
from vitkd.cache.embedding_job import import_embeddings
from vitkd.cache.embedding_store import open_embedding_store
from vitkd.cli import main
from vitkd.config import load_recipe
from vitkd.data.digits import DigitsDataset
from vitkd.errors import EmbeddingImportError

NUM_TRAIN = 1437


@pytest.fixture
def recipe_file(tmp_path):
    """A tiny digits recipe on disk, with the demo CNN as its (untrained) teacher."""
    raw = tiny_recipe_dict(tmp_path, teacher={"name": "vitkd_small_cnn"})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def keys():
    return DigitsDataset("train").sample_keys()


def _run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_embed_targets_from_a_model_then_reused_and_the_teacher_is_another_source(recipe_file, tmp_path, capsys):
    store = tmp_path / "store"
    status, out, _ = _run(capsys, "embed-targets", str(recipe_file), "data.num_workers=0", "--model",
                          "vitkd_small_cnn", "--model-kwargs", '{"widths": [8, 16, 24]}', "--output", str(store),
                          "--batch-size", "512", "--no-progress")
    assert status == 0
    summary = json.loads(out)
    assert (summary["num_samples"], summary["dim"], summary["written_now"], summary["reused"]) == \
        (NUM_TRAIN, 24, NUM_TRAIN, False)
    opened = open_embedding_store(store)
    assert opened.source["kind"] == "model" and opened.source["model"]["kwargs"] == {"widths": [8, 16, 24],
                                                                                     "num_classes": 10}
    assert opened.source["input"]["img_size"] == 16
    status, out, _ = _run(capsys, "embed-targets", str(recipe_file), "--model", "vitkd_small_cnn", "--model-kwargs",
                          '{"widths": [8, 16, 24]}', "--output", str(store), "--no-progress")
    assert status == 0 and json.loads(out)["reused"] is True
    # the recipe's teacher (128 wide) is another source: refused, naming what differs
    status, _, err = _run(capsys, "embed-targets", str(recipe_file), "--teacher", "--output", str(store),
                          "--no-progress")
    assert status == 2
    assert "embedding store" in err and "cannot continue it" in err and "dim: this run has 128" in err
    assert "source.kind: this run has \"teacher\", the store has \"model\"" in err


def test_embed_targets_with_the_recipe_teacher(recipe_file, tmp_path, capsys):
    status, out, _ = _run(capsys, "embed-targets", str(recipe_file), "--teacher", "--output", str(tmp_path / "t"),
                          "--no-progress")
    assert status == 0 and json.loads(out)["dim"] == 128
    assert open_embedding_store(tmp_path / "t").source["kind"] == "teacher"


@pytest.mark.parametrize("argv, message", [
    (["--teacher", "--checkpoint", "x.pt"], "--model-kwargs and --checkpoint go with --model"),
    (["--model", "vitkd_small_cnn", "--model-kwargs", "{bad"], "--model-kwargs: '{bad' is not JSON"),
    (["--model", "vitkd_small_cnn", "--model-kwargs", "[1]"], "expected a JSON dict"),
    (["--model", "no_such_model"], "unknown model 'no_such_model'"),
])
def test_embed_targets_bad_arguments(recipe_file, tmp_path, capsys, argv, message):
    status, _, err = _run(capsys, "embed-targets", str(recipe_file), *argv, "--output", str(tmp_path / "s"))
    assert status == 2 and message in err


def test_embed_targets_teacher_needs_a_recipe_teacher(tmp_path, capsys):
    path = tmp_path / "no_teacher.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    status, _, err = _run(capsys, "embed-targets", str(path), "--teacher", "--output", str(tmp_path / "s"))
    assert status == 2 and "the recipe names no teacher (teacher.name)" in err
    with pytest.raises(SystemExit):  # argparse: exactly one of --model / --teacher
        main(["embed-targets", str(path), "--output", str(tmp_path / "s")])


# ---------------------------------------------------------------------------------------------------------------------
# import-embeddings


def _shuffled(keys, tmp_path, dim=4, strip_labels=False):
    """A matrix whose row j belongs to the sample on line j of a shuffled file list; returns (matrix, list, order)."""
    order = np.random.default_rng(0).permutation(len(keys))  # line j names sample order[j]
    matrix = np.random.default_rng(1).normal(size=(len(keys), dim)).astype(np.float32)
    lines = [keys[i].rpartition(":")[0] if strip_labels else keys[i] for i in order]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n\n")
    np.save(tmp_path / "m.npy", matrix)
    return matrix, lines, order


@pytest.mark.parametrize("strip_labels", [False, True])
def test_import_reorders_rows_to_the_dataset_order(recipe_file, keys, tmp_path, capsys, strip_labels):
    matrix, _, order = _shuffled(keys, tmp_path, strip_labels=strip_labels)
    status, out, _ = _run(capsys, "import-embeddings", str(tmp_path / "m.npy"), "--files", str(tmp_path / "list.txt"),
                          str(recipe_file), "data.num_workers=0", "--output", str(tmp_path / "store"),
                          "--no-progress")
    assert status == 0 and json.loads(out)["dim"] == 4
    store = open_embedding_store(tmp_path / "store")
    expected = np.empty_like(matrix)
    expected[order] = matrix  # sample order[j] gets row j
    assert torch.equal(store.read(range(NUM_TRAIN)), torch.from_numpy(expected.astype(np.float16).astype(np.float32)))
    assert store.source["kind"] == "import" and store.source["matrix"]["shape"] == [NUM_TRAIN, 4]
    store.check_dataset(store.dataset)
    again = import_embeddings(load_recipe(recipe_file), tmp_path / "m.npy", tmp_path / "list.txt",
                              tmp_path / "store", progress=False)
    assert (again.written, again.reused) == (0, True)


def test_import_from_safetensors(recipe_file, keys, tmp_path):
    from safetensors.torch import save_file

    matrix, _, order = _shuffled(keys, tmp_path)
    save_file({"embeddings": torch.from_numpy(matrix).half(), "other": torch.zeros(1)}, str(tmp_path / "m.safetensors"))
    import_embeddings(load_recipe(recipe_file), tmp_path / "m.safetensors", tmp_path / "list.txt",
                      tmp_path / "store", progress=False)
    assert torch.equal(open_embedding_store(tmp_path / "store").read([int(order[0])]),
                       torch.from_numpy(matrix[:1]).half().float())


def _edit_and_import(recipe_file, tmp_path, lines, matrix):
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    np.save(tmp_path / "m.npy", matrix)
    import_embeddings(load_recipe(recipe_file), tmp_path / "m.npy", tmp_path / "list.txt", tmp_path / "out",
                      progress=False)


def test_import_errors_name_the_keys_lines_and_rows(recipe_file, keys, tmp_path):
    matrix, lines, order = _shuffled(keys, tmp_path)
    first, second = keys[order[0]], keys[order[1]]
    with pytest.raises(EmbeddingImportError, match=r"1 of the 1437 training samples of digits/train have no line: "
                                                   rf"'{first}'"):
        _edit_and_import(recipe_file, tmp_path, lines[1:], matrix[1:])
    with pytest.raises(EmbeddingImportError, match=r"1 line\(s\) name no training sample of digits/train: line 2 "
                                                   r"'digits/train/nope'; lines are the dataset's sample keys, e\.g\. "
                                                   r"'digits/train/0:\d'"):
        _edit_and_import(recipe_file, tmp_path, [lines[0], "digits/train/nope"] + lines[2:], matrix)
    with pytest.raises(EmbeddingImportError, match=rf"named more than once: lines 1 and 2 \('{first}'\)"):
        _edit_and_import(recipe_file, tmp_path, [lines[0], first] + lines[2:], matrix)
    with pytest.raises(EmbeddingImportError, match=r"has 1438 rows but file list .*list.txt has 1437 lines"):
        _edit_and_import(recipe_file, tmp_path, lines, np.concatenate([matrix, matrix[:1]]))
    with pytest.raises(EmbeddingImportError, match=r"has shape \(1437,\); expected a 2-D matrix"):
        _edit_and_import(recipe_file, tmp_path, lines, matrix[:, 0])
    bad = matrix.copy()
    bad[1, 2], bad[5, 0] = np.nan, 1e6
    with pytest.raises(EmbeddingImportError, match=rf"2 row\(s\) hold NaN, inf or values beyond float16's \+-65504: "
                                                   rf"row 1 \('{second}'\), row 5"):
        _edit_and_import(recipe_file, tmp_path, lines, bad)
    with pytest.raises(EmbeddingImportError, match=r"line\(s\) 2 are empty"):
        _edit_and_import(recipe_file, tmp_path, [lines[0], ""] + lines[2:], matrix)
    assert not (tmp_path / "out").exists()  # nothing written for a bad input


def test_import_errors_exit_with_status_2(recipe_file, tmp_path, capsys):
    (tmp_path / "m.csv").write_text("1,2\n")
    (tmp_path / "list.txt").write_text("digits/train/0:6\n")
    status, _, err = _run(capsys, "import-embeddings", str(tmp_path / "m.csv"), "--files", str(tmp_path / "list.txt"),
                          str(recipe_file), "--output", str(tmp_path / "s"))
    assert status == 2 and "expected a .npy or .safetensors file" in err
    np.save(tmp_path / "m.npy", np.zeros((1, 2), dtype=np.float32))
    status, _, err = _run(capsys, "import-embeddings", str(tmp_path / "m.npy"), "--files", str(tmp_path / "nope.txt"),
                          str(recipe_file), "--output", str(tmp_path / "s"))
    assert status == 2 and "file list" in err and "nope.txt does not exist" in err
