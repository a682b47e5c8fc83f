"""Run and time ONNX files with ONNX Runtime on the CPU, and quantise them to int8.

Sessions use the CPU execution provider with every graph optimisation (`ORT_ENABLE_ALL`), sequential execution
and `intra_op_num_threads` set explicitly (the same count as torch's threads unless told otherwise), so the thread
count in a report is the one that ran. Timing goes through `vitkd.bench.latency.time_forward`: the same warmup,
rounds and spread rule as PyTorch forwards. int8 is ONNX Runtime's dynamic quantisation
(`onnxruntime.quantization.quantize_dynamic`): weights of MatMul/Gemm/Conv stored as int8, activations quantised
per batch at run time, so no calibration data is needed.

`OnnxRuntimeClassifier` wraps a session as an `nn.Module`, so accuracy is measured by the same evaluation loop
(and class-count checks) as a PyTorch model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitkd.bench.input_size import InputSize
from vitkd.bench.latency import Clock, TimedForward, TimingResult, TimingSettings, time_forward
from vitkd.bench.onnx_build import require_deploy_package
from vitkd.errors import DeployError
from vitkd.files import atomic_write

__all__ = ["OnnxRuntimeClassifier", "create_session", "measure_onnx_latency", "onnx_forward", "quantize_int8",
           "session_threads"]

logger = logging.getLogger(__name__)


def create_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An `onnxruntime.InferenceSession` for `path` on the CPU with `threads` intra-op threads.

    Args:
        path: the `.onnx` file.
        threads: `intra_op_num_threads`; `None` uses `torch.get_num_threads()` so both runtimes get the same count.

    Raises:
        DeployError: onnxruntime is missing, or it cannot load the file (the message names it).
    """
    onnxruntime = require_deploy_package("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are not the user's
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own pybind error types
        raise DeployError(f"ONNX Runtime {onnxruntime.__version__} cannot load {path}: "
                          f"{' '.join(str(error).split())[:300]}") from error


def session_threads(session: Any) -> int:
    """The `intra_op_num_threads` a session was created with."""
    return int(session.get_session_options().intra_op_num_threads)


class OnnxRuntimeClassifier(nn.Module):
    """An ONNX Runtime session behind the `nn.Module` interface: `(B, C, H, W)` float tensor -> `(B, classes)` logits.

    Inputs are copied to float32 NumPy on the CPU; the logits come back as a CPU tensor. It has no parameters, so
    moving it to a device or switching modes does nothing.

    Attributes:
        num_classes: width of the output (from the file's output shape), for class-count checks.
    """

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        output_shape = session.get_outputs()[0].shape
        self.num_classes = output_shape[-1] if isinstance(output_shape[-1], int) else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()  # (B, C, H, W)
        (logits,) = self.session.run(None, {self.input_name: array})  # (B, classes)
        return torch.from_numpy(np.asarray(logits))


def onnx_forward(session: Any, input_size: InputSize, batch_size: int, *, label: str = "onnxruntime") -> TimedForward:
    """`session.run` bound to a fixed random `(batch_size, *input_size)` float32 batch, ready to be timed.

    Raises:
        DeployError: the file does not take `batch_size` images (exported without a dynamic batch).
    """
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, *input_size, generator=generator).numpy()  # (B, C, H, W)
    input_name = session.get_inputs()[0].name
    declared_batch = session.get_inputs()[0].shape[0]
    if isinstance(declared_batch, int) and declared_batch != batch_size:
        raise DeployError(f"the ONNX file takes batch {declared_batch} only, not {batch_size}; export it with "
                          f"--dynamic-batch")
    feeds = {input_name: batch}
    return TimedForward(label=label, forward=lambda: session.run(None, feeds), batch_size=batch_size)


def measure_onnx_latency(session: Any, input_size: InputSize, batch_size: int,
                         settings: TimingSettings = TimingSettings(), *,
                         clock: Clock = time.perf_counter) -> TimingResult:
    """Time `session.run` on a fixed random `(batch_size, *input_size)` float32 batch (harness rules of `latency`).

    Raises:
        DeployError: the file does not take `batch_size` images (exported without a dynamic batch).
    """
    subject = onnx_forward(session, input_size, batch_size)
    return time_forward(subject.forward, batch_size=batch_size, settings=settings, clock=clock)


def quantize_int8(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Write the int8 dynamic quantisation of the ONNX file `source` to `destination` (temporary name, then rename).

    The file first goes through ONNX Runtime's quantisation pre-processing (`quant_pre_process` with ONNX shape
    inference and graph optimisation, as ONNX Runtime advises before quantising; a graph it cannot pre-process, such
    as TinyViT's window reshapes, is quantised as exported), then `quantize_dynamic` with signed int8 weights
    (`QuantType.QInt8`), one scale per tensor; activations are quantised at run time.
    """
    quantization = require_deploy_package("onnxruntime.quantization")
    shape_inference = require_deploy_package("onnxruntime.quantization.shape_inference")
    destination = Path(destination)

    def write(temporary: str) -> None:
        prepared = Path(temporary).with_name(Path(temporary).name + ".prepared.onnx")
        try:
            try:
                shape_inference.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
                quantize_input = prepared
            except Exception as error:  # noqa: BLE001 - pre-processing is an optimisation; its failure is not fatal
                logger.info("quantisation pre-processing of %s failed (%s); quantising it as exported", source, error)
                quantize_input = Path(source)
            with _root_logging_at(logging.ERROR):  # quantize_dynamic warns through the root logger
                quantization.quantize_dynamic(str(quantize_input), temporary,
                                              weight_type=quantization.QuantType.QInt8)
        finally:
            prepared.unlink(missing_ok=True)

    return atomic_write(destination, write)


@contextlib.contextmanager
def _root_logging_at(level: int) -> Iterator[None]:
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)
