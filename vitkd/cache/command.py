"""Command-line front ends of the logit cache: `vitkd cache-logits` and `vitkd cache-info`.

    vitkd cache-logits RECIPE [key=value ...] [epochs=E] [topk=K] [--output DIR]
    vitkd cache-info DIR [--verify]

`epochs=E` / `topk=K` (or `--epochs` / `--topk`) set the job; every other `key=value` is a dotted recipe override,
as for `vitkd train`. The output directory defaults to the recipe's `teacher.cache`.
"""

from __future__ import annotations

import argparse
import json
from typing import Optional

from vitkd.errors import ConfigError

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
