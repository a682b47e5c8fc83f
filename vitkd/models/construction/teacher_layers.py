"""A student built from the teacher's layers (DistilBERT's every-other-layer initialisation, XTC's layer reduction):
same width and heads, fewer blocks, each a copy of a chosen teacher block; patch and position embeddings, prefix
tokens (class / distillation token, register tokens), final norm and head are copied too.

Layer choices for a student of S blocks and a teacher of T blocks:
- `every_other`: teacher blocks T-1, T-3, ... counted back from the last (1, 3, 5, 7, 9, 11 for 6 of 12), the
  DistilBERT pattern; needs 2 S <= T + 1.
- `uniform`: block round((i + 1) T / S) - 1 for student block i (the last student block meets the last teacher block);
  the same as `every_other` when T = 2 S.
- `first`: blocks 0 .. S-1 (BERT-of-Theseus' successor initialisation).
- a list of S teacher block indices (negative ones count from the end).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from vitkd.errors import ConfigError
from vitkd.models.layer_mapping import map_layers_evenly, resolve_layer_indices

LayerChoice = Union[str, Sequence[int]]


def choose_teacher_layers(layers: LayerChoice, student_depth: int, teacher_depth: int,
                          key: str = "student.init.layers") -> list[int]:
    """The teacher block each student block copies (absolute indices, one per student block). Raises ConfigError
    naming `key` for a choice that does not fit the two depths."""
    if layers == "every_other":
        if 2 * student_depth > teacher_depth + 1:
            raise ConfigError(f"{key}: every_other needs a teacher of at least {2 * student_depth - 1} blocks for "
                              f"{student_depth} student blocks, the teacher has {teacher_depth}")
        return [teacher_depth - 1 - 2 * (student_depth - 1 - i) for i in range(student_depth)]
    if layers == "uniform":
        if student_depth > teacher_depth:
            raise ConfigError(f"{key}: uniform needs a teacher at least as deep as the student ({student_depth} "
                              f"blocks), the teacher has {teacher_depth}")
        return map_layers_evenly(list(range(student_depth)), student_depth, teacher_depth)
    if layers == "first":
        if student_depth > teacher_depth:
            raise ConfigError(f"{key}: first needs a teacher of at least {student_depth} blocks, it has "
                              f"{teacher_depth}")
        return list(range(student_depth))
    if isinstance(layers, str):
        raise ConfigError(f"{key}: {layers!r} is not valid; use every_other, uniform, first or a list of indices")
    if len(layers) != student_depth:
        raise ConfigError(f"{key}: {list(layers)} names {len(layers)} teacher blocks but the student has "
                          f"{student_depth} (student.kwargs.depth)")
    try:
        return resolve_layer_indices(list(layers), teacher_depth, "teacher")
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None


def check_same_shape(student: nn.Module, teacher: nn.Module) -> None:
    """The student and teacher must share width and heads for their blocks to be copied. Raises ConfigError naming
    both widths (or both head counts)."""
    for model, who in ((student, "student"), (teacher, "teacher")):
        if not isinstance(getattr(model, "blocks", None), (nn.ModuleList, nn.Sequential)):
            raise ConfigError(f"student.init: the {who} ({type(model).__name__}) has no transformer blocks to copy")
    student_width = getattr(student, "embed_dim", None)
    teacher_width = getattr(teacher, "embed_dim", None)
    if student_width != teacher_width:
        raise ConfigError(f"student.init copies teacher blocks, which needs equal widths: the student's embed_dim is "
                          f"{student_width}, the teacher's {teacher_width}; set student.kwargs.embed_dim: "
                          f"{teacher_width}")
    student_heads = getattr(student.blocks[0].attn, "num_heads", None)
    teacher_heads = getattr(teacher.blocks[0].attn, "num_heads", None)
    if student_heads != teacher_heads:
        raise ConfigError(f"student.init copies teacher blocks, which needs equal head counts: the student has "
                          f"{student_heads} heads, the teacher {teacher_heads}; set student.kwargs.num_heads: "
                          f"{teacher_heads}")


@torch.no_grad()
def init_from_teacher_layers(student: nn.Module, teacher: nn.Module, layers: Sequence[int]) -> None:
    """Copy, in place, every teacher tensor outside the blocks into `student`, and teacher block `layers[i]` into
    student block i. Raises ConfigError when the two models differ in anything but depth (naming the tensors)."""
    check_same_shape(student, teacher)
    source = teacher.state_dict()
    target = student.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key in target:
        if key.startswith("blocks."):
            index, rest = key[len("blocks."):].split(".", 1)
            source_key = f"blocks.{layers[int(index)]}.{rest}"
        else:
            source_key = key
        if source_key not in source or source[source_key].shape != target[key].shape:
            found = tuple(source[source_key].shape) if source_key in source else "nothing"
            raise ConfigError(f"student.init: the student's {key} {tuple(target[key].shape)} has no counterpart in the "
                              f"teacher ({source_key}: {found}); the two must be the same architecture but for depth")
        mapped[key] = source[source_key]
    extra = [key for key in source if not key.startswith("blocks.") and key not in target]
    if extra:
        raise ConfigError(f"student.init: the teacher has tensors the student lacks ({', '.join(extra[:4])}); the two "
                          f"must be the same architecture but for depth")
    student.load_state_dict(mapped)
