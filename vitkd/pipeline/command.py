"""`vitkd pipeline PIPELINE.yaml [key=value ...]`: run a multi-stage compression pipeline (see `vitkd.pipeline`)."""

from __future__ import annotations

import argparse

from vitkd.pipeline.recipe import load_pipeline
from vitkd.pipeline.runner import run_pipeline
from vitkd.shipped_recipes import find_recipe

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="a pipeline YAML file (stages: ...), or a shipped one's name, e.g. "
                                         "demo/pipelines/xtc_single_stage")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted-key overrides applied to every stage's recipe (e.g. train.max_steps_per_epoch=5)")
    parser.add_argument("--output-dir", help="where the stages train (default: the pipeline's output_dir)")
    parser.add_argument("--fresh", action="store_true", help="retrain every stage (by default finished stages of the "
                        "same recipe and starting weights are reused and an interrupted one resumed)")


def run(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(find_recipe(args.pipeline))
    run_pipeline(pipeline, output_dir=args.output_dir, fresh=args.fresh, overrides=args.overrides)
    return 0
