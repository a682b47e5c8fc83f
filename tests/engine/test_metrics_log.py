"""MetricsLog: one JSON line per record, truncation on resume, silence on non-main ranks, optional TensorBoard."""

import importlib.util
import json
import sys
import types

import pytest

from vitkd.engine.metrics_log import MetricsLog


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_appends_one_json_line_per_record(tmp_path):
    run = tmp_path / "run"  # does not exist yet: the first write creates it
    log = MetricsLog(run)
    assert log.writer is None  # tensorboard=False: no SummaryWriter
    log.write({"epoch": 0, "train/loss": 2.5, "val/top1": 10.0})
    log.write({"epoch": 1, "train/loss": 1.25, "val/top1": 50.0, "note": "best"})
    log.close()
    assert log.path == run / "metrics.jsonl"
    assert run.joinpath("metrics.jsonl").read_text() == (
        '{"epoch": 0, "train/loss": 2.5, "val/top1": 10.0}\n'
        '{"epoch": 1, "train/loss": 1.25, "val/top1": 50.0, "note": "best"}\n')
    assert not (run / "tensorboard").exists()


def test_a_new_log_appends_to_an_existing_file(tmp_path):
    MetricsLog(tmp_path).write({"epoch": 0, "lr": 0.1})
    MetricsLog(tmp_path).write({"epoch": 1, "lr": 0.05})
    assert read_lines(tmp_path / "metrics.jsonl") == [{"epoch": 0, "lr": 0.1}, {"epoch": 1, "lr": 0.05}]


def test_truncate_after_keeps_only_epochs_up_to_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path)
    for epoch in range(5):
        log.write({"epoch": epoch, "train/loss": float(10 - epoch)})
    log.truncate_after(2)
    assert read_lines(log.path) == [{"epoch": 0, "train/loss": 10.0}, {"epoch": 1, "train/loss": 9.0},
                                    {"epoch": 2, "train/loss": 8.0}]
    log.write({"epoch": 3, "train/loss": 0.5})  # the resumed run writes the dropped epochs again
    assert [line["epoch"] for line in read_lines(log.path)] == [0, 1, 2, 3]
    assert log.path.read_text().endswith("\n")


def test_truncate_after_compares_epochs_not_line_positions_and_skips_blank_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    # epoch 3 before epoch 1 (a log written by an earlier resume), and an empty line
    path.write_text('{"epoch": 0}\n{"epoch": 3}\n\n{"epoch": 1}\n{"epoch": 2}\n')
    MetricsLog(tmp_path).truncate_after(1)
    assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'


def test_truncate_before_the_first_epoch_empties_the_file(tmp_path):
    log = MetricsLog(tmp_path)
    log.write({"epoch": 0})
    log.truncate_after(-1)
    assert log.path.read_text() == ""


def test_truncate_without_a_file_creates_nothing(tmp_path):
    MetricsLog(tmp_path).truncate_after(3)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_disabled_log_on_a_non_main_rank_writes_and_truncates_nothing(tmp_path):
    run = tmp_path / "run"
    MetricsLog(run, enabled=False).write({"epoch": 0, "train/loss": 1.0})
    assert not run.exists()  # not even the run directory
    run.mkdir()
    path = run / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n')  # rank 0's file
    log = MetricsLog(run, enabled=False, tensorboard=True)  # no SummaryWriter either, installed or not
    assert log.writer is None
    log.truncate_after(0)
    log.write({"epoch": 2})
    log.close()
    assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path):
    with pytest.raises(RuntimeError, match=r"train\.tensorboard=true needs the tensorboard package: "
                                           r"pip install 'vitkd\[tensorboard\]'"):
        MetricsLog(tmp_path, tensorboard=True)


class FakeSummaryWriter:
    instances = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.flushes, self.closed = log_dir, [], 0, False
        FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def test_tensorboard_gets_numeric_values_per_epoch_besides_the_jsonl(tmp_path, monkeypatch):
    FakeSummaryWriter.instances = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=FakeSummaryWriter))
    log = MetricsLog(tmp_path, tensorboard=True)
    (writer,) = FakeSummaryWriter.instances
    assert writer.log_dir == str(tmp_path / "tensorboard")
    log.write({"epoch": 4, "train/loss": 0.75, "val/top1": 91, "note": "text is not a scalar"})
    assert writer.scalars == [("train/loss", 0.75, 4), ("val/top1", 91, 4)]  # not "epoch", not strings
    assert writer.flushes == 1
    assert read_lines(log.path) == [{"epoch": 4, "train/loss": 0.75, "val/top1": 91, "note": "text is not a scalar"}]
    log.close()
    assert writer.closed
