"""One forward per model per step serving every loss term: head outputs plus the tokens of requested layers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vitkd.engine.outputs import StudentOutputs, TeacherOutputs


def _split_heads(output) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A DeiT student in distilled training returns (cls_logits, dist_logits); everything else returns logits."""
    if isinstance(output, (tuple, list)):
        return output[0], output[1]
    return output, None


class TappedStudent(nn.Module):
    """Wraps the student so a single `forward` (the one DistributedDataParallel sees) returns `StudentOutputs`.

    images (B, 3, H, W) -> logits (B, C), dist_logits (B, C) or None, tokens {layer: (B, P + N, D)}.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int] = ()) -> None:
        super().__init__()
        self.model = model
        self.layers = tuple(layers)

    def forward(self, images: torch.Tensor) -> StudentOutputs:
        if not self.layers:
            logits, dist_logits = _split_heads(self.model(images))
            return StudentOutputs(logits=logits, dist_logits=dist_logits)
        from vitkd.models.taps import extract_features

        tapped = extract_features(self.model, images, list(self.layers))
        logits, dist_logits = _split_heads(self.model.forward_head(tapped.final))
        return StudentOutputs(logits=logits, dist_logits=dist_logits, tokens=tapped.tokens,
                              num_prefix_tokens=tapped.num_prefix_tokens, grid_size=tapped.grid_size)


@torch.no_grad()
def forward_teacher(teacher: nn.Module, images: torch.Tensor, layers: Sequence[int] = ()) -> TeacherOutputs:
    """Frozen teacher (a `FrozenTeacher`) forward: logits (B, C) and tokens of `layers`."""
    if not layers:
        return TeacherOutputs(logits=teacher(images))
    from vitkd.models.taps import extract_features

    teacher.model.eval()
    inner = teacher.model
    tapped = extract_features(inner, teacher.prepare_input(images), list(layers))
    logits, _ = _split_heads(inner.forward_head(tapped.final))
    return TeacherOutputs(logits=logits, tokens=tapped.tokens, num_prefix_tokens=tapped.num_prefix_tokens,
                          grid_size=tapped.grid_size)
