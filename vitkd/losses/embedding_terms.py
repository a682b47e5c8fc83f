"""The `embedding` loss term: per-sample target embeddings from a store (GPT4Image-style text supervision).

The targets are computed once, offline, by any model (`vitkd embed-targets`, `vitkd import-embeddings`; see
`vitkd.cache.embedding_store`) and read each step by the batch's sample ids. The term needs no teacher, so it
composes with a live teacher, a logit cache (which it ignores) or none. When it is built it opens the store and
checks it against the training data's fingerprint (`TermContext.dataset_record`), so a store of other data fails
before the first step, naming the differing fields.

The student's pooled feature is the output of one module, read through a forward hook that stays on through the
head (`feature`, default `head_drop`: timm ViTs' pre-logits, `fc_norm` + `head_drop` of the pooled class token; the
demo CNN has one too). A (B, C, H, W) output is average-pooled to (B, C). On a distilled DeiT `head_drop` runs twice
and the hook keeps the last call, the distillation token's feature.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitkd.cache.embedding_store import EmbeddingStore, open_embedding_store
from vitkd.losses.base import LossNeeds, LossTerm, TermContext
from vitkd.losses.embedding import EMBEDDING_LOSSES, PROJECTIONS, EmbeddingAlignmentLoss
from vitkd.losses.feature_terms import check_bool, check_choice, check_number
from vitkd.losses.inputs import StudentOutputs, TeacherOutputs, Targets
from vitkd.losses.registry import register_loss_term
from vitkd.models.taps import capture_outputs

#: GPT4Image's lambda for the text-embedding loss.
DEFAULT_WEIGHT = 0.3


def pooled(output: Any, where: str) -> torch.Tensor:
    """A hooked module output as a (B, D) pooled feature: (B, D) as is, (B, C, H, W) averaged over H and W."""
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        return output
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return output.mean(dim=(2, 3))  # (B, C)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    raise ValueError(f"feature: module {where!r} returns {shape}, not a pooled (B, D) feature or a (B, C, H, W) map; "
                     f"name the module after pooling (timm ViTs: head_drop or fc_norm)")


@torch.no_grad()
def probe_feature_width(model: nn.Module, feature: str, img_size: int) -> int:
    """Width D of `feature`'s pooled output, from one eval-mode forward of a (1, 3, img_size, img_size) zero image
    (the model's mode is restored)."""
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        with capture_outputs(model.eval(), [feature]) as outputs:
            model(torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        model.train(was_training)
    if feature not in outputs:
        raise ValueError(f"feature: module {feature!r} of the student ({type(model).__name__}) does not run in its "
                         f"forward; name the module whose output is the pooled feature")
    return int(pooled(outputs[feature], feature).shape[1])


@register_loss_term("embedding")
class EmbeddingTerm(LossTerm):
    """Aligns the student's pooled feature with each sample's stored target embedding (`EmbeddingAlignmentLoss`).

    Recipe parameters:
        store: the embedding store directory (required; built by `vitkd embed-targets` / `vitkd import-embeddings`
            for this recipe's training data).
        feature: module whose output is the student's pooled feature (default `head_drop`; a CNN names its own).
        projection: `mlp` (default; Linear-GELU-Linear, hidden = the feature width) or `linear`, to the store's
            width. Trains with the student, is saved in `last.pt`, never exported.
        loss: `clip` (default; symmetric InfoNCE over the batch), `contrastive` (student -> target only) or
            `cosine` (mean 1 - cos).
        tau: InfoNCE temperature (default 0.05, GPT4Image's for DeiT).
        gather: under torchrun, InfoNCE over the global batch (default false).

    Shapes: hooked feature (B, D_s) (or (B, C, H, W), pooled) -> projection (B, D) against stored rows (B, D),
    mixed with the batch's Mixup/CutMix plan when there is one -> scalar. Default weight 0.3 (GPT4Image's lambda).
    """

    def __init__(self, context: TermContext, store: str, feature: str = "head_drop", projection: str = "mlp",
                 loss: str = "clip", tau: float = 0.05, gather: bool = False) -> None:
        super().__init__()
        if context.dataset_record is None:
            raise ValueError("the embedding loss checks its store against the training data's fingerprint "
                             "(TermContext.dataset_record), which this caller did not give")
        self.store: EmbeddingStore = open_embedding_store(store)
        self.store.check_dataset(context.dataset_record())
        self.feature = feature
        width = probe_feature_width(context.student, feature, context.img_size)
        self.loss = EmbeddingAlignmentLoss(width, self.store.dim, projection=projection, loss=loss, tau=tau,
                                           gather=gather)
        self.needs = LossNeeds(student_hooks=(feature,))

    @classmethod
    def default_weight(cls, params: dict[str, Any]) -> float:
        return DEFAULT_WEIGHT

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        for key in ("store", "feature"):
            value = params.get(key, "head_drop" if key == "feature" else None)
            if not isinstance(value, str) or not value:
                wanted = ("the embedding store directory (built by `vitkd embed-targets` or `vitkd import-embeddings`)"
                          if key == "store" else "a module name of the student, e.g. head_drop")
                state = "is required" if value is None else f"got {value!r}"
                raise ValueError(f"{path}.{key}: {state}; expected {wanted}")
        check_choice(params, path, "projection", PROJECTIONS)
        check_choice(params, path, "loss", EMBEDDING_LOSSES)
        check_number(params, path, "tau", 0.0, low_inclusive=False)
        check_bool(params, path, "gather")
        if params.get("gather") and params.get("loss") == "cosine":
            raise ValueError(f"{path}.gather: true widens the InfoNCE negatives to the global batch, but loss: cosine "
                             f"has none; set gather: false or loss: clip / contrastive")

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        if targets.sample_ids is None:
            raise ValueError("the embedding loss reads each sample's target by its dataset sample id, but "
                             "targets.sample_ids is None; pass Targets(sample_ids=batch.sample_ids)")
        if self.feature not in student.hooked:
            raise KeyError(f"module {self.feature!r} was not tapped in this forward (hooked: {sorted(student.hooked)});"
                           f" the term's needs and the trainer's tap requests disagree")
        features = pooled(student.hooked[self.feature], self.feature)  # (B, D_s)
        rows = self.store.read(targets.sample_ids).to(features.device, non_blocking=True)  # (B, D)
        return self.loss(features, rows, targets.mix_plan)

    def extra_repr(self) -> str:
        return f"store={self.store.path}, feature={self.feature}, dim={self.store.dim}"
