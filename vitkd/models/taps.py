"""Feature taps: one forward pass that returns a model's final features and the tokens of chosen blocks.

Feature-distillation losses need intermediate tokens (ViTKD: the first blocks and the normed last block; ManifoldKD:
any blocks). ``extract_features`` gets them from a single forward, so the student is run once per step and the
trainer still calls the classifier head itself::

    tapped = extract_features(student, images, layers=[0, 1], normed_layers=[-1])
    logits = student.forward_head(tapped.final)             # tuple (cls, dist) for distilled students in training
    prefix, patches = split_prefix(tapped.layer(0), tapped.num_prefix_tokens)  # (B, P, D), (B, H * W, D)

Two ways to tap, chosen per model:

* timm ViT-family models whose ``forward_intermediates`` accepts ``return_prefix_tokens``/``output_fmt``
  (``VisionTransformer``, ``VisionTransformerDistilled``, ``Eva``, ``Beit``, ...): one call of
  ``forward_intermediates(..., output_fmt='NLC')`` yields the final features and the intermediates. timm returns an
  NLC intermediate as a ``(patch_tokens, prefix_tokens)`` pair; we concatenate them back to ``[prefix; patches]`` so
  every tapped tensor has the layout of the block output, ``(B, num_prefix_tokens + H * W, D)``.
* any other model with ``forward_features``: forward hooks on ``model.blocks[i]``. Hooks on arbitrary named modules
  (``hooks=["blocks.3.attn", ...]``) work with both paths and land in ``TappedOutput.hooked``. Hooks are always
  removed after the forward, also when it raises.

"Normed" layers are block outputs passed through the model's final norm (``model.norm``). The normed last block is
exactly ``final`` for ViT-family models, so it is reused rather than recomputed.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitkd.models.layer_mapping import resolve_layer_indices

__all__ = ["TappedModel", "TappedOutput", "capture_outputs", "extract_features", "split_prefix"]


@dataclass
class TappedOutput:
    """What one tapped forward returns.

    Attributes:
        final: ``(B, num_prefix_tokens + H * W, D)`` for ViTs; exactly what ``model.forward_features(images)``
            returns, i.e. the input of ``model.forward_head``.
        tokens: raw block outputs ``(B, num_prefix_tokens + H * W, D)`` keyed by absolute block index (``-1`` asked
            for on a 12-block model is stored under ``11``; use ``layer()`` to look up with negative indices).
        normed_tokens: block outputs after the model's final norm, same shapes and keys as ``tokens``.
        hooked: outputs of the modules named in ``hooks``, as the modules returned them (tensor or tuple).
        num_prefix_tokens: class/distillation/register tokens in front of the patch tokens (2 for DeiT-distilled).
        grid_size: ``(H, W)`` of the patch-token grid for this input size.
        depth: number of blocks of the model (``None`` when the model has no ``blocks``).
    """

    final: torch.Tensor
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    normed_tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    hooked: dict[str, Any] = field(default_factory=dict)
    num_prefix_tokens: int = 0
    grid_size: tuple[int, int] = (0, 0)
    depth: int | None = None

    def layer(self, index: int, normed: bool = False) -> torch.Tensor:
        """``(B, num_prefix_tokens + H * W, D)`` tokens of block ``index`` (negative allowed), raw or normed."""
        store = self.normed_tokens if normed else self.tokens
        absolute = index % self.depth if self.depth and -self.depth <= index < self.depth else index
        if absolute not in store:
            kind = "normed_layers" if normed else "layers"
            raise KeyError(f"block {index} was not tapped as {kind}; tapped: {sorted(store)}")
        return store[absolute]

    def patches(self, index: int, normed: bool = False) -> torch.Tensor:
        """``(B, H * W, D)`` patch tokens of block ``index``: ``layer(index, normed)`` without the prefix tokens."""
        return split_prefix(self.layer(index, normed), self.num_prefix_tokens)[1]


def split_prefix(tokens: torch.Tensor, num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(B, P + N, D)`` block tokens into prefix ``(B, P, D)`` (class, distillation, registers) and patch
    tokens ``(B, N, D)``. Both are views, no copy."""
    if tokens.dim() != 3:
        raise ValueError(f"split_prefix: expected tokens of shape (B, N, D), got {tuple(tokens.shape)}")
    if not 0 <= num_prefix_tokens <= tokens.shape[1]:
        raise ValueError(
            f"split_prefix: num_prefix_tokens={num_prefix_tokens} does not fit {tokens.shape[1]} tokens")
    return tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]


def extract_features(model: nn.Module, images: torch.Tensor, layers: Sequence[int], *,
                     normed_layers: Sequence[int] = (), hooks: Sequence[str] | None = None) -> TappedOutput:
    """Run ``model`` once on ``images`` ``(B, C, H_img, W_img)`` and return its final features plus tapped tokens.

    Args:
        model: a timm ViT-family model, or any model with ``forward_features`` (and ``blocks`` to tap by index).
        images: ``(B, C, H_img, W_img)`` input batch.
        layers: block indices whose raw outputs to keep (negative counts from the end). May be empty.
        normed_layers: block indices whose outputs to keep after the final norm (ViTKD's deep layer: ``[-1]``).
        hooks: names from ``model.named_modules()`` whose outputs to keep in ``TappedOutput.hooked``.

    Gradients flow as usual; wrap the call in ``torch.no_grad()`` for a frozen teacher.

    Raises:
        ValueError: a layer index outside the model's depth (message names the model, index and valid range), layers
            requested from a model without ``blocks``, or an unknown hook name (message lists close valid names).
    """
    who = type(model).__name__
    blocks = getattr(model, "blocks", None)
    depth = len(blocks) if isinstance(blocks, (nn.ModuleList, nn.Sequential)) else None
    if depth is None and (layers or normed_layers):
        raise ValueError(
            f"{who} has no `blocks` to select layers {list(layers) + list(normed_layers)} from; "
            f"tap its modules by name with hooks=[...] instead")
    raw_indices = resolve_layer_indices(list(layers), depth, who) if layers else []
    normed_indices = resolve_layer_indices(list(normed_layers), depth, who) if normed_layers else []
    num_prefix = int(getattr(model, "num_prefix_tokens", 0))
    reuse_final = depth is not None and (depth - 1) in normed_indices and _final_is_normed_last_block(model)
    # Blocks whose raw output must be captured: the raw ones, and the normed ones not served by `final`.
    needed = sorted(set(raw_indices) | {i for i in normed_indices if not (reuse_final and i == depth - 1)})

    captured: dict[int, torch.Tensor] = {}
    use_intermediates = bool(needed) and _has_vit_intermediates(model)
    with capture_outputs(model, list(hooks or [])) as hooked:
        if use_intermediates:
            final, intermediates = model.forward_intermediates(
                images, indices=needed, return_prefix_tokens=num_prefix > 0, norm=False, output_fmt="NLC")
            # timm appends intermediates in block order, which is `needed` (sorted, unique)
            for index, out in zip(needed, intermediates):
                captured[index] = torch.cat((out[1], out[0]), dim=1) if isinstance(out, tuple) else out
        else:
            handles = [blocks[index].register_forward_hook(_store_output(captured, index)) for index in needed]
            try:
                final = model.forward_features(images)
            finally:
                for handle in handles:
                    handle.remove()

    tokens = {index: captured[index] for index in raw_indices}
    normed = {}
    for index in normed_indices:
        normed[index] = final if reuse_final and index == depth - 1 else model.norm(captured[index])
    return TappedOutput(final=final, tokens=tokens, normed_tokens=normed, hooked=hooked, num_prefix_tokens=num_prefix,
                        grid_size=_grid_size(model, images, final, num_prefix), depth=depth)


class TappedModel(nn.Module):
    """``model`` whose ``forward(images)`` is ``extract_features(model, images, layers, ...)``.

    Wrap *this* in ``DistributedDataParallel`` (or ``torch.compile``) when a student is tapped: DDP only prepares
    its gradient reduction when its own ``forward`` runs, so calling ``extract_features`` on ``ddp.module`` would
    bypass it. DDP finds the tensors inside the returned ``TappedOutput`` (a dataclass). Save and export
    ``tapped_model.model``, not the wrapper.

    Input ``(B, C, H_img, W_img)``; output ``TappedOutput``; then ``tapped_model.model.forward_head(out.final)``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int], normed_layers: Sequence[int] = (),
                 hooks: Sequence[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.layers, self.normed_layers = list(layers), list(normed_layers)
        self.hooks = list(hooks) if hooks else None

    def forward(self, images: torch.Tensor) -> TappedOutput:
        return extract_features(self.model, images, self.layers, normed_layers=self.normed_layers, hooks=self.hooks)


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Forward hooks on the modules of ``model`` named ``names`` while the block runs; yields the dict they fill
    (module name -> its output as returned, the last call's when a module runs twice). ``extract_features``' own
    ``hooks=`` use it around the feature forward only; around a block that also runs ``forward_head`` a pre-logits
    module (timm's ``head_drop``) is captured too. Removed on exit, also when the block raises.

    Raises:
        ValueError: an unknown module name (the message lists close valid names).
    """
    store: dict[str, Any] = {}
    handles = [module.register_forward_hook(_store_output(store, name))
               for name, module in _find_modules(model, list(names)).items()]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _store_output(store: dict, key: Any):
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        store[key] = output
    return hook


def _find_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    found = {}
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
            top_level = [n for n in modules if n and "." not in n]
            hint = f"close matches: {close}" if close else f"top-level modules: {top_level}"
            raise ValueError(f"{type(model).__name__} has no module named {name!r} to hook; {hint}")
        found[name] = modules[name]
    return found


def _has_vit_intermediates(model: nn.Module) -> bool:
    """True for timm ViT-family models whose ``forward_intermediates`` gives NLC tokens plus prefix tokens."""
    method = getattr(model, "forward_intermediates", None)
    if method is None or not hasattr(model, "num_prefix_tokens"):
        return False
    params = inspect.signature(method).parameters
    return all(p in params for p in ("indices", "return_prefix_tokens", "norm", "output_fmt"))


def _final_is_normed_last_block(model: nn.Module) -> bool:
    """ViT-family ``forward_features`` ends with ``norm(last block output)``; other models may not (CaiT, pooling)."""
    try:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a hard dependency
        return False
    return isinstance(model, (VisionTransformer, Eva))


def _grid_size(model: nn.Module, images: torch.Tensor, final: torch.Tensor, num_prefix: int) -> tuple[int, int]:
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        return tuple(int(s) for s in patch_embed.dynamic_feat_size(tuple(images.shape[-2:])))
    if patch_embed is not None and getattr(patch_embed, "grid_size", None) is not None:
        return tuple(int(s) for s in patch_embed.grid_size)
    if isinstance(final, torch.Tensor) and final.dim() == 3:  # last resort: a square grid of patch tokens
        side = math.isqrt(final.shape[1] - num_prefix)
        if side * side == final.shape[1] - num_prefix:
            return side, side
    return 0, 0
