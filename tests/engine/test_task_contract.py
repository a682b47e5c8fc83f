"""The engine runs any task through the same loop: a toy regression task (lower-is-better key metric) trains,
keeps its best, exports, resumes exactly and stops on a non-finite loss without saving over good weights."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from vitkd.config import load_recipe
from vitkd.engine.checkpoint import load_checkpoint
from vitkd.engine.task import TOTAL_LOSS, StepResult, Task
from vitkd.errors import ConfigError, TrainingError
from vitkd.files import atomic_write
from vitkd.tasks import TASKS, resolve_recipe
from vitkd.training import build_trainer, train


class RegressionTask(Task):
    """y = x @ w on 64 random points; the key metric is the validation MSE (lower is better)."""

    key_metric = "mse"
    higher_is_better = False
    nan_at = None  # (epoch, step) whose loss is made NaN

    def __init__(self, recipe, context):
        self.recipe, self.device = recipe, context.device
        generator = torch.Generator().manual_seed(1)
        inputs = torch.randn(64, 4, generator=generator)
        targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.val_inputs, self.val_targets = inputs[:16], targets[:16]
        self.sampler = DistributedSampler(TensorDataset(inputs, targets), num_replicas=1, rank=0, seed=recipe.train.seed)
        self.train_loader = DataLoader(TensorDataset(inputs, targets), batch_size=8, sampler=self.sampler)
        self.model = nn.Linear(4, 1)
        self.trainable = self.model
        self.exports = 0

    def set_epoch(self, epoch, first_step=0):
        assert first_step == 0, "the toy task is never resumed inside an epoch"
        self.sampler.set_epoch(epoch)
        self.step = -1  # counted in training_step

    def training_step(self, trainable, batch, epoch):
        inputs, targets = batch
        self.step += 1
        loss = F.mse_loss(trainable(inputs), targets)
        if self.nan_at == (epoch, self.step):
            loss = loss * float("nan")
        return StepResult(losses={TOTAL_LOSS: loss, "mse": loss.detach()}, num_samples=len(inputs))

    @torch.no_grad()
    def evaluate(self, model, amp_dtype):
        return {"mse": F.mse_loss(model(self.val_inputs), self.val_targets).item()}

    def export(self, model, out_dir):
        self.exports += 1
        atomic_write(out_dir / "model.pt", lambda temporary: torch.save(model.state_dict(), temporary))

    def model_identity(self):
        return {"model_name": "linear", "model_kwargs": {"in_features": 4}}


@pytest.fixture
def regression_recipe(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "regression", RegressionTask)

    def make(name="regression", epochs=4, **train):
        return load_recipe(raw={"name": name, "task": "regression", "student": {"name": "linear"},
                                "optim": {"opt": "sgd", "lr": 0.05, "weight_decay": 0.0, "warmup_epochs": 0},
                                "train": {"epochs": epochs, "output_dir": str(tmp_path), "progress": False, **train}})
    return make


def test_a_new_task_trains_through_the_engine_with_a_lower_is_better_key_metric(regression_recipe):
    trainer = build_trainer(regression_recipe())
    summary = trainer.fit()
    lines = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [line["val/mse"] for line in lines]
    assert val[-1] < val[0]  # it learned
    assert summary["key_metric"] == "mse" and summary["best_mse"] == min(val)
    assert summary["best_epoch"] == val.index(min(val)) and [line["best/mse"] for line in lines][-1] == min(val)
    assert {"train/loss", "train/mse", "lr"} <= set(lines[0]) and summary["task"] == "regression"
    exported = torch.load(trainer.run_dir / "export" / "model.pt", weights_only=True)
    best = load_checkpoint(trainer.run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best_epoch"] and torch.equal(exported["weight"], best["model"]["weight"])


def test_a_new_task_resumes_exactly(regression_recipe, interrupt_training):
    straight = train(regression_recipe("straight"))
    disarm = interrupt_training(2)
    with pytest.raises(KeyboardInterrupt):
        train(regression_recipe("resumed"))
    disarm()
    resumed = train(regression_recipe("resumed"), resume=True)
    assert resumed["best_mse"] == straight["best_mse"]
    a = load_checkpoint(regression_recipe("straight").run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(regression_recipe("resumed").run_dir / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])


@pytest.mark.parametrize("log_every", [1, 3, 100])
def test_a_non_finite_loss_stops_before_any_checkpoint_is_written_over_good_weights(regression_recipe, monkeypatch,
                                                                                    log_every):
    monkeypatch.setattr(RegressionTask, "nan_at", (1, 2))  # epoch 2 (1-based), step 2
    recipe = regression_recipe(log_every=log_every)
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 2, step 2; terms: \{'mse': nan\}\. The last "
                                            r"finished epoch is saved in .*last\.pt"):
        train(recipe)
    last = load_checkpoint(recipe.run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 0 and all(torch.isfinite(value).all() for value in last["model"].values())


def test_a_non_finite_loss_in_the_first_epoch_says_that_no_checkpoint_exists(regression_recipe, monkeypatch):
    monkeypatch.setattr(RegressionTask, "nan_at", (0, 5))
    recipe = regression_recipe(log_every=100)
    with pytest.raises(TrainingError, match=r"at epoch 1, step 5; .*No checkpoint exists yet"):
        train(recipe)
    assert not (recipe.run_dir / "checkpoints" / "last.pt").exists()


def test_unknown_task_names_the_valid_ones(regression_recipe):
    recipe = regression_recipe()
    recipe.task = "clasification"
    with pytest.raises(ConfigError, match=r"task: unknown task 'clasification' \(did you mean 'classification'\?\); "
                                          r"valid tasks: classification, detection, instance_segmentation, "
                                          r"regression, semantic_segmentation"):
        resolve_recipe(recipe)


def test_nonfinite_skip_drops_the_step_counts_it_and_trains_on(regression_recipe, monkeypatch):
    monkeypatch.setattr(RegressionTask, "nan_at", (1, 3))
    recipe = regression_recipe(nonfinite="skip", log_every=2)
    summary = train(recipe)
    lines = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["train/nonfinite_skipped"] for line in lines] == [0, 1, 0, 0]
    assert all(torch.isfinite(torch.tensor(line["train/loss"])) for line in lines)  # the NaN step is not averaged in
    last = load_checkpoint(recipe.run_dir / "checkpoints" / "last.pt")
    assert all(torch.isfinite(value).all() for value in last["model"].values()) and summary["best_mse"] < 1.0


def test_nonfinite_skip_stops_past_its_limit(regression_recipe, monkeypatch):
    monkeypatch.setattr(RegressionTask, "nan_at", (1, 3))
    with pytest.raises(TrainingError, match=r"at epoch 2, step 3 \(after skipping train\.nonfinite_max_skips=0 such "
                                            r"steps this epoch\); terms: \{'mse': nan\}"):
        train(regression_recipe(nonfinite="skip", nonfinite_max_skips=0))
