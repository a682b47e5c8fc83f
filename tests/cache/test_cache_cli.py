"""`vitkd cache-logits` and `vitkd cache-info` from the command line, and their one-line errors."""

import json
import os
import subprocess
import sys

import torch
import yaml

from vitkd.cli import main
from vitkd.models.factory import build_model


def _vitkd(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "vitkd", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _write_recipe(tmp_path, tiny_recipe):
    torch.manual_seed(0)
    torch.save(build_model("vitkd_small_cnn", {"num_classes": 10}).state_dict(), tmp_path / "teacher.pt")
    raw = tiny_recipe(teacher={"name": "vitkd_small_cnn", "checkpoint": str(tmp_path / "teacher.pt"),
                               "cache": str(tmp_path / "cache")},
                      losses=[{"name": "ce"}, {"name": "kd"}])
    raw["data"]["batch_size"] = 128
    (tmp_path / "cached.yaml").write_text(yaml.safe_dump(raw))
    return raw


def test_cache_logits_then_cache_info_then_train(tmp_path, tiny_recipe, capsys):
    _write_recipe(tmp_path, tiny_recipe)
    cached = _vitkd("cache-logits", "cached.yaml", "epochs=1", "topk=3", "--no-progress", cwd=tmp_path)
    assert cached.returncode == 0, cached.stderr
    summary = json.loads(cached.stdout)
    assert summary["written_now"] == [0] and summary["topk"] == 3 and summary["bytes_per_sample_epoch"] == 4 * 3 + 8

    info = _vitkd("cache-info", "cache", "--verify", "--no-progress", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "epochs present:        1 [0]" in info.stdout and "integrity of cache: OK" in info.stdout

    # resuming a complete cache does nothing; the train overrides and job settings mix freely
    assert main(["cache-logits", str(tmp_path / "cached.yaml"), "topk=3", "--epochs", "1", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["written_now"] == []
    assert main(["train", str(tmp_path / "cached.yaml"), "train.epochs=1", "train.max_steps_per_epoch=2",
                 "teacher.cache_topk=3"]) == 0


def test_cache_commands_report_bad_input_in_one_line_with_status_2(tmp_path, tiny_recipe, capsys):
    _write_recipe(tmp_path, tiny_recipe)
    recipe = str(tmp_path / "cached.yaml")
    assert main(["cache-info", str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert main(["cache-logits", recipe, "epochs=0"]) == 2
    assert "epochs=0: expected a positive integer" in capsys.readouterr().err
    assert main(["cache-logits", recipe, "topk=11", "--no-progress"]) == 2
    assert "topk=11 exceeds the dataset's 10 classes" in capsys.readouterr().err
    assert main(["cache-logits", recipe, "teacher.cache=null"]) == 2
    assert "no output directory; set teacher.cache=DIR" in capsys.readouterr().err
    assert main(["train", recipe]) == 2  # no cache built yet
    error = capsys.readouterr().err
    assert error.startswith("vitkd train: error:") and "cache" in error and "Traceback" not in error
