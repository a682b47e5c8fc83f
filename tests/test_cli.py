"""The `vitkd` command end to end, as a user runs it: train, print-config, eval, recipes by name, one-line errors."""

import json
import os
import re
import subprocess
import sys

import pytest
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
    # the export's preprocessing (size, crop, interpolation, mean, std) reproduces training's evaluation exactly:
    # the recipe's bilinear resize, not the loader's bicubic default, shows in the loss even where top-1 agrees
    logged = json.loads((tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["loss"] == pytest.approx(logged["val/loss"], rel=1e-6)  # bicubic: 2e-5 apart


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


def test_train_takes_a_shipped_recipe_by_name(tmp_path, monkeypatch, capsys):
    from vitkd.cli import main

    monkeypatch.chdir(tmp_path)  # no recipes/ here
    assert main(["train", "demo/vit_plain", "train.epochs=3", "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["name"] == "vit_plain" and resolved["train"]["epochs"] == 3
    assert resolved["student"]["kwargs"]["embed_dim"] == 96  # from the recipe's `base: base.yaml`
    assert main(["train", "imagenet/vitkd_deit_tiny.yaml", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "vitkd_deit_tiny"

    assert main(["train", "demo/no_such_recipe"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "demo/no_such_recipe" in error and "demo/vit_plain" in error
    assert "imagenet/vitkd_deit_tiny" in error


def test_only_user_errors_become_one_line(monkeypatch, capsys):
    from vitkd import cli
    from vitkd.errors import CacheCorruptionError

    def corrupt(args):
        raise CacheCorruptionError("epoch_000.bin: 1 record fails its CRC32", file="epoch_000.bin", epoch=0,
                                   sample_ids=[7])

    monkeypatch.setattr(cli, "_run_demo", corrupt)  # a LogitCacheError that is no ValueError/OSError
    assert cli.main(["demo"]) == 2
    assert capsys.readouterr().err == "vitkd demo: error: epoch_000.bin: 1 record fails its CRC32\n"

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_run_demo", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["demo"])


def test_bench_is_always_a_subcommand_and_its_import_errors_surface(monkeypatch, capsys):
    import vitkd.bench
    from vitkd.cli import build_parser, main

    with pytest.raises(SystemExit) as exited:
        main(["bench", "--help"])
    assert exited.value.code == 0 and "--teacher" in capsys.readouterr().out

    monkeypatch.delattr(vitkd.bench, "command", raising=False)
    monkeypatch.setitem(sys.modules, "vitkd.bench.command", None)  # `import vitkd.bench.command` now fails
    with pytest.raises(ImportError):
        build_parser()


def test_sigterm_stops_a_run_with_workers_and_the_resume_finishes_it(tmp_path, tiny_recipe):
    """A real SIGTERM to a real `vitkd train` with a loader worker: one line saying how to resume, exit 143, a
    checkpoint of the step reached; the resumed command finishes the run."""
    import signal
    import time

    recipe = tiny_recipe()
    recipe["data"]["num_workers"] = 1
    recipe["train"].update(epochs=50, log_every=1, max_steps_per_epoch=15)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, "-m", "vitkd", "train", "tiny.yaml"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)  # wait for the first finished epoch, so the signal lands inside a later one
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"vitkd train: stopped by SIGTERM after (step \d+ of epoch \d+|epoch \d+); "
                                        r".*last\.pt holds that point: continue with the same command and --resume",
                                        lines[0]), err
    # fewer epochs than planned is an allowed change: the resume finishes the epoch it stopped in (or, stopped past
    # epoch 3, only evaluates) and writes the summary
    resumed = _vitkd("train", "tiny.yaml", "--resume", "train.epochs=3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())["top1"] is not None
