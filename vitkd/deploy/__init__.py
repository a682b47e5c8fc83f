"""Deploying students: ONNX export with preprocessing metadata, checked against PyTorch in ONNX Runtime.

    from vitkd.deploy import export_model_to_onnx, load_source
    result = export_model_to_onnx(load_source("runs/demo/deit_hard"), "deit_hard.onnx", dynamic_batch=True)

`vitkd export` (`vitkd.deploy.export_command`) is the command-line front end. The ONNX building and ONNX Runtime
sessions themselves live in `vitkd.bench` (`onnx_build`, `onnx_runtime`), which `vitkd bench --runtime` also uses;
this package sits on top of it. ONNX needs the optional `deploy` extra (`pip install -e '.[deploy]'`).
"""

from vitkd.deploy.onnx_check import DEFAULT_MAX_RELATIVE_ERROR, OutputComparison, compare_outputs
from vitkd.deploy.onnx_export import (ExportResult, ModelSource, export_model_to_onnx, failed_validation_path,
                                      load_source, onnx_metadata)

__all__ = ["DEFAULT_MAX_RELATIVE_ERROR", "ExportResult", "ModelSource", "OutputComparison", "compare_outputs",
           "export_model_to_onnx", "failed_validation_path", "load_source", "onnx_metadata"]
