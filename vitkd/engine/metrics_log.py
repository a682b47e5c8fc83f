"""Per-epoch metrics to `metrics.jsonl` (and TensorBoard when asked); only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from vitkd.files import atomic_write


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer: Optional[Any] = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise RuntimeError("train.tensorboard=true needs the tensorboard package: "
                                   "pip install 'vitkd[tensorboard]'") from error
            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop lines of epochs after the checkpoint (they will be run again), and a torn last line that
        a kill during its append left."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines() if _epoch_of(line) is not None
                and _epoch_of(line) <= epoch]
        atomic_write(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _epoch_of(line: str) -> Optional[int]:
    """The epoch of a metrics line, None for a line that is not a whole JSON record."""
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None
