"""Mid-epoch checkpoints (`train.checkpoint_every`), stop signals, and runs that stay consistent across a kill.

Under the shipped loader settings (a worker, Mixup/CutMix, RandAugment, drop-path, EMA, a feature term): a run
stopped or killed inside an epoch and resumed ends bitwise equal to the uninterrupted run, its metrics included.
"""

import json
import os
import signal

import pytest
import torch

from vitkd.config import load_recipe
from vitkd.engine.checkpoint import load_checkpoint
from vitkd.engine.trainer import Trainer
from vitkd.errors import ConfigError, TrainingStopped
from vitkd.tasks.classification.task import ClassificationTask
from vitkd.training import train

TEACHER = {"name": "vit_small_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 2}}
TIMING_KEYS = {"train/images_per_s", "train/epoch_time_s"}


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the trainer catches it."""


def _recipe(tiny_recipe, name, **train_settings):
    raw = tiny_recipe(name=name, teacher=TEACHER,
                      data=dict(tiny_recipe()["data"], num_workers=1, mixup=0.8, cutmix=1.0,
                                auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25),
                      losses=[{"name": "ce"}, {"name": "kd", "temperature": 2.0},
                              {"name": "vitkd", "reduction": "mean", "alpha": 1.0, "beta": 1.0}])
    raw["student"]["kwargs"]["drop_path_rate"] = 0.1
    raw["train"].update(epochs=2, max_steps_per_epoch=6, ema=True, ema_decay=0.9, **train_settings)
    return load_recipe(raw=raw)


def _at_step(monkeypatch, call: int, action):
    """Run `action()` at the start of the `call`-th training step of this process (1-based)."""
    original = ClassificationTask.training_step
    calls = {"n": 0}

    def step(self, trainable, batch, epoch):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return original(self, trainable, batch, epoch)

    monkeypatch.setattr(ClassificationTask, "training_step", step)
    return lambda: monkeypatch.setattr(ClassificationTask, "training_step", original)


def _final(recipe):
    state = load_checkpoint(recipe.run_dir / "checkpoints" / "last.pt")
    tensors = {**{f"model.{k}": v for k, v in state["model"].items()},
               **{f"ema.{k}": v for k, v in state["ema"].items()}}
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
               for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    return tensors, metrics, state


def _assert_same_run(a, b):
    (tensors_a, metrics_a, _), (tensors_b, metrics_b, _) = _final(a), _final(b)
    different = [key for key in tensors_a if not torch.equal(tensors_a[key], tensors_b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert metrics_a == metrics_b  # losses of the resumed epoch too: its partial sums were carried over


@pytest.fixture
def straight(tiny_recipe):
    recipe = _recipe(tiny_recipe, "straight")
    train(recipe)
    return recipe


def test_killed_inside_an_epoch_resumes_from_the_mid_epoch_checkpoint_exactly(tiny_recipe, monkeypatch, straight):
    recipe = _recipe(tiny_recipe, "killed", checkpoint_every=2)

    def raise_killed():
        raise _Killed()

    disarm = _at_step(monkeypatch, 6 + 6, raise_killed)  # killed as epoch 2's 6th step starts
    with pytest.raises(_Killed):
        train(recipe)
    saved = load_checkpoint(recipe.run_dir / "checkpoints" / "last.pt")
    assert saved["epoch"] == 0 and saved["partial_epoch"]["epoch"] == 1 and saved["partial_epoch"]["step"] == 4
    disarm()
    train(recipe, resume=True)
    _assert_same_run(straight, recipe)


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_the_resume_is_exact(tiny_recipe, monkeypatch, straight):
    recipe = _recipe(tiny_recipe, "terminated")
    disarm = _at_step(monkeypatch, 6 + 3, lambda: os.kill(os.getpid(), signal.SIGTERM))  # during epoch 2, step 3
    with pytest.raises(TrainingStopped, match=r"stopped by SIGTERM after step 3 of epoch 2; .*last\.pt holds that "
                                              r"point: continue with the same command and --resume") as stopped:
        train(recipe)
    assert stopped.value.signal_number == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after training
    saved = load_checkpoint(recipe.run_dir / "checkpoints" / "last.pt")
    assert saved["partial_epoch"]["step"] == 3
    disarm()
    train(recipe, resume=True)
    _assert_same_run(straight, recipe)


def test_sigusr1_writes_a_checkpoint_and_training_goes_on(tiny_recipe, monkeypatch, straight):
    recipe = _recipe(tiny_recipe, "warned")
    written = []
    original_save = Trainer._save_mid_epoch

    def recording_save(self, epoch, steps_done, *args):
        written.append((epoch, steps_done))
        return original_save(self, epoch, steps_done, *args)

    monkeypatch.setattr(Trainer, "_save_mid_epoch", recording_save)
    _at_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    train(recipe)
    assert written == [(0, 2)]
    _assert_same_run(straight, recipe)  # a checkpoint changes nothing in the run


def test_checkpoint_every_minutes_is_accepted_and_bad_values_are_refused(tiny_recipe):
    assert _recipe(tiny_recipe, "timed", checkpoint_every="30min").train.checkpoint_every == "30min"
    for bad in (0, -3, "soon", "5 hours"):
        with pytest.raises(ConfigError, match=r"train\.checkpoint_every must be a positive number of steps \(500\) "
                                              r"or of minutes \('30min'\)"):
            _recipe(tiny_recipe, "bad", checkpoint_every=bad)


def test_a_kill_between_an_epochs_writes_is_repaired_by_the_resume(tiny_recipe, monkeypatch, straight):
    """Killed after epoch 2's metrics line and best checkpoint but before `last.pt`, with a half-written temporary
    file and a torn metrics line: the resume re-runs epoch 2 and leaves the run as the uninterrupted one."""
    recipe = _recipe(tiny_recipe, "torn")
    import vitkd.engine.trainer as trainer_module
    original_save = trainer_module.save_checkpoint

    def killed_before_last_of_epoch_two(path, payload):
        if path.name == "last.pt" and payload["epoch"] == 1:
            raise _Killed()
        return original_save(path, payload)

    monkeypatch.setattr(trainer_module, "save_checkpoint", killed_before_last_of_epoch_two)
    with pytest.raises(_Killed):
        train(recipe)
    monkeypatch.setattr(trainer_module, "save_checkpoint", original_save)
    run = recipe.run_dir
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # epoch 2's line was written
    with (run / "metrics.jsonl").open("a") as log:
        log.write('{"epoch": 2, "train/lo')  # a torn line, as a kill during the append leaves it
    (run / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    train(recipe, resume=True)
    _assert_same_run(straight, recipe)
    assert not list(run.rglob(".*.tmp"))
    assert json.loads((run / "summary.json").read_text())["best_epoch"] == \
        json.loads((straight.run_dir / "summary.json").read_text())["best_epoch"]


def test_a_kill_before_the_summary_is_repaired_by_the_resume(tiny_recipe, straight):
    summary_path = straight.run_dir / "summary.json"
    expected = json.loads(summary_path.read_text())
    summary_path.unlink()
    train(straight, resume=True)  # nothing is left to train: the resume evaluates and writes the summary
    repaired = json.loads(summary_path.read_text())
    assert repaired["top1"] == expected["top1"] and repaired["best_top1"] == expected["best_top1"]


def test_a_resume_refuses_recipe_changes_and_takes_more_epochs(tiny_recipe, straight, capsys):
    changed = _recipe(tiny_recipe, "straight")
    changed.optim.lr = 0.01
    changed.losses[1].params["temperature"] = 4.0
    with pytest.raises(ConfigError, match=r"--resume: the recipe differs from the one .*last\.pt was trained with: "
                                          r"losses\.1\.params\.temperature: 2\.0 -> 4\.0; optim\.lr: 0\.002 -> 0\.01\. "
                                          r"Restore those values .* may change only train\.epochs"):
        train(changed, resume=True)
    longer = _recipe(tiny_recipe, "straight")
    longer.train.epochs = 3
    longer.data.num_workers = 0
    train(longer, resume=True)
    captured = capsys.readouterr()
    assert "--resume with a changed train.epochs: 2 -> 3 (the learning-rate schedule is re-planned" in \
        captured.out + captured.err
    lines = (straight.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
