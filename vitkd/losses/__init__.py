"""Loss functions (public API) and the registry of recipe loss terms."""

from vitkd.losses.base import LossNeeds, LossTerm, TermContext
from vitkd.losses.logits import DeiTDistillationLoss, KDLoss
from vitkd.losses.manifold import ManifoldLoss
from vitkd.losses.registry import LOSS_TERMS, build_loss_terms, register_loss_term, resolve_loss_terms
from vitkd.losses.vitkd_features import ViTKDLoss

__all__ = [
    "DeiTDistillationLoss",
    "KDLoss",
    "LOSS_TERMS",
    "LossNeeds",
    "LossTerm",
    "ManifoldLoss",
    "TermContext",
    "ViTKDLoss",
    "build_loss_terms",
    "register_loss_term",
    "resolve_loss_terms",
]
