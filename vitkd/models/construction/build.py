"""Build the student a recipe's `student` section describes: a timm model, optionally made from the teacher's layers
or wrapped for progressive module replacement (`student.init`), then quantised (`student.quantize`); and turn the
trained module back into what is exported (a plain timm model)."""

from __future__ import annotations

import copy
import functools
from typing import Optional

from torch import nn

from vitkd.config import StudentConfig
from vitkd.errors import ConfigError
from vitkd.models.construction.teacher_layers import choose_teacher_layers, init_from_teacher_layers
from vitkd.models.construction.theseus import TheseusModel, replacement_probability
from vitkd.models.factory import build_model
from vitkd.models.quantize.apply import quantize_model, quantized_layers
from vitkd.models.quantize.layers import QuantizedConv2d
from vitkd.models.quantize.weight_split import split_ternary_model


def build_student(config: StudentConfig, model_kwargs: dict, teacher: Optional[nn.Module] = None,
                  seed: int = 0) -> nn.Module:
    """The student to train: `timm.create_model(config.name, **model_kwargs)` (weights from `config.checkpoint`),
    initialised from `teacher` and/or quantised as `config.init` / `config.quantize` say. With `init.method: theseus`
    the result is a `TheseusModel` around the student. Raises ConfigError naming the recipe key."""
    student = build_model(config.name, model_kwargs, config.checkpoint)
    model = student
    init = config.init
    if init is not None:
        if teacher is None:
            raise ConfigError("student.init builds the student from the teacher's weights: set teacher.name and "
                              "teacher.checkpoint")
        layers = choose_teacher_layers(init.layers, len(getattr(student, "blocks", [])),
                                       len(getattr(teacher, "blocks", [])))
        init_from_teacher_layers(student, teacher, layers)
        if init.method == "theseus":
            probability = functools.partial(replacement_probability, schedule=init.schedule,
                                            replacing_rate=init.replacing_rate, slope=init.slope,
                                            constant_steps=init.constant_steps)
            try:
                model = TheseusModel(student, teacher, probability, seed)
            except ValueError as error:
                raise ConfigError(f"student.init.method=theseus: {error}") from None
    quantize = config.quantize
    if quantize is not None:
        bits = 2 if quantize.split else quantize.weight_bits  # a split student is ternarised, then split
        try:
            quantize_model(student, bits, quantize.layers, quantize.group_size, quantize.activation_bits)
            if quantize.split:
                split_ternary_model(student)
        except ValueError as error:
            raise ConfigError(f"student.quantize: {error}") from None
    return model


def core_student(model: nn.Module) -> nn.Module:
    """The timm student inside `model` (a `TheseusModel`'s successors-only student, else `model` itself); it may
    hold quantised layers."""
    return model.successor_only() if isinstance(model, TheseusModel) else model


def plain_student(model: nn.Module) -> nn.Module:
    """The student as a plain timm model: Theseus' predecessors dropped and, in a copy, every quantised layer replaced
    by an nn.Linear / nn.Conv2d holding its quantised weight (a split layer's two halves summed). Its state dict loads
    into `timm.create_model(name, **kwargs)`; its outputs equal the quantised student's but for 8-bit activation
    rounding."""
    student = core_student(model)
    if not quantized_layers(student):
        return student  # already plain: no copy
    student = copy.deepcopy(student)
    for name, layer in quantized_layers(student).items():
        weight = layer.quantized_weight()
        if isinstance(layer, QuantizedConv2d):
            plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                              layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
        else:
            plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
        plain = plain.to(weight.device, weight.dtype)
        plain.weight.data.copy_(weight)
        if layer.bias is not None:
            plain.bias.data.copy_(layer.bias.detach())
        parent_name, _, child = name.rpartition(".")
        setattr(student.get_submodule(parent_name) if parent_name else student, child, plain)
    return student
