"""FLOP and activation counts with fvcore, with a handler for the fused attention op timm ViTs use.

Conventions (the ones behind the DeiT and TinyViT tables):

* One fused multiply-add is one FLOP (fvcore's convention), so a `Linear(in, out)` applied to T tokens costs
  `T * in * out` FLOPs, and "GFLOPs" in our tables are really GMACs, as in those papers.
* Counted at batch 1 and the model's own input size, in inference mode (dropout off).
* `aten::scaled_dot_product_attention` (which fvcore skips, undercounting every timm ViT by the attention
  matmuls) is counted like the two matmuls it fuses: for q `(B, H, N, d)`, k `(B, H, M, d)`, v `(B, H, M, dv)`,
  `B*H*N*M*d` for `q @ k^T` plus `B*H*N*M*dv` for `attn @ v`. The softmax, scale, mask and dropout are elementwise
  and ignored, as they are for the unfused path. A causal mask still counts the full `N x M` product.
* Normalisation layers keep fvcore's default cost (a few FLOPs per element); `aten::mean` and average pooling cost
  one FLOP per input element, as fvcore counts `adaptive_avg_pool2d`.
* Elementwise arithmetic, activations, softmax and max pooling are "free by convention" (`FREE_BY_CONVENTION_OPS`):
  they cost nothing in the published tables, so they are counted as zero and only logged (INFO) once per
  analysis. Any other op fvcore cannot count raises an `UncountedOpWarning` naming it: that count is a lower bound.
* Training cost per image = forward + backward with backward = 2 x forward (gradients with respect to both the
  activations and the weights, each about one forward's worth of multiply-adds), so `TRAINING_FLOPS_MULTIPLIER = 3`.

Activations follow fvcore's `ActivationCountAnalysis`: the number of output elements of convolutions and matrix
products (linear, matmul, einsum, ...). The fused attention op counts as the two matmul outputs it replaces,
`B*H*N*M + B*H*N*dv`, so fused and unfused attention give the same figures.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitkd.bench.input_size import (InputSize, check_input_size, default_input_size, eval_mode, model_device,
                                    model_display_name, normalize_input_size)
from vitkd.bench.runtime import RuntimeOptions, example_batch

with warnings.catch_warnings():
    # fvcore scripts a few losses with `torch.jit.script` at import time, which recent torch deprecates; the warning
    # is about fvcore's internals, not about anything a vitkd user can change.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis
    from fvcore.nn.jit_handles import elementwise_flop_counter, get_shape

__all__ = [
    "FREE_BY_CONVENTION_OPS",
    "TRAINING_FLOPS_MULTIPLIER",
    "FlopCount",
    "UncountedOpWarning",
    "analyze_flops",
    "count_activations",
    "count_flops",
    "scaled_dot_product_attention_activations",
    "scaled_dot_product_attention_flops",
    "training_flops_per_image",
]

logger = logging.getLogger(__name__)

TRAINING_FLOPS_MULTIPLIER = 3
"""Forward + backward FLOPs per training image, in units of forward FLOPs (backward = 2 x forward)."""

FREE_BY_CONVENTION_OPS: frozenset[str] = frozenset(
    f"aten::{name}"
    for name in (
        # elementwise arithmetic (residual adds, layer scale, attention scale and bias, ...)
        "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "abs", "pow", "sqrt", "rsqrt",
        "exp", "log", "reciprocal", "minimum", "maximum", "clamp_min", "where",
        # activations and attention normalisation
        "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "hardswish", "hardswish_", "hardsigmoid",
        "hardsigmoid_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "tanh", "tanh_",
        "mish", "softplus", "softmax", "log_softmax",
        # comparisons only, no multiply-adds
        "max_pool1d", "max_pool2d", "max_pool3d",
        # data movement and dropout variants fvcore does not already ignore
        "clone", "repeat", "expand_as", "index_select", "masked_fill_", "fill_", "zero_", "feature_dropout",
        "alpha_dropout", "dropout_", "pad",
    )
)
"""Ops that cost zero FLOPs by the convention of the DeiT/TinyViT tables (elementwise work, no multiply-adds)."""

Handle = Callable[[list[Any], list[Any]], int]


class UncountedOpWarning(UserWarning):
    """fvcore met ops it has no FLOP handler for, so the reported count is a lower bound."""


def _attention_shapes(inputs: list[Any]) -> tuple[list[int], list[int], list[int]]:
    query_shape, key_shape, value_shape = (get_shape(value) for value in inputs[:3])
    if query_shape is None or key_shape is None or value_shape is None:
        raise ValueError("scaled_dot_product_attention traced without complete query/key/value shapes")
    return query_shape, key_shape, value_shape


def scaled_dot_product_attention_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handler: FLOPs of `q @ k^T` and `attn @ v` for q `(..., N, d)`, k `(..., M, d)`, v `(..., M, dv)`.

    Leading dims `...` are the query's (batch, heads), so grouped-query attention with fewer key heads is counted
    per query head. Returns `prod(...) * N * M * (d + dv)`.
    """
    query_shape, key_shape, value_shape = _attention_shapes(inputs)
    query_rows = 1
    for size in query_shape[:-1]:  # B * H * N
        query_rows *= size
    key_length, head_dim, value_dim = key_shape[-2], query_shape[-1], value_shape[-1]
    return query_rows * key_length * head_dim + query_rows * key_length * value_dim


def scaled_dot_product_attention_activations(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handler: output elements of the two fused matmuls, `B*H*N*M` scores plus the `B*H*N*dv` result."""
    query_shape, key_shape, value_shape = _attention_shapes(inputs)
    query_rows = 1
    for size in query_shape[:-1]:
        query_rows *= size
    return query_rows * key_shape[-2] + query_rows * value_shape[-1]


_EXTRA_FLOP_HANDLES: dict[str, Handle] = {
    "aten::scaled_dot_product_attention": scaled_dot_product_attention_flops,
    "aten::mean": elementwise_flop_counter(1, 0),
    "aten::avg_pool1d": elementwise_flop_counter(1, 0),
    "aten::avg_pool2d": elementwise_flop_counter(1, 0),
    "aten::avg_pool3d": elementwise_flop_counter(1, 0),
    "aten::adaptive_avg_pool1d": elementwise_flop_counter(1, 0),
}


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs of one traced input (one fused multiply-add = one FLOP).

    Attributes:
        total: forward FLOPs for the traced batch (batch 1 when produced by `analyze_flops`).
        by_operator: FLOPs per counted operator, e.g. `{"linear": ..., "scaled_dot_product_attention": ...}`.
        uncounted_ops: ops with no handler and the number of times each ran; non-empty means `total` is too low.
        ignored_ops: ops met that are free by convention (`FREE_BY_CONVENTION_OPS`) and how often each ran.
    """

    total: int
    by_operator: dict[str, int] = field(default_factory=dict)
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    ignored_ops: dict[str, int] = field(default_factory=dict)

    @property
    def training_total(self) -> int:
        """Forward + backward FLOPs for the traced batch (backward = 2 x forward)."""
        return training_flops_per_image(self.total)


def training_flops_per_image(forward_flops_per_image: int) -> int:
    """Forward + backward FLOPs of one training image, taking backward = 2 x forward."""
    return TRAINING_FLOPS_MULTIPLIER * int(forward_flops_per_image)


def _prepare(model: nn.Module, input_size: int | Sequence[int] | None, model_name: str | None
             ) -> tuple[str, InputSize, torch.Tensor]:
    model_name = model_name or model_display_name(model)
    size = default_input_size(model) if input_size is None else normalize_input_size(input_size)
    check_input_size(model, size, model_name)
    example = example_batch(size, 1, RuntimeOptions(device=str(model_device(model))))  # (1, C, H, W)
    return model_name, size, example


def _run_quietly(analysis: FlopCountAnalysis | ActivationCountAnalysis, model: nn.Module) -> None:
    """Trace once with fvcore's own logging off (we report uncounted ops ourselves) and dropout disabled."""
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with eval_mode(model), torch.no_grad():
        analysis.total()


def _op_recorder(op_name: str, seen: Counter[str]) -> Handle:
    def record_free_op(inputs: list[Any], outputs: list[Any]) -> int:
        seen[op_name] += 1
        return 0

    return record_free_op


def analyze_flops(model: nn.Module, input_size: int | Sequence[int] | None = None, *,
                  model_name: str | None = None) -> FlopCount:
    """Forward FLOPs of `model` at batch 1, broken down by operator, with the ops that could not be counted.

    Args:
        model: any `nn.Module` taking a `(B, C, H, W)` image batch; traced on its own device, in eval mode.
        input_size: `(C, H, W)`; defaults to the model's own input size (`default_input_size`).
        model_name: used in warnings and errors; defaults to the timm architecture or class name.

    Raises:
        InputSizeError: the model cannot run on `input_size`.

    Warns:
        UncountedOpWarning: ops that are neither counted nor free by convention ran; the total is a lower bound.
    """
    model_name, size, example = _prepare(model, input_size, model_name)
    ignored: Counter[str] = Counter()
    analysis = FlopCountAnalysis(model, (example,))
    analysis.set_op_handle(**_EXTRA_FLOP_HANDLES)
    analysis.set_op_handle(**{op: _op_recorder(op, ignored) for op in FREE_BY_CONVENTION_OPS})
    _run_quietly(analysis, model)
    uncounted = dict(sorted(analysis.unsupported_ops().items()))
    if ignored:
        listed = ", ".join(f"{op} ({count}x)" for op, count in sorted(ignored.items()))
        logger.info("FLOPs of %s at %s: ignored by convention (elementwise, ~free): %s", model_name, size, listed)
    if uncounted:
        listed = ", ".join(f"{op} ({count}x)" for op, count in uncounted.items())
        warnings.warn(
            f"FLOPs of {model_name} at {size} are undercounted: fvcore has no handler for {listed}",
            UncountedOpWarning,
            stacklevel=2,
        )
    return FlopCount(
        total=int(analysis.total()),
        by_operator={op: int(count) for op, count in sorted(analysis.by_operator().items())},
        uncounted_ops=uncounted,
        ignored_ops=dict(sorted(ignored.items())),
    )


def count_flops(model: nn.Module, input_size: int | Sequence[int] | None = None, *,
                model_name: str | None = None) -> int:
    """Forward FLOPs of one `(C, H, W)` image (one fused multiply-add = one FLOP); see `analyze_flops`.

    Example: timm `deit_tiny_patch16_224` at `(3, 224, 224)` gives about 1.26e9 (published: 1.3 GFLOPs).
    """
    return analyze_flops(model, input_size, model_name=model_name).total


def count_activations(model: nn.Module, input_size: int | Sequence[int] | None = None, *,
                      model_name: str | None = None) -> int:
    """Output elements of convolutions and matrix products for one `(C, H, W)` image (fvcore's convention).

    Elementwise ops, norms and activations do not count, as in fvcore; fused attention counts as its two matmuls.
    """
    model_name, _, example = _prepare(model, input_size, model_name)
    analysis = ActivationCountAnalysis(model, (example,))
    analysis.set_op_handle(**{"aten::scaled_dot_product_attention": scaled_dot_product_attention_activations})
    _run_quietly(analysis, model)
    return int(analysis.total())
