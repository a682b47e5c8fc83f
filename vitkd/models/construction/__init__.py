"""Student construction: from the teacher's layers, progressive module replacement (Theseus), low-bit students."""

from vitkd.models.construction.build import build_student, core_student, plain_student
from vitkd.models.construction.teacher_layers import choose_teacher_layers, init_from_teacher_layers
from vitkd.models.construction.theseus import TheseusModel, replacement_probability

__all__ = ["TheseusModel", "build_student", "choose_teacher_layers", "core_student", "init_from_teacher_layers",
           "plain_student", "replacement_probability"]
