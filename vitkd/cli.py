"""The `vitkd` command: train, eval, demo, cache-logits, cache-info, embed-targets, import-embeddings, bench, export,
pipeline, finetune.

A recipe argument is a YAML file, or the name of a recipe shipped with the package (`vitkd train demo/vit_plain`;
see `vitkd.shipped_recipes`). Errors in user input (recipes, paths, checkpoints; `vitkd.errors.is_user_error`) print
one clear line and exit with status 2; nothing is lost. Set VITKD_DEBUG=1 to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from vitkd import __version__
from vitkd.errors import ConfigError, TrainingStopped, is_user_error, one_line_message
from vitkd.shipped_recipes import find_recipe

RECIPE_HELP = ("a YAML recipe file, or the name of a shipped recipe (e.g. demo/vit_plain, imagenet/vitkd_deit_tiny); "
               "an existing file wins")


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a student from a YAML recipe",
        description="Train a student from a YAML recipe. Overrides use dotted keys, e.g. "
                    "`vitkd train demo/deit_hard train.epochs=5 data.batch_size=64 losses.1.mode=soft`. A recipe is "
                    "a YAML file or the name of a shipped recipe (listed when a name is not found).")
    parser.add_argument("recipe", help=RECIPE_HELP)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-key overrides of the recipe")
    parser.add_argument("--resume", action="store_true", help="continue the run in <output_dir>/<name> exactly where "
                        "its last checkpoint stopped (model, optimizer, scheduler, EMA, RNG, epoch)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from vitkd.config import dump_recipe, load_recipe

    recipe = load_recipe(find_recipe(args.recipe), args.overrides)
    if args.print_config:
        from vitkd.tasks import resolve_recipe

        print(dump_recipe(resolve_recipe(recipe)), end="")
        return 0
    from vitkd.training import train

    summary = train(recipe, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a checkpoint, export or run directory on a dataset (top-1, top-5, loss)")
    parser.add_argument("weights", help="a vitkd run directory, export directory, .safetensors or .pt file")
    parser.add_argument("--model", help="timm model name (needed only when the weights do not record it)")
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict of timm kwargs used with --model")
    parser.add_argument("--dataset", default="digits", choices=["digits", "folder"])
    parser.add_argument("--root", help="dataset root for --dataset folder (root/<split>/<class>/*)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--img-size", type=int, help="input size (default: the size recorded in the export)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from vitkd.data.loader import build_eval_loader
    from vitkd.engine.distributed import init_distributed
    from vitkd.tasks.classification.evaluate import check_head_matches_classes, evaluate
    from vitkd.models.factory import build_model, load_model_from_path

    downstream_task = _downstream_task_of(args.weights)
    if downstream_task:  # a detection / segmentation run: its recipe names its data and metrics
        from vitkd.finetune import evaluate_run

        print(json.dumps(evaluate_run(Path(args.weights), [], device=args.device), indent=2))
        return 0
    if args.model:
        try:
            model_kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--model-kwargs {args.model_kwargs!r} is not JSON ({error}); e.g. "
                              f"--model-kwargs '{{\"img_size\": 32}}'") from None
        if not isinstance(model_kwargs, dict):
            raise ConfigError(f"--model-kwargs must be a JSON object of timm kwargs, got {args.model_kwargs!r}")
        model = build_model(args.model, model_kwargs, args.weights)
        info: dict = {}
    else:
        model, info = load_model_from_path(args.weights)
    img_size = args.img_size or info.get("img_size")
    if not img_size:
        raise ValueError("--img-size is required: the weights do not record their input size")
    mean = tuple(info.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(info.get("std", (0.229, 0.224, 0.225)))
    context = init_distributed(args.device, option="--device")  # under torchrun each process takes a shard
    # the model's own class names (recorded by vitkd exports) label the split, so its labels match the head
    loader = build_eval_loader(args.dataset, args.root, img_size, args.batch_size, mean, std, split=args.split,
                               crop_pct=info.get("crop_pct", 0.875), classes=info.get("classes"),
                               interpolation=info.get("interpolation", "bicubic"),
                               rank=context.rank, world_size=context.world_size)
    check_head_matches_classes(model, loader.dataset, args.weights)
    metrics = evaluate(model.to(context.device), loader, context.device, context=context, progress=True)
    if context.is_main:
        print(json.dumps(metrics, indent=2))
    return 0


def _downstream_task_of(weights: str) -> Optional[str]:
    """The task a fine-tuning run directory's recipe names (detection, ...), else None (a classification run,
    an export or a weights file)."""
    from vitkd.config import load_raw_recipe
    from vitkd.finetune import TASK_WORDS

    config = Path(weights) / "config.yaml"
    if not config.is_file():
        return None
    task = load_raw_recipe(config).get("task")
    return task if task in TASK_WORDS.values() else None


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the offline demos: `vitkd demo` (CNN teacher, plain ViT and distilled students on the bundled "
                     "digits) and `vitkd demo downstream` (those students fine-tuned for detection and segmentation)")
    parser.add_argument("which", nargs="?", choices=["classification", "downstream"], default="classification",
                        help="classification (default): distillation on the digits, runs in <output-dir>/demo/; "
                             "downstream: the plain and the best distilled student (trained there when missing) "
                             "fine-tuned on the digit scenes, runs in <output-dir>/demo_downstream/")
    parser.add_argument("--output-dir", default="runs", help="runs go to <output-dir>/demo/ (and demo_downstream/)")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every demo recipe's epochs (e.g. 0.1 for a quick smoke run)")
    parser.add_argument("--finetune-epochs-scale", type=float, default=None,
                        help="downstream only: multiply the fine-tunes' epochs alone (the classification runs stay "
                             "those of `vitkd demo`, reused)")
    parser.add_argument("--fresh", action="store_true", help="retrain every row of this demo (by default finished "
                        "rows of the same recipe are reused and interrupted ones resumed; downstream: retrains the "
                        "fine-tunes, not the classification runs)")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    if args.which == "downstream":
        from vitkd.downstream_demo import run_downstream_demo

        scale = {} if args.finetune_epochs_scale is None else {"finetune_epochs_scale": args.finetune_epochs_scale}
        run_downstream_demo(output_dir=args.output_dir, epochs_scale=args.epochs_scale, fresh=args.fresh, **scale)
        return 0
    if args.finetune_epochs_scale is not None:
        raise ConfigError("--finetune-epochs-scale applies to `vitkd demo downstream` only (the classification demo "
                          "has no fine-tunes); use --epochs-scale")
    from vitkd.demo import run_demo

    run_demo(output_dir=args.output_dir, epochs_scale=args.epochs_scale, fresh=args.fresh)
    return 0


def _recipe_by_name(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`handler` with `args.recipe` first resolved to a file: the path itself, or a shipped recipe's name."""
    def run(args: argparse.Namespace) -> int:
        args.recipe = str(find_recipe(args.recipe))
        return handler(args)

    return run


def _add_cache_commands(subparsers: argparse._SubParsersAction) -> None:
    from vitkd.cache import command as cache_command

    parser = subparsers.add_parser(
        "cache-logits", help="run the frozen teacher once over the augmented training stream and store its top-K",
        description="Cache the recipe's teacher: `vitkd cache-logits RECIPE [key=value ...] [epochs=E] [topk=K]` "
                    "(RECIPE: a file or a shipped recipe's name, e.g. demo/cached_kd). Writes into teacher.cache (or "
                    "--output); resumes at the first incomplete epoch. Train from it with `vitkd train RECIPE` "
                    "(teacher.cache set): the teacher is then never built.")
    cache_command.add_cache_logits_arguments(parser)
    parser.set_defaults(handler=_recipe_by_name(cache_command.run_cache_logits))
    parser = subparsers.add_parser("cache-info", help="print a logit cache's manifest, size and integrity")
    cache_command.add_cache_info_arguments(parser)
    parser.set_defaults(handler=cache_command.run_cache_info)

    parser = subparsers.add_parser(
        "embed-targets", help="store a model's pooled feature of every training sample (per-sample targets)",
        description="Write a per-sample embedding store: `vitkd embed-targets RECIPE [key=value ...] (--model NAME "
                    "| --teacher) --output DIR` runs the model over the recipe's training split with the evaluation "
                    "transform, in sample-id order, and stores forward_head(forward_features(x), pre_logits=True) "
                    "as float16 rows. Resumes where an interrupted run stopped; reuses a finished store. Train "
                    "against it with the `embedding` loss (store: DIR).")
    cache_command.add_embed_targets_arguments(parser)
    parser.set_defaults(handler=_recipe_by_name(cache_command.run_embed_targets))
    parser = subparsers.add_parser(
        "import-embeddings", help="store a user's per-sample embedding matrix, reordered to the dataset's samples",
        description="Build a per-sample embedding store from a matrix: `vitkd import-embeddings MATRIX --files "
                    "LIST.txt RECIPE [key=value ...] --output DIR`; row i of MATRIX (.npy or .safetensors) belongs "
                    "to the sample named on line i of LIST.txt (the dataset's sample keys).")
    cache_command.add_import_embeddings_arguments(parser)
    parser.set_defaults(handler=_recipe_by_name(cache_command.run_import_embeddings))


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    from vitkd.bench import command as bench_command

    parser = subparsers.add_parser("bench", help="profile students: params, FLOPs, latency, throughput, memory, "
                                                 "accuracy")
    bench_command.add_arguments(parser)
    parser.set_defaults(handler=bench_command.run)


def _add_pipeline(subparsers: argparse._SubParsersAction) -> None:
    from vitkd.pipeline import command as pipeline_command

    parser = subparsers.add_parser(
        "pipeline", help="run a multi-stage compression pipeline (teacher-layer init, KD, 2-bit, split, 1-bit ...)",
        description="Run the stages of a pipeline file in order, each student starting from the previous stage's "
                    "weights; a finished stage is reused, an interrupted one resumed; prints one table (stage, "
                    "student, bits, stored size, FLOPs, top-1, wall time).")
    pipeline_command.add_arguments(parser)
    parser.set_defaults(handler=pipeline_command.run)


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    from vitkd.deploy import export_command

    parser = subparsers.add_parser("export", help="export a student as safetensors, or as ONNX checked against "
                                                  "PyTorch in ONNX Runtime")
    export_command.add_arguments(parser)
    parser.set_defaults(handler=export_command.run)


def _add_finetune(subparsers: argparse._SubParsersAction) -> None:
    from vitkd import finetune

    parser = subparsers.add_parser(
        "finetune", help="fine-tune a student as a detection / segmentation backbone (det, inst, seg), or evaluate "
                         "such a run (eval)",
        description=finetune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_arguments(parser)
    parser.set_defaults(handler=finetune.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitkd", description="Knowledge distillation of vision transformers.")
    parser.add_argument("--version", action="version", version=f"vitkd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_demo(subparsers)
    _add_cache_commands(subparsers)
    _add_bench(subparsers)
    _add_export(subparsers)
    _add_pipeline(subparsers)
    _add_finetune(subparsers)
    return parser


def parse_command_line(argv: Optional[list[str]] = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """(parser, arguments) of a `vitkd ...` command line; exits with status 2 and the usage on a malformed one.
    Overrides typed after an option (`train r.yaml --resume train.epochs=5`) still belong to the recipe."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes_overrides = isinstance(getattr(args, "overrides", None), list)
        if takes_overrides and all("=" in word and not word.startswith("-") for word in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return parser, args


def main(argv: Optional[list[str]] = None) -> int:
    parser, args = parse_command_line(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except TrainingStopped as stopped:
        print(f"vitkd {args.command}: {stopped}", file=sys.stderr)
        return 128 + stopped.signal_number
    except KeyboardInterrupt:
        print("vitkd: interrupted; finished epochs are saved, continue with --resume", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - only user errors are turned into one line, the rest re-raised
        if not is_user_error(error) or os.environ.get("VITKD_DEBUG"):
            raise
        print(f"vitkd {args.command}: error: {one_line_message(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
