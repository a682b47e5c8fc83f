"""The weighted sum of the recipe's loss terms, with every term logged by name."""

from __future__ import annotations

import torch
from torch import nn

from vitkd.losses.inputs import StudentOutputs, TeacherOutputs, Targets
from vitkd.losses.base import LossNeeds, LossTerm


class DistillationObjective(nn.Module):
    """Holds the built loss terms (and their trainable parts, e.g. projections) and sums them.

    forward -> (total scalar, {term name: weighted value, term name/part: unweighted part}) for logging.
    """

    def __init__(self, terms: list[tuple[str, float, LossTerm]]) -> None:
        super().__init__()
        self.names = [name for name, _, _ in terms]
        self.weights = [weight for _, weight, _ in terms]
        self.terms = nn.ModuleList([term for _, _, term in terms])

    @property
    def needs(self) -> LossNeeds:
        needs = LossNeeds()
        for term in self.terms:
            needs = needs.union(term.needs)
        return needs

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs,
                targets: Targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = student.logits.new_zeros((), dtype=torch.float32)
        logged: dict[str, torch.Tensor] = {}
        for name, weight, term in zip(self.names, self.weights, self.terms):
            value = term(student, teacher, targets)
            if weight != 0:
                total = total + weight * value.float()
            logged[name] = (weight * value).detach().float()
            for part, part_value in term.last_terms.items():
                logged[f"{name}/{part}"] = part_value.detach().float()
        return total, logged
