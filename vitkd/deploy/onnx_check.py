"""Check an exported ONNX file against the PyTorch model it came from, on random and on real images.

Both runtimes get the same float32 batches; the comparison reports, per batch,

* `max_abs_error` = max |onnx - torch| over every logit,
* `relative_error` = max_abs_error / max |torch| (scale-free: a logit range of 20 tolerates 20x the absolute error
  of a range of 1, and no near-zero logit can blow the ratio up).

A file passes when every batch's relative error is at most the threshold (default `DEFAULT_MAX_RELATIVE_ERROR`).
Real images are a batch of the bundled digits' validation split, preprocessed with the model's own size, mean,
std and crop, so the check also covers inputs with the statistics the model will see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitkd.bench.input_size import InputSize, eval_mode
from vitkd.bench.onnx_runtime import OnnxRuntimeClassifier

__all__ = ["DEFAULT_MAX_RELATIVE_ERROR", "OutputComparison", "compare_outputs", "digits_batch", "random_batch"]

DEFAULT_MAX_RELATIVE_ERROR = 1e-4


@dataclass(frozen=True)
class OutputComparison:
    """ONNX Runtime's logits against PyTorch's on one batch.

    Attributes:
        inputs: what the batch was (`"random"`, `"digits"`).
        batch_size: images compared.
        max_abs_error: max |onnx - torch|.
        relative_error: max_abs_error / max |torch| (see the module docstring).
    """

    inputs: str
    batch_size: int
    max_abs_error: float
    relative_error: float

    def passes(self, max_relative_error: float) -> bool:
        return self.relative_error <= max_relative_error

    def describe(self) -> str:
        return (f"{self.inputs} inputs (batch {self.batch_size}): max abs error {self.max_abs_error:.3g}, "
                f"relative error {self.relative_error:.3g}")


def output_errors(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    """`(max_abs_error, relative_error)` of `candidate` against `reference` (both `(B, classes)`)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"outputs differ in shape: PyTorch {tuple(reference.shape)}, ONNX {tuple(candidate.shape)}")
    reference, candidate = reference.double(), candidate.double()
    max_abs_error = float((candidate - reference).abs().max())
    scale = float(reference.abs().max())
    return max_abs_error, max_abs_error / scale if scale > 0 else max_abs_error


def random_batch(input_size: InputSize, batch_size: int, seed: int = 0) -> torch.Tensor:
    """A standard-normal `(batch_size, C, H, W)` batch, fixed by `seed`."""
    return torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(seed))


def digits_batch(input_size: InputSize, batch_size: int, preprocessing: Mapping[str, Any]) -> torch.Tensor | None:
    """The first `batch_size` validation digits at the model's size, mean, std and crop, `(B, 3, H, W)`; `None` for a
    model whose input is not 3-channel square images (the digits cannot be fed to it)."""
    channels, height, width = input_size
    if channels != 3 or height != width:
        return None
    from vitkd.data import build_eval_loader

    loader = build_eval_loader("digits", None, height, batch_size, tuple(preprocessing["mean"]),
                               tuple(preprocessing["std"]), crop_pct=float(preprocessing.get("crop_pct", 1.0)),
                               interpolation=str(preprocessing.get("interpolation", "bicubic")))
    return next(iter(loader)).images


def compare_outputs(model: nn.Module, session: Any, batches: Mapping[str, torch.Tensor], *,
                    single_images: bool = False) -> list[OutputComparison]:
    """Run every named batch through `model` (eval mode, CPU) and the ONNX Runtime `session`; one comparison each.

    Args:
        model: the PyTorch classifier the file was exported from.
        session: an `onnxruntime.InferenceSession` of the file.
        batches: name -> `(B, C, H, W)` float32 images.
        single_images: feed ONNX Runtime one image at a time (for files exported with a fixed batch of 1).
    """
    onnx_model = OnnxRuntimeClassifier(session)
    comparisons = []
    with eval_mode(model.to("cpu")), torch.no_grad():
        for name, images in batches.items():
            reference = model(images)  # (B, classes)
            parts: Sequence[torch.Tensor] = images.split(1) if single_images else (images,)
            candidate = torch.cat([onnx_model(part) for part in parts])  # (B, classes)
            max_abs_error, relative_error = output_errors(reference, candidate)
            comparisons.append(OutputComparison(name, images.shape[0], max_abs_error, relative_error))
    return comparisons
