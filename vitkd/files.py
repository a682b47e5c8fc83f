"""The one atomic writer of vitkd: checkpoints, exports, manifests, reports and logs are written through it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

Content = Union[str, bytes, Callable[[str], None]]


def atomic_write(path: str | os.PathLike, content: Content, *, durable: bool = False) -> Path:
    """Write `path` so that readers see the old file or the new one, never a half-written one.

    `content` is text, bytes, or a function `write(temporary_path)` that writes the file itself (`torch.save`,
    safetensors' `save_file`). The data goes to a temporary file beside `path`, which is then renamed into place;
    on any failure (an interrupt included) the temporary file is removed and the old `path` is untouched.
    `durable=True` also flushes the file and its directory to disk before returning (for manifests that later
    writes depend on). Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; give the usual permissions
        if callable(content):
            content(temporary)
        else:
            data = content.encode("utf-8") if isinstance(content, str) else content
            with open(temporary, "wb") as stream:
                stream.write(data)
        if durable:
            with open(temporary, "rb+") as stream:
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    if durable:
        fsync_directory(path.parent)
    return path


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (`.NAME.*.tmp`) that an `atomic_write` killed mid-write left under `directory`
    (a kill by SIGKILL or power loss skips its clean-up). Returns what was removed."""
    removed = []
    for candidate in Path(directory).rglob(".*.tmp"):
        if candidate.is_file():
            candidate.unlink()
            removed.append(candidate)
    return removed


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable where the platform allows it (no-op elsewhere)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
