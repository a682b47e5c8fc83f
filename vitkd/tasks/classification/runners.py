"""One forward per model per step serving every loss term: head outputs plus the tokens of requested layers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vitkd.losses.inputs import StudentOutputs, TeacherOutputs


def _split_heads(output) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A DeiT student in distilled training returns (cls_logits, dist_logits); everything else returns logits."""
    if isinstance(output, (tuple, list)):
        return output[0], output[1]
    return output, None


class TappedStudent(nn.Module):
    """Wraps the student so a single `forward` (the one DistributedDataParallel sees) returns `StudentOutputs`.

    images (B, 3, H, W) -> logits (B, C), dist_logits (B, C) or None, tokens {layer: (B, P + N, D)}, normed_tokens
    {layer: (B, P + N, D)} and hooked {module name: output} for the requested layers and modules.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int] = (), normed_layers: Sequence[int] = (),
                 hooks: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.layers = tuple(layers)
        self.normed_layers = tuple(normed_layers)
        self.hooks = tuple(hooks)

    def forward(self, images: torch.Tensor) -> StudentOutputs:
        if not (self.layers or self.normed_layers or self.hooks):
            logits, dist_logits = _split_heads(self.model(images))
            return StudentOutputs(logits=logits, dist_logits=dist_logits)
        from vitkd.models.taps import extract_features

        tapped = extract_features(self.model, images, list(self.layers), normed_layers=list(self.normed_layers),
                                  hooks=list(self.hooks))
        logits, dist_logits = _split_heads(self.model.forward_head(tapped.final))
        return StudentOutputs(logits=logits, dist_logits=dist_logits, tokens=tapped.tokens,
                              normed_tokens=tapped.normed_tokens, hooked=tapped.hooked,
                              num_prefix_tokens=tapped.num_prefix_tokens, grid_size=tapped.grid_size)


@torch.no_grad()
def forward_teacher(teacher: nn.Module, images: torch.Tensor, layers: Sequence[int] = (),
                    normed_layers: Sequence[int] = (), hooks: Sequence[str] = ()) -> TeacherOutputs:
    """Frozen teacher (a `FrozenTeacher`) forward: logits (B, C) and the tokens of `layers` (raw), `normed_layers`
    (after the final norm) and the outputs of the modules named in `hooks`, all from one forward."""
    if not (layers or normed_layers or hooks):
        return TeacherOutputs(logits=teacher(images))
    from vitkd.models.taps import extract_features

    teacher.model.eval()
    inner = teacher.model
    tapped = extract_features(inner, teacher.prepare_input(images), list(layers), normed_layers=list(normed_layers),
                              hooks=list(hooks))
    logits, _ = _split_heads(inner.forward_head(tapped.final))
    return TeacherOutputs(logits=logits, tokens=tapped.tokens, normed_tokens=tapped.normed_tokens,
                          hooked=tapped.hooked, num_prefix_tokens=tapped.num_prefix_tokens,
                          grid_size=tapped.grid_size)
