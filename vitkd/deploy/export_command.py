"""`vitkd export`: write a student as safetensors (a vitkd export directory) or as a validated ONNX file.

Examples::

    vitkd export runs/demo/deit_hard --format onnx --dynamic-batch        # -> runs/demo/deit_hard/export/student.onnx
    vitkd export deit_tiny_patch16_224@weights.safetensors --format onnx --opset 17 --output deit_tiny.onnx
    vitkd export vit_tiny_patch16_224:img_size=32,num_classes=10@ckpt.pt --format safetensors --output my_export

Bad input (a missing extra, an op without ONNX translation, an opset the exporter cannot write, a file whose
output differs from PyTorch's) raises `DeployError`, which `vitkd` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitkd.bench.model_spec import parse_model_spec
from vitkd.bench.onnx_build import DEFAULT_OPSET, MAXIMUM_OPSET, MINIMUM_OPSET
from vitkd.deploy.onnx_check import DEFAULT_MAX_RELATIVE_ERROR
from vitkd.deploy.onnx_export import VALIDATION_BATCH, ModelSource, export_model_to_onnx, load_source
from vitkd.engine.checkpoint import export_student
from vitkd.models.factory import EXPORT_INFO, EXPORT_WEIGHTS

__all__ = ["add_arguments", "default_output", "run"]

ONNX_FILE = "student.onnx"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `vitkd export`'s arguments to `parser`."""
    parser.description = (
        "Export a student: --format safetensors writes a vitkd export directory (student.safetensors + "
        "student.json); --format onnx writes an ONNX file with the model name, input/output names and "
        "preprocessing (img_size, mean, std, crop_pct) in its metadata, then checks ONNX Runtime's output against "
        f"PyTorch's on {VALIDATION_BATCH} random and {VALIDATION_BATCH} bundled-digit images. A file that fails "
        "the check is renamed to NAME.failed-validation.onnx (kept for inspection) and the command exits with "
        "status 2. ONNX needs the deploy extra: pip install -e '.[deploy]'.")
    parser.add_argument("source", metavar="RUN_DIR|EXPORT|MODEL",
                        help="a vitkd run directory, export directory or checkpoint that records its model, or a "
                             "model spec NAME[:KEY=VALUE,...][@CHECKPOINT] (as for `vitkd bench`)")
    parser.add_argument("--format", choices=["safetensors", "onnx"], default="onnx", help="default: onnx")
    parser.add_argument("--output", metavar="PATH",
                        help=f"onnx: the file (default: <run>/export/{ONNX_FILE}, <export dir>/{ONNX_FILE} or "
                             f"./<model>.onnx); safetensors: the directory (default: ./<model>_export)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX operator set, {MINIMUM_OPSET}-{MAXIMUM_OPSET} (default: {DEFAULT_OPSET})")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="symbolic batch dimension (default: the file takes batch 1 only)")
    parser.add_argument("--img-size", type=int, metavar="S",
                        help="square input side (default: the size the export records, else the model's own)")
    parser.add_argument("--max-relative-error", type=float, default=DEFAULT_MAX_RELATIVE_ERROR, metavar="E",
                        help="fail when max|onnx - torch| / max|torch| exceeds E on any check batch "
                             f"(default: {DEFAULT_MAX_RELATIVE_ERROR:g})")
    parser.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime threads for the check")


def default_output(source_text: str, model_name: str, onnx: bool) -> Path:
    """Where the export goes when `--output` is not given (see the `--output` help)."""
    source_path = Path(source_text)
    if onnx and source_path.is_dir():
        return source_path / ONNX_FILE if (source_path / EXPORT_WEIGHTS).is_file() else (
            source_path / "export" / ONNX_FILE)
    return Path(f"{model_name}.onnx") if onnx else Path(f"{model_name}_export")


def _export_safetensors(source: ModelSource, output: Path) -> int:
    extra = {key: source.preprocessing[key] for key in ("img_size", "mean", "std", "crop_pct", "interpolation", "classes")
             if key in source.preprocessing}
    export_student(source.model, output, source.model_name, source.model_kwargs, extra_info=extra)
    print(f"wrote {output / EXPORT_WEIGHTS} and {output / EXPORT_INFO}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Export as asked; print what was written (and the ONNX check's errors); returns 0."""
    parse_model_spec(args.source)  # a typo fails before any model is built
    source = load_source(args.source, img_size=args.img_size)
    output = Path(args.output) if args.output else default_output(args.source, source.model_name,
                                                                  args.format == "onnx")
    if args.format == "safetensors":
        return _export_safetensors(source, output)
    result = export_model_to_onnx(source, output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                                  max_relative_error=args.max_relative_error, threads=args.threads)
    for comparison in result.comparisons:
        print(f"ONNX Runtime vs PyTorch, {comparison.describe()}")
    print(f"wrote {result.path} (opset {result.opset}, {result.file_bytes / 2**20:.2f} MiB, input "
          f"{json.dumps(source.preprocessing['img_size'])}px, "
          f"{'dynamic batch' if args.dynamic_batch else 'batch 1'}); passed the check "
          f"(relative error <= {args.max_relative_error:g})")
    return 0
