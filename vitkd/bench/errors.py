"""Errors raised by `vitkd.bench` for bad input.

All of them subclass `BenchInputError` (itself a `ValueError`), so the CLI can print the message and exit with a
usage error instead of a traceback, while library callers can still catch the precise kind.
"""

from __future__ import annotations

__all__ = ["BenchInputError", "UnknownModelError", "InputSizeError", "ClassCountMismatchError"]


class BenchInputError(ValueError):
    """Input to a benchmark (a model spec, an input size, a dataset) that cannot be measured as given."""


class UnknownModelError(BenchInputError):
    """A model name that neither timm nor `vitkd.models` knows; the message suggests close names."""


class InputSizeError(BenchInputError):
    """An input size the model cannot run on (wrong size for a fixed-size ViT, not divisible by the patch, ...)."""


class ClassCountMismatchError(BenchInputError):
    """The evaluation dataset has a different number of classes than the model's classifier head."""
