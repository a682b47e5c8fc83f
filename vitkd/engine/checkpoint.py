"""Training checkpoints (atomic, resumable) and the student-only export.

Training checkpoints hold only tensors and plain Python values, so `torch.load(weights_only=True)` reads them.
The export is a safetensors file that `timm.create_model(name, checkpoint_path=...)` loads without vitkd, plus a
JSON file with the model name and kwargs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkd import __version__
from vitkd.errors import ConfigError
from vitkd.files import atomic_write
from vitkd.models.factory import EXPORT_INFO, EXPORT_WEIGHTS, load_torch_file


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(Path(path), lambda temporary: torch.save(payload, temporary))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return load_torch_file(path)


def export_student(model: nn.Module, out_dir: Path, model_name: str, model_kwargs: dict,
                   extra_info: dict | None = None) -> Path:
    """Write `student.safetensors` (weights only) and `student.json` (name, kwargs, ...) into `out_dir`."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state_dict = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    metadata = {"model_name": model_name, "model_kwargs": json.dumps(model_kwargs), "vitkd_version": __version__}
    weights_path = out_dir / EXPORT_WEIGHTS
    atomic_write(weights_path, lambda temporary: save_file(state_dict, temporary, metadata=metadata))
    info = {"model": model_name, "kwargs": model_kwargs, "vitkd_version": __version__, **(extra_info or {})}
    atomic_write(out_dir / EXPORT_INFO, json.dumps(info, indent=2))
    return weights_path


def last_checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def best_checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "best.pt"


def check_run_directory(run_dir: Path, resume: bool) -> None:
    """Refuse to start over a run that holds a checkpoint (finished work is never overwritten), and to resume one
    that holds none. Raises `ConfigError`."""
    last = last_checkpoint_path(run_dir)
    if not resume and last.exists():
        raise ConfigError(f"run directory {run_dir} already holds a checkpoint; pass --resume to continue it, "
                          f"or choose another name (name=...) so finished work is not overwritten")
    if resume and not last.exists():
        raise ConfigError(f"--resume: no checkpoint at {last} to resume from")


def check_output_space(run_dir: Path, checkpoint_bytes: int, key: str = "train.output_dir") -> None:
    """Before training: the run directory can be created and written, and its disk has room for the checkpoints.

    A run keeps `last.pt` and `best.pt` and, while one is replaced, its temporary copy: three checkpoints of
    `checkpoint_bytes` (an estimate from the parameter count) must fit. Raises `ConfigError` naming `key`."""
    import errno
    import shutil
    import tempfile

    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-check.", suffix=".tmp"):
            pass
    except OSError as error:
        reason = "it is read-only or not yours" if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else \
            error.strerror or str(error)
        raise ConfigError(f"{key}: cannot write the run directory {run_dir} ({reason}); choose a writable "
                          f"{key}") from None
    free = shutil.disk_usage(run_dir).free
    needed = 3 * checkpoint_bytes
    if free < needed:
        raise ConfigError(f"{key}: {run_dir} has {free / 2**20:.0f} MiB free but this run's checkpoints need about "
                          f"{needed / 2**20:.0f} MiB (last, best and a temporary copy of "
                          f"{checkpoint_bytes / 2**20:.0f} MiB each); free space or choose another {key}")


def estimate_checkpoint_bytes(model: nn.Module, trainable: nn.Module, optimizer_states: int, ema: bool) -> int:
    """Bytes of a training checkpoint: the model (and its EMA copy), the trainable parameters' optimizer states."""
    def size(module: nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())

    trainable_bytes = sum(p.numel() * p.element_size() for p in trainable.parameters() if p.requires_grad)
    return size(model) * (2 if ema else 1) + trainable_bytes * optimizer_states
