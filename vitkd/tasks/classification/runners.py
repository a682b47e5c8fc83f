"""One forward per model per step serving every loss term: head outputs plus the tapped tokens the terms asked for.

Student and teacher share one path (`forward_tapped`): plain forward when nothing is tapped, else the tapped
forward followed by the model's own head; a DeiT student in distilled training returns its two heads.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vitkd.losses.base import TapRequest
from vitkd.losses.inputs import StudentOutputs, TeacherOutputs
from vitkd.models.taps import TappedOutput, capture_outputs, extract_features
from vitkd.models.teacher import FrozenTeacher


def _split_heads(output) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A DeiT student in distilled training returns (cls_logits, dist_logits); everything else returns logits."""
    if isinstance(output, (tuple, list)):
        return output[0], output[1]
    return output, None


def forward_tapped(model: nn.Module, images: torch.Tensor, taps: TapRequest
                   ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[TappedOutput]]:
    """images (B, 3, H, W) -> (logits (B, C), dist_logits (B, C) or None, the tapped features or None).

    Module hooks (`taps.hooks`) cover the head as well, so pre-logits modules (`head_drop`, `fc_norm`) are tapped."""
    if not taps:
        logits, dist_logits = _split_heads(model(images))
        return logits, dist_logits, None
    with capture_outputs(model, taps.hooks) as hooked:  # hooks stay on through the head (pre-logits modules)
        tapped = extract_features(model, images, list(taps.layers), normed_layers=list(taps.normed_layers))
        logits, dist_logits = _split_heads(model.forward_head(tapped.final))
    tapped.hooked = hooked
    return logits, dist_logits, tapped


def _tapped_fields(tapped: Optional[TappedOutput]) -> dict:
    if tapped is None:
        return {}
    return dict(tokens=tapped.tokens, normed_tokens=tapped.normed_tokens, hooked=tapped.hooked,
                num_prefix_tokens=tapped.num_prefix_tokens, grid_size=tapped.grid_size)


class TappedStudent(nn.Module):
    """Wraps the student so a single `forward` returns `StudentOutputs`.

    images (B, 3, H, W) -> logits (B, C), dist_logits (B, C) or None, tokens {layer: (B, P + N, D)}, normed_tokens
    {layer: (B, P + N, D)} and hooked {module name: output} for the layers and modules `taps` requests.
    """

    def __init__(self, model: nn.Module, taps: TapRequest = TapRequest()) -> None:
        super().__init__()
        self.model = model
        self.taps = taps

    def forward(self, images: torch.Tensor) -> StudentOutputs:
        logits, dist_logits, tapped = forward_tapped(self.model, images, self.taps)
        return StudentOutputs(logits=logits, dist_logits=dist_logits, **_tapped_fields(tapped))


@torch.no_grad()
def forward_teacher(teacher: FrozenTeacher, images: torch.Tensor, taps: TapRequest = TapRequest()) -> TeacherOutputs:
    """Frozen teacher forward on student-normalised images (B, 3, H, W): logits (B, C) and the tokens and module
    outputs `taps` requests, all from one forward."""
    teacher.model.eval()
    logits, _, tapped = forward_tapped(teacher.model, teacher.prepare_input(images), taps)
    return TeacherOutputs(logits=logits, **_tapped_fields(tapped))
