"""Turn a PyTorch classifier into an ONNX file: the one place vitkd calls `torch.onnx.export`.

Exporter: the TorchScript-based one (`torch.onnx.export(..., dynamo=False)`). Both of this PyTorch's exporters were
tried on a plain ViT, a distilled DeiT, a TinyViT and two CNNs; both export all of them, with dynamic batch, and
match PyTorch within 2e-6 in ONNX Runtime. The TorchScript exporter is 10-25x faster: 0.2-0.4 s against 6-8 s for
a 2-block ViT at 32x32, 2-3 s against 20-50 s for DeiT-Tiny at 224x224, on two busy cores (the torch.export one
spends most of it decomposing the program into ATen ops). `vitkd bench --runtime onnxruntime` exports every model
of every run, so that cost would dominate small benchmarks. PyTorch marks the TorchScript exporter deprecated; its
warning is silenced here, and moving to the torch.export one is the `dynamo=` switch of this single call.

The model is exported in eval mode (dropout off, a distilled DeiT averages its two heads) on the CPU from a fixed
random input, with constant folding; the file is written to a temporary name and renamed. An op without an ONNX
translation is reported with the module that called it, found by one forward under a dispatch mode that records
which module every op ran in. The optional packages (`onnx`, `onnxruntime`) are imported only here and in
`vitkd.bench.onnx_runtime`, when an ONNX path is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vitkd.bench.input_size import InputSize, eval_mode, model_display_name
from vitkd.errors import DeployError
from vitkd.files import atomic_write

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "MAXIMUM_OPSET", "MINIMUM_OPSET", "OUTPUT_NAME", "export_to_onnx",
           "module_calling_op", "require_deploy_package"]

DEFAULT_OPSET = 17  # the first with LayerNormalization as one op; every ONNX Runtime since 1.14 runs it
MINIMUM_OPSET = 7  # the oldest operator set the TorchScript exporter writes
MAXIMUM_OPSET = 20  # the newest it writes (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEPLOY_EXTRA_HINT = "pip install -e '.[deploy]'"

# How the exporter names an op it cannot translate: 'aten::scaled_dot_product_attention', mylib::op, ...
_OP_NAME = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*::[A-Za-z_][A-Za-z0-9_]*)")


def require_deploy_package(name: str) -> ModuleType:
    """Import one of the optional deploy packages (`onnx`, `onnxruntime`, or a submodule such as
    `onnxruntime.quantization`).

    Raises:
        DeployError: the package is not installed; the message names it and the extra that installs it.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise DeployError(f"ONNX export and ONNX Runtime need the optional package '{name.split('.')[0]}', which is "
                          f"not installed ({error}); install the deploy extra: {DEPLOY_EXTRA_HINT}") from None


class _OpModuleRecorder:
    """Records the module path (`blocks.0.attn`) in which each op first ran during a forward.

    Ops are seen twice: as Python functions (`torch.nn.functional.scaled_dot_product_attention` is recorded as
    `aten::scaled_dot_product_attention`, the name the exporter uses before any decomposition) and as dispatched
    kernels (`aten::mul`, custom ops such as `mylib::op`)."""

    def __init__(self, module_stack: list[str]) -> None:
        self.module_stack = module_stack
        self.first_module: dict[str, str] = {}
        recorder = self

        class FunctionMode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                schema = getattr(func, "_schema", None)
                recorder.record(schema.name if schema is not None else f"aten::{getattr(func, '__name__', '')}")
                return func(*args, **(kwargs or {}))

        class DispatchMode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                recorder.record(func._schema.name)
                return func(*args, **(kwargs or {}))

        self.modes = (FunctionMode(), DispatchMode())

    def record(self, op_name: str) -> None:
        self.first_module.setdefault(op_name, self.module_stack[-1])


def module_calling_op(model: nn.Module, example: torch.Tensor, op_name: str) -> str | None:
    """`path (ClassName)` of the innermost module whose forward first ran `op_name` (`namespace::op`) on `example`,
    or `None` when the forward never runs it (the exporter introduced it)."""
    module_stack = ["<root>"]
    names = {id(module): name or "<root>" for name, module in model.named_modules()}
    types = {name or "<root>": type(module).__name__ for name, module in model.named_modules()}

    def enter(module: nn.Module, _inputs: object) -> None:
        module_stack.append(names[id(module)])

    def leave(_module: nn.Module, _inputs: object, _output: object) -> None:
        module_stack.pop()

    handles = []
    for module in model.modules():
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    recorder = _OpModuleRecorder(module_stack)
    function_mode, dispatch_mode = recorder.modes
    try:
        with eval_mode(model), torch.no_grad(), function_mode, dispatch_mode:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    path = recorder.first_module.get(op_name)
    return None if path is None else f"{path} ({types[path]})"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def _quietly():  # type: ignore[no-untyped-def]
    """The exporter prints graphs and warns (its own deprecation, tracer warnings on timm's size asserts) about
    things the caller cannot act on: keep them out of the user's terminal."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _unsupported_op_error(model: nn.Module, example: torch.Tensor, name: str, opset: int,
                          error: BaseException) -> DeployError:
    message = _first_line(error)
    found = _OP_NAME.search(message)
    if found is None:
        return DeployError(f"model {name!r} cannot be exported to ONNX at opset {opset}: "
                           f"{type(error).__name__}: {message}")
    op_name = found.group(1)
    module = module_calling_op(model, example, op_name) or "<added by the exporter>"
    return DeployError(f"model {name!r} cannot be exported to ONNX at opset {opset}: op {op_name} in module "
                       f"{module} has no ONNX translation ({message}); try another --opset, or replace that module")


def export_to_onnx(model: nn.Module, input_size: InputSize, path: str | os.PathLike[str], *,
                   opset: int = DEFAULT_OPSET, dynamic_batch: bool = False, model_name: str | None = None,
                   metadata: Mapping[str, str] | None = None) -> Path:
    """Export `model` (`(B, C, H, W) -> (B, num_classes)`) to an ONNX file at `path` and return the path.

    Args:
        model: the classifier; exported on the CPU in eval mode (its mode is restored afterwards).
        input_size: `(C, H, W)` of one image.
        path: where the `.onnx` file goes (written to a temporary name, then renamed).
        opset: default-domain ONNX operator set, `MINIMUM_OPSET` to `MAXIMUM_OPSET`.
        dynamic_batch: make the batch dimension symbolic (`batch`); otherwise the file takes batch 1 only.
        model_name: named in errors (defaults to the timm architecture or class name).
        metadata: key/value strings stored in the file's `metadata_props`.

    The graph's input is named `INPUT_NAME` (`(B, C, H, W)` float32) and its output `OUTPUT_NAME` (`(B, classes)`).

    Raises:
        DeployError: the deploy packages are missing, the exporter cannot write `opset`, or an op has no ONNX
            translation at `opset` (the op and the module that calls it are named).
    """
    onnx = require_deploy_package("onnx")
    name = model_name or model_display_name(model)
    if not MINIMUM_OPSET <= opset <= MAXIMUM_OPSET:
        raise DeployError(f"--opset {opset}: the installed exporter (torch {torch.__version__}, TorchScript-based) "
                          f"writes operator sets {MINIMUM_OPSET} to {MAXIMUM_OPSET}; choose one in that range "
                          f"(default {DEFAULT_OPSET})")
    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))  # (1, C, H, W)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    model = model.to("cpu")
    buffer = io.BytesIO()
    with eval_mode(model), torch.no_grad(), _quietly():
        try:
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
        except Exception as error:  # noqa: BLE001 - the exporter raises torch.onnx.errors.* and RuntimeErrors
            raise _unsupported_op_error(model, example, name, opset, error) from error
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    path = Path(path)
    return atomic_write(path, proto.SerializeToString())
