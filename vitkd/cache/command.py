"""Command-line front ends of the cache package: the logit cache and the per-sample embedding store.

    vitkd cache-logits RECIPE [key=value ...] [epochs=E] [topk=K] [--output DIR]
    vitkd cache-info DIR [--verify]
    vitkd embed-targets RECIPE [key=value ...] (--model NAME [--model-kwargs JSON] [--checkpoint PATH] | --teacher)
                        --output DIR [--batch-size N]
    vitkd import-embeddings MATRIX --files LIST.txt RECIPE [key=value ...] --output DIR

For `cache-logits`, `epochs=E` / `topk=K` (or `--epochs` / `--topk`) set the job; every other `key=value` is a
dotted recipe override, as for `vitkd train`. The output directory defaults to the recipe's `teacher.cache`.
`embed-targets` and `import-embeddings` take only recipe overrides besides their flags (`vitkd.cache.embedding_job`).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Optional

from vitkd.errors import ConfigError

if TYPE_CHECKING:  # the jobs import torch and the models; the parsers stay light
    from vitkd.cache.embedding_job import EmbeddingStoreResult

JOB_KEYS = ("epochs", "topk", "output")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def split_job_settings(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """Separate `epochs=E`, `topk=K`, `output=DIR` from the dotted recipe overrides."""
    settings: dict[str, str] = {}
    overrides = []
    for token in tokens:
        key, _, value = token.partition("=")
        if key in JOB_KEYS and value:
            settings[key] = value
        else:
            overrides.append(token)
    return settings, overrides


def add_cache_logits_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="training recipe naming the teacher (teacher.name, teacher.checkpoint)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="epochs=E, topk=K, output=DIR, or dotted recipe overrides (data.batch_size=64)")
    parser.add_argument("--epochs", type=_positive_int, help="epochs to cache (default: train.epochs)")
    parser.add_argument("--topk", type=_positive_int, help="probabilities kept per sample (default: "
                        "teacher.cache_topk, else 10)")
    parser.add_argument("--output", help="cache directory (default: teacher.cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _job_int(settings: dict[str, str], key: str, flag: Optional[int]) -> Optional[int]:
    if key not in settings:
        return flag
    if flag is not None and str(flag) != settings[key]:
        raise ConfigError(f"cache-logits: {key} given twice ({key}={settings[key]} and --{key} {flag}); give it once")
    try:
        return _positive_int(settings[key])
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"cache-logits: {key}={settings[key]}: {error}") from None


def run_cache_logits(args: argparse.Namespace) -> int:
    from vitkd.cache.logit_job import build_logit_cache
    from vitkd.config import load_recipe

    settings, overrides = split_job_settings(args.overrides)
    epochs = _job_int(settings, "epochs", args.epochs)
    topk = _job_int(settings, "topk", args.topk)
    output = settings.get("output", args.output)
    recipe = load_recipe(args.recipe, overrides)
    result = build_logit_cache(recipe, epochs=epochs, topk=topk, output=output, progress=not args.no_progress)
    summary = {"cache": str(result.path), "epochs": result.epochs, "written_now": result.written,
               "topk": result.topk, "num_samples": result.num_samples, "num_classes": result.num_classes,
               "bytes_per_sample_epoch": result.record_size, "seconds": round(result.seconds, 2)}
    print(json.dumps(summary, indent=2))
    return 0


def add_cache_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache_dir", help="cache directory (holds manifest.json)")
    parser.add_argument("--verify", action="store_true", help="check every record's CRC32")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar during --verify")


def run_cache_info(args: argparse.Namespace) -> int:
    """Print a cache's description; exit status 0: usable (and verified with --verify); 1: missing/truncated files
    or failing records. A directory that is not a readable cache raises `LogitCacheError` (the CLI prints it as one
    line and exits with status 2)."""
    from vitkd.cache.info import describe_cache

    text, ok = describe_cache(args.cache_dir, verify=args.verify, progress=not args.no_progress)
    print(text)
    return 0 if ok else 1


def add_embed_targets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="training recipe whose training split gets one row per sample")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted recipe overrides (data.root=...)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="timm model name whose pooled features (pre-logits) become the rows")
    source.add_argument("--teacher", action="store_true", help="use the recipe's teacher (teacher.name, "
                        "teacher.checkpoint) instead of --model")
    parser.add_argument("--model-kwargs", help="JSON dict of timm kwargs for --model (num_classes defaults to the "
                        "dataset's class count)")
    parser.add_argument("--checkpoint", help="local weights for --model: a .safetensors/.pt file, an export or a "
                        "vitkd run directory")
    parser.add_argument("--output", required=True, help="store directory (continued when interrupted, reused when "
                        "complete)")
    parser.add_argument("--batch-size", type=_positive_int, help="images per forward and per durable chunk "
                        "(default: data.eval_batch_size, else data.batch_size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _json_dict(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{option}: {text!r} is not JSON ({error}); pass a dict, e.g. '{{\"embed_dim\": 96}}'"
                          ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: expected a JSON dict of keyword arguments, got {text!r}")
    return value


def _store_summary(result: EmbeddingStoreResult) -> str:
    """What a store job did, as the JSON the commands print."""
    return json.dumps({"store": str(result.path), "num_samples": result.num_samples, "dim": result.dim,
                       "written_now": result.written, "reused": result.reused, "seconds": round(result.seconds, 2)},
                      indent=2)


def run_embed_targets(args: argparse.Namespace) -> int:
    from vitkd.cache.embedding_job import embed_targets
    from vitkd.config import load_recipe

    model_kwargs = _json_dict(args.model_kwargs, "--model-kwargs") if args.model_kwargs is not None else None
    recipe = load_recipe(args.recipe, args.overrides)
    result = embed_targets(recipe, args.output, model=args.model, model_kwargs=model_kwargs, checkpoint=args.checkpoint,
                           teacher=args.teacher, batch_size=args.batch_size, progress=not args.no_progress)
    print(_store_summary(result))
    return 0


def add_import_embeddings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("matrix", help="(rows, dim) matrix: .npy, or .safetensors with one tensor (or one named "
                        "'embeddings')")
    parser.add_argument("--files", required=True, help="text file, one sample key per line: line i names the "
                        "sample of matrix row i (the dataset's sample keys; for folders the path relative to the "
                        "split folder, e.g. n01440764/x.JPEG)")
    parser.add_argument("recipe", help="training recipe whose training split the rows belong to")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted recipe overrides (data.root=...)")
    parser.add_argument("--output", required=True, help="store directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_import_embeddings(args: argparse.Namespace) -> int:
    from vitkd.cache.embedding_job import import_embeddings
    from vitkd.config import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    result = import_embeddings(recipe, args.matrix, args.files, args.output, progress=not args.no_progress)
    print(_store_summary(result))
    return 0
