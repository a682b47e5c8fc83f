"""The loss-term registry: names or import paths, parameters checked from the signature, paper default weights."""

import pytest
import torch

from vitkd.config import LossTermConfig
from vitkd.errors import ConfigError
from vitkd.losses.base import LossTerm, TermContext
from vitkd.losses.registry import build_loss_terms, get_loss_term_class, resolve_loss_terms


class ConstantTerm(LossTerm):
    """A third-party term, named in recipes by import path (`test_registry:ConstantTerm`)."""

    convex_with_ground_truth = True

    def __init__(self, context, value: float = 2.0):
        super().__init__()
        self.value = value

    @classmethod
    def default_weight(cls, params):
        return 0.25

    def forward(self, student, teacher, targets):
        return torch.tensor(self.value)


NOT_A_TERM = object()


def test_a_term_named_by_import_path_is_validated_and_built_like_a_registered_one():
    assert get_loss_term_class("test_registry:ConstantTerm") is ConstantTerm
    terms = resolve_loss_terms([LossTermConfig(name="ce"), LossTermConfig(name="test_registry:ConstantTerm",
                                                                          params={"value": 3.0})])
    # the default weight 0.25 is a convex share, so ce gets 1 - 0.25
    assert [(term.name, term.weight) for term in terms] == [("ce", 0.75), ("test_registry:ConstantTerm", 0.25)]
    with pytest.raises(ConfigError, match=r"losses\.0\.scale: unknown parameter for loss 'test_registry:ConstantTerm'; "
                                          r"valid parameters: value"):
        resolve_loss_terms([LossTermConfig(name="test_registry:ConstantTerm", params={"scale": 1})])
    context = TermContext(student=torch.nn.Linear(1, 1), teacher=None, num_classes=2)
    (name, weight, module), = build_loss_terms(terms[1:], context)
    assert (name, weight, module.value) == ("test_registry:ConstantTerm", 0.25, 3.0)


@pytest.mark.parametrize("name, message", [
    ("no_such_module_here:Term", r"losses\.0\.name: cannot import module 'no_such_module_here'"),
    ("test_registry:Missing", r"'test_registry:Missing' is not a LossTerm subclass .*has no attribute 'Missing'"),
    ("test_registry:NOT_A_TERM", r"'test_registry:NOT_A_TERM' is not a LossTerm subclass .*defines it as"),
])
def test_bad_import_paths_name_what_is_wrong(name, message):
    with pytest.raises(ConfigError, match=message):
        resolve_loss_terms([LossTermConfig(name=name)])


def test_the_ground_truth_weight_is_what_the_convex_terms_leave_and_explicit_weights_stay():
    terms = resolve_loss_terms([LossTermConfig(name="ce"), LossTermConfig(name="deit", params={"mode": "hard"})])
    assert [term.weight for term in terms] == [0.5, 0.5]
    terms = resolve_loss_terms([LossTermConfig(name="ce", weight=0.2), LossTermConfig(name="kd")])
    assert [term.weight for term in terms] == [0.2, 1.0]  # kd is not convex: ce keeps its weight, kd its default
    assert resolve_loss_terms(terms) == terms  # resolving twice changes nothing
    with pytest.raises(ConfigError, match=r"losses\.1\.weight must be >= 0, got -1\.0"):
        resolve_loss_terms([LossTermConfig(name="ce"), LossTermConfig(name="kd", weight=-1.0)])


def test_unresolved_terms_are_refused_by_the_builder():
    context = TermContext(student=torch.nn.Linear(1, 1), teacher=None, num_classes=2)
    with pytest.raises(ValueError, match=r"losses\.0 \(ce\) has no weight: pass the terms through resolve_loss_terms"):
        build_loss_terms([LossTermConfig(name="ce")], context)
