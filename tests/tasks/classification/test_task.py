"""ClassificationTask's model building: what a recipe's teacher changes about the student, and what it must not."""

import torch

from vitkd.config import load_recipe
from vitkd.training import build_trainer


def _initial_student(tiny_recipe, **sections):
    trainer = build_trainer(load_recipe(raw=tiny_recipe(**sections)))
    return {key: value.clone() for key, value in trainer.task.model.state_dict().items()}


def test_a_live_teacher_does_not_change_the_students_initial_weights(tiny_recipe):
    """The student is built before the teacher, so the seed alone decides its random initialisation: runs with and
    without a teacher (and the results tables comparing them) start from the same student."""
    alone = _initial_student(tiny_recipe)
    taught = _initial_student(tiny_recipe, teacher={"name": "vitkd_small_cnn"},
                              losses=[{"name": "ce"}, {"name": "kd", "temperature": 2.0}])
    assert alone.keys() == taught.keys()
    for key in alone:
        assert torch.equal(alone[key], taught[key]), key
