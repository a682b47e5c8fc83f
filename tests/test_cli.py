"""The `vitkd` command end to end, as a user runs it: train, print-config, eval, and one-line errors."""

import json
import os
import subprocess
import sys

import yaml


def _vitkd(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "vitkd", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_train_then_eval_from_the_command_line(tmp_path, tiny_recipe):
    recipe = tiny_recipe()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))

    shown = _vitkd("train", "tiny.yaml", "train.epochs=1", "optim.lr=0.001", "--print-config", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["train"]["epochs"] == 1 and resolved["optim"]["lr"] == 0.001
    assert not (tmp_path / "runs").exists()  # printing the config does no work

    trained = _vitkd("train", "tiny.yaml", "train.epochs=1", "train.max_steps_per_epoch=4", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())

    evaluated = _vitkd("eval", str(tmp_path / "runs" / "tiny"), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
    assert abs(metrics["top1"] - summary["best_top1"]) < 1e-6 and {"top5", "loss"} <= set(metrics)


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, tiny_recipe):
    recipe = tiny_recipe()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    unknown_key = _vitkd("train", "tiny.yaml", "optim.learning_rate=0.1", cwd=tmp_path)
    assert unknown_key.returncode == 2
    assert "optim.learning_rate" in unknown_key.stderr and "lr" in unknown_key.stderr
    assert "Traceback" not in unknown_key.stderr
    missing = _vitkd("train", "no_such_recipe.yaml", cwd=tmp_path)
    assert missing.returncode == 2 and "no_such_recipe.yaml" in missing.stderr
    bad_weights = _vitkd("eval", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert bad_weights.returncode == 2 and "nowhere" in bad_weights.stderr
