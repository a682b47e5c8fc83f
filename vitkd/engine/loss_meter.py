"""Loss sums kept on the device, read by the host only when a log line or the progress bar needs them.

`.item()` on a CUDA tensor waits for the GPU; doing it for every loss of every step serialises the host with the
device. The meter adds each step's (detached) losses, weighted by the batch size, into device tensors and records
the first step whose total was not finite, also on the device; `read()` is the only synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vitkd.engine.task import TOTAL_LOSS


@dataclass
class NonFiniteStep:
    """The first step of an epoch whose total loss was NaN or infinite, with every logged loss at that step."""

    step: int
    losses: dict[str, float]


class LossMeter:
    """Per-epoch sums of named losses (float64, on `device`) and the first non-finite step.

    update(losses, num_samples, step): losses is name -> scalar tensor (the total under `TOTAL_LOSS`); no host sync.
    read() -> (name -> sum of value * num_samples, total samples, NonFiniteStep or None); one host sync.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: list[str] = []
        self.sums: Optional[torch.Tensor] = None  # (L,) float64
        self.samples = 0
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.first_bad_values: Optional[torch.Tensor] = None  # (L,) the losses at the first non-finite step

    def update(self, losses: dict[str, torch.Tensor], num_samples: int, step: int) -> None:
        if self.sums is None:
            self.names = list(losses)
            self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
            self.first_bad_values = torch.zeros_like(self.sums)
        if list(losses) != self.names:
            raise ValueError(f"a training step logged losses {list(losses)} after logging {self.names}; every step "
                             "of a task must return the same loss names")
        values = torch.stack([value.detach().to(torch.float64) for value in losses.values()])  # (L,)
        self.sums += values * num_samples
        self.samples += num_samples
        bad = ~torch.isfinite(values[self.names.index(TOTAL_LOSS)])
        record = bad & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(record, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        self.first_bad_values = torch.where(record, values, self.first_bad_values)

    def state_dict(self, sums: dict[str, float], samples: int) -> dict:
        """The partial epoch for a mid-epoch checkpoint, from sums already read (and reduced over processes), in
        this meter's order of names (the order every step logs them in)."""
        return {"names": list(self.names), "sums": [float(sums[name]) for name in self.names],
                "samples": int(samples)}

    def load_state_dict(self, state: dict) -> None:
        """Continue a partial epoch: its sums and sample count (a fresh meter; the first non-finite step is unset,
        since a checkpoint is only written after a read found none)."""
        if not state["names"]:
            return
        self.names = list(state["names"])
        self.sums = torch.tensor(state["sums"], dtype=torch.float64, device=self.device)
        self.first_bad_values = torch.zeros_like(self.sums)
        self.samples = int(state["samples"])

    def read(self) -> tuple[dict[str, float], int, Optional[NonFiniteStep]]:
        if self.sums is None:
            return {}, 0, None
        sums, bad_step, bad_values = torch.cat([self.sums, self.first_bad_step.to(torch.float64).view(1),
                                                self.first_bad_values]).cpu().split([len(self.names), 1,
                                                                                     len(self.names)])
        totals = dict(zip(self.names, sums.tolist()))
        nonfinite = None
        if bad_step.item() >= 0:
            nonfinite = NonFiniteStep(int(bad_step.item()), dict(zip(self.names, bad_values.tolist())))
        return totals, self.samples, nonfinite
