"""Build students and teachers by timm name, with timm kwargs and local weights (file or vitkd run directory).

Weights are read without executing pickled code: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import difflib
import json
import pickle
import re
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from torch import nn

import vitkd.models.small_cnn  # noqa: F401  (registers vitkd_small_cnn with timm)
from vitkd.errors import CheckpointError, ConfigError

EXPORT_WEIGHTS = "student.safetensors"
EXPORT_INFO = "student.json"


def model_name_hint(name: str) -> str:
    """The tail of an unknown-model message: `; close names: a, b` (timm names like `name`), or where to look."""
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    return f"; close names: {', '.join(close)}" if close else "; see timm.list_models() for valid names"


def check_model_name(name: str, path: str = "model") -> None:
    """Raise `ConfigError` naming close timm names when `name` is not a registered model."""
    if not timm.is_model(name):
        raise ConfigError(f"{path}: unknown model '{name}'{model_name_hint(name)}")


def kwargs_with_classes(model_kwargs: dict, num_classes: int, path: str) -> dict:
    """The recipe's timm kwargs with `num_classes` set to the dataset's class count; a recipe that states another
    count fails naming `path` (e.g. `student.kwargs`) and both counts."""
    kwargs = dict(model_kwargs)
    if "num_classes" in kwargs and kwargs["num_classes"] != num_classes:
        raise ConfigError(f"{path}.num_classes={kwargs['num_classes']} but the dataset has {num_classes} classes")
    kwargs["num_classes"] = num_classes
    return kwargs


def check_input_size(model: nn.Module, img_size: int, path: str) -> None:
    """Refuse an input size a patch-embedding model was not built for (timm would fail at the first forward).

    Args:
        model: a timm model; only models with a `patch_embed` that insists on its size (ViT, DeiT, ... without
            `dynamic_img_size`) are checked.
        img_size: the side of the square inputs it will get (`data.img_size`).
        path: the recipe section that builds the model (`student`, `teacher`), named in the error.
    """
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or not getattr(patch_embed, "strict_img_size", False):
        return
    built = tuple(getattr(patch_embed, "img_size", None) or ())
    if built and built != (img_size, img_size):
        raise ConfigError(f"{path}: the model was built for {built[0]}x{built[1]} inputs but data.img_size is "
                          f"{img_size}; set {path}.kwargs.img_size: {img_size} (or {path}.kwargs.dynamic_img_size: "
                          f"true)")


def build_model(name: str, model_kwargs: Optional[dict] = None, checkpoint: Optional[str] = None) -> nn.Module:
    """Create a timm model with `pretrained=False`, then load local weights from `checkpoint` when given."""
    check_model_name(name)
    model_kwargs = dict(model_kwargs or {})
    model_kwargs.pop("pretrained", None)
    try:
        model = timm.create_model(name, pretrained=False, **model_kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as error:  # what timm's constructors raise on bad kwargs
        raise ConfigError(f"model '{name}' rejected its kwargs {model_kwargs}: {type(error).__name__}: "
                          f"{error}") from None
    if checkpoint:
        load_weights(model, checkpoint, name)
    return model


def resolve_checkpoint(path: str | Path) -> Path:
    """A weights file, or for a vitkd run directory its export (or its best/last training checkpoint)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "export" / EXPORT_WEIGHTS, path / EXPORT_WEIGHTS,
                          path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} is a directory but holds no vitkd weights; expected export/{EXPORT_WEIGHTS} "
                              f"or checkpoints/best.pt or checkpoints/last.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_torch_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a file that is not a checkpoint, or one holding Python
    objects besides tensors (which vitkd never unpickles), fails with one line saying which."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" (it stores {found.group(1)})" if found else ""
        raise CheckpointError(f"{path} holds Python objects besides tensors{what}, which vitkd does not unpickle; "
                              f"where you trust the file, re-save its weights with torch.save(model.state_dict(), "
                              f"PATH)") from None
    except Exception as error:  # torch raises KeyError, EOFError, RuntimeError... for files it cannot parse
        detail = " ".join(str(error).split())[:120] or type(error).__name__
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(error).__name__}: {detail}); expected a "
                              f"file written by torch.save, or a .safetensors file") from None


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read (state_dict, metadata) from a .safetensors file or a torch checkpoint, never unpickling objects."""
    path = resolve_checkpoint(path)
    metadata: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as error:  # safetensors raises several error types for damaged files
            raise CheckpointError(f"cannot read {path} as safetensors: {error}") from None
        return state_dict, metadata
    payload = load_torch_file(path)
    if isinstance(payload, dict) and "model" in payload and isinstance(payload["model"], dict):
        metadata = {k: payload[k] for k in ("model_name", "model_kwargs") if k in payload}
        return payload["model"], metadata
    for key in ("state_dict", "model_state_dict"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            return payload[key], metadata
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload, metadata
    raise CheckpointError(f"{path} holds no model state_dict (looked for keys 'model', 'state_dict')")


def load_weights(model: nn.Module, checkpoint: str | Path, name: str = "model") -> None:
    """Load weights strictly; a checkpoint for another architecture gives an error naming both."""
    state_dict, metadata = read_state_dict(checkpoint)
    saved_name = metadata.get("model_name")
    if saved_name and saved_name != name:
        raise CheckpointError(f"checkpoint {checkpoint} was saved from model '{saved_name}', not '{name}'")
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing keys {_short(missing)}")
        if unexpected:
            details.append(f"unexpected keys {_short(unexpected)}")
        if mismatched:
            details.append(f"shape mismatches {_short(mismatched)}")
        saved = f" (saved from '{saved_name}' {metadata.get('model_kwargs', '')})" if saved_name else ""
        raise CheckpointError(f"checkpoint {checkpoint}{saved} does not fit model '{name}': " + "; ".join(details)
                              + ". Check the model name and kwargs (img_size, patch_size, embed_dim, depth, "
                              "num_classes...) match those it was trained with.")
    model.load_state_dict(state_dict)


def _short(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"


def load_model_from_path(path: str | Path,
                         kwarg_overrides: Optional[dict] = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a vitkd export or run directory alone (the name and kwargs are stored beside it).

    `kwarg_overrides`: timm kwargs that change how the stored architecture runs, not its weights (a fine-tune's
    `drop_path_rate`); they replace the stored values when building."""
    weights = resolve_checkpoint(path)
    info_path = weights.parent / EXPORT_INFO
    if weights.suffix == ".safetensors" and info_path.is_file():
        info = json.loads(info_path.read_text())
    else:
        _, info = read_state_dict(weights)
        info = {"model": info.get("model_name"), "kwargs": info.get("model_kwargs") or {}}
    if not info.get("model"):
        raise CheckpointError(f"{weights} does not record its model name; pass the timm name and kwargs explicitly")
    kwargs = info.get("kwargs") or {}
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    model = build_model(info["model"], {**kwargs, **(kwarg_overrides or {})}, str(weights))
    return model, info


def describe_model(model: nn.Module) -> dict[str, Any]:
    """Facts the loss terms and reports need: num_classes, embed_dim, depth, num_prefix_tokens, grid_size."""
    info: dict[str, Any] = {"num_classes": getattr(model, "num_classes", None)}
    if hasattr(model, "blocks"):
        info["depth"] = len(model.blocks)
    info["embed_dim"] = getattr(model, "embed_dim", getattr(model, "num_features", None))
    info["num_prefix_tokens"] = getattr(model, "num_prefix_tokens", 0)
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "grid_size", None) is not None:
        info["grid_size"] = tuple(patch_embed.grid_size)
    return info


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
