"""Benchmarking students: parameters, FLOPs, activations, latency, throughput, peak memory, accuracy, reports.

    from vitkd.bench import count_flops, profile, write_reports
    count_flops(model, input_size=(3, 224, 224))             # forward FLOPs, 1 multiply-add = 1 FLOP
    record = profile(model, name="deit_tiny", batch_size=32)  # ProfileRecord: every figure of one table row
    write_reports([record], "runs/bench")                     # bench.csv, bench.json, bench.md

The conventions behind each figure are documented in the module that measures it: `flops` (FLOPs, training
FLOPs, activations), `latency` (warmup, rounds, spread, interleaved rounds across models), `memory` (what peak
memory means on CPU and CUDA), `accuracy`, `storage` (bits per weight, stored size), `profile` (teacher ratios).
`vitkd bench` (`vitkd.bench.command`) is the command-line front end.
"""

from vitkd.bench.accuracy import Accuracy, dataset_class_count, evaluate_accuracy, model_class_count
from vitkd.errors import BenchInputError, ClassCountMismatchError, InputSizeError, UnknownModelError
from vitkd.bench.flops import (FREE_BY_CONVENTION_OPS, TRAINING_FLOPS_MULTIPLIER, FlopCount, UncountedOpWarning,
                               analyze_flops, count_activations, count_flops, training_flops_per_image)
from vitkd.bench.input_size import check_input_size, default_input_size
from vitkd.bench.latency import (TimedForward, TimingResult, TimingSettings, measure_latency, time_forward,
                                time_interleaved)
from vitkd.bench.memory import measure_peak_memory
from vitkd.bench.model_spec import ModelSpec, build_from_spec, parse_model_spec
from vitkd.bench.plot import pareto_front, plot_tradeoffs
from vitkd.bench.profile import ProfileRecord, compare_to_teacher, profile
from vitkd.bench.report import format_table, markdown_table, read_records, write_reports, write_result_files
from vitkd.bench.runtime import RuntimeOptions
from vitkd.bench.storage import StoredSize, float_storage, packed_storage
from vitkd.bench.suite import SuiteSettings, profile_specs
from vitkd.models.factory import count_parameters  # re-exported: the package's one parameter count

__all__ = [
    "FREE_BY_CONVENTION_OPS", "TRAINING_FLOPS_MULTIPLIER", "Accuracy", "BenchInputError", "ClassCountMismatchError",
    "FlopCount", "InputSizeError", "ModelSpec", "ProfileRecord", "RuntimeOptions", "StoredSize", "SuiteSettings",
    "TimedForward", "TimingResult", "TimingSettings", "UncountedOpWarning", "UnknownModelError", "analyze_flops",
    "build_from_spec", "check_input_size", "compare_to_teacher", "count_activations", "count_flops",
    "count_parameters", "dataset_class_count", "default_input_size", "evaluate_accuracy", "float_storage",
    "format_table", "markdown_table", "measure_latency", "measure_peak_memory", "model_class_count",
    "packed_storage", "pareto_front", "parse_model_spec", "plot_tradeoffs", "profile", "profile_specs",
    "read_records", "time_forward", "time_interleaved", "training_flops_per_image", "write_reports",
    "write_result_files",
]
