"""Stop requests from the outside: SIGTERM (what schedulers and `kill` send), SIGINT (Ctrl-C), SIGUSR1.

While training, the trainer holds `StopSignals`: a signal only sets a flag, and the loop acts on it between two
steps, so a step is never cut in half:

- SIGTERM, SIGINT: finish the current step, write a checkpoint of that exact step, stop with `TrainingStopped`
  (the command prints how to resume and exits with 128 + the signal number). A second SIGINT stops at once
  (KeyboardInterrupt), for a user who does not want to wait for the step.
- SIGUSR1: write a checkpoint after the current step and go on training (SLURM's `--signal=USR1@120` warns a
  job this way before its time limit; any launcher can send it to ask for a checkpoint now).

Handlers are installed only in the main thread (Python's rule) and the previous ones are restored on exit.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional

#: Signals that stop training after the current step.
STOPPING = (signal.SIGTERM, signal.SIGINT)
#: Signal that asks for a checkpoint after the current step.
CHECKPOINT = getattr(signal, "SIGUSR1", None)


class StopSignals:
    """Context manager: `stop_signal` is the first stopping signal received (None while none came);
    `take_checkpoint_request()` tells whether SIGUSR1 came since it was last asked."""

    def __init__(self) -> None:
        self.stop_signal: Optional[signal.Signals] = None
        self._checkpoint_requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in STOPPING + ((CHECKPOINT,) if CHECKPOINT is not None else ()):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: Optional[FrameType]) -> None:
        if number == CHECKPOINT:
            self._checkpoint_requested = True
            return
        if self.stop_signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(number)

    def take_checkpoint_request(self) -> bool:
        requested, self._checkpoint_requested = self._checkpoint_requested, False
        return requested
