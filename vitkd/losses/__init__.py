"""Loss functions (public API) and the registry of recipe loss terms."""

from vitkd.losses.attention import AttentionDistillationLoss, AttentionScoreLoss, RelationKLLoss
from vitkd.losses.base import LossNeeds, LossTerm, TermContext
from vitkd.losses.hidden import HiddenStateLoss
from vitkd.losses.logits import DeiTDistillationLoss, DISTLoss, DKDLoss, KDLoss, NKDLoss
from vitkd.losses.manifold import ManifoldLoss
from vitkd.losses.registry import LOSS_TERMS, build_loss_terms, register_loss_term, resolve_loss_terms
from vitkd.losses.vitkd_features import ViTKDLoss

__all__ = [
    "AttentionDistillationLoss",
    "AttentionScoreLoss",
    "DISTLoss",
    "DKDLoss",
    "DeiTDistillationLoss",
    "HiddenStateLoss",
    "KDLoss",
    "LOSS_TERMS",
    "LossNeeds",
    "LossTerm",
    "ManifoldLoss",
    "NKDLoss",
    "RelationKLLoss",
    "TermContext",
    "ViTKDLoss",
    "build_loss_terms",
    "register_loss_term",
    "resolve_loss_terms",
]
