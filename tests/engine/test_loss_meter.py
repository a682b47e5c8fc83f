"""LossMeter: batch-weighted sums on the device, one read, and the first non-finite step with its losses."""

import math

import pytest
import torch

from vitkd.engine.loss_meter import LossMeter


def _losses(total, part):
    return {"loss": torch.tensor(total), "kd": torch.tensor(part)}


def test_sums_are_weighted_by_the_batch_size_and_read_once():
    meter = LossMeter(torch.device("cpu"))
    meter.update(_losses(2.0, 0.5), num_samples=4, step=0)
    meter.update(_losses(1.0, 0.25), num_samples=2, step=1)
    totals, samples, nonfinite = meter.read()
    assert samples == 6 and nonfinite is None
    assert totals == {"loss": 2.0 * 4 + 1.0 * 2, "kd": 0.5 * 4 + 0.25 * 2}  # 10.0 and 2.5


def test_the_first_non_finite_total_is_kept_with_every_loss_of_that_step():
    meter = LossMeter(torch.device("cpu"))
    meter.update(_losses(1.0, 0.5), 2, step=0)
    meter.update(_losses(float("inf"), 7.0), 2, step=1)
    meter.update(_losses(float("nan"), 3.0), 2, step=2)  # a later bad step does not replace the first
    _, _, nonfinite = meter.read()
    assert nonfinite.step == 1 and nonfinite.losses == {"loss": math.inf, "kd": 7.0}


def test_a_non_finite_part_with_a_finite_total_is_not_a_stop():
    meter = LossMeter(torch.device("cpu"))
    meter.update({"loss": torch.tensor(1.0), "kd": torch.tensor(float("nan"))}, 1, step=0)  # weight-0 term
    assert meter.read()[2] is None


def test_an_empty_meter_reads_nothing():
    assert LossMeter(torch.device("cpu")).read() == ({}, 0, None)


def test_steps_must_log_the_same_names():
    meter = LossMeter(torch.device("cpu"))
    meter.update(_losses(1.0, 0.5), 1, step=0)
    with pytest.raises(ValueError, match="every step of a task must return the same loss names"):
        meter.update({"loss": torch.tensor(1.0)}, 1, step=1)
