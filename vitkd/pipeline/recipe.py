"""Pipeline recipes: a list of stages, each a training recipe whose student starts from the previous stage's result.

    name: xtc_single_stage            # the pipeline (its report goes to <output_dir>/<name>/)
    recipe: ../base_xtc.yaml          # the recipe every stage starts from (relative to this file)
    output_dir: runs/pipelines        # every stage trains in <output_dir>/<stage name>/
    stages:
      - name: single_fp32
        overrides:                    # a nested mapping merged over the stage's recipe (as `base:` files merge)
          student: {init: {layers: every_other}}
      - name: single_binary
        recipe: other.yaml            # optional: this stage's own recipe file instead of `recipe`
        start_from: export            # export (default): the previous stage's exported student;
                                      # latent: its best training checkpoint (a quantised student's latent float
                                      # weights, the start BinaryBERT's weight splitting wants); none: no chaining
        teacher_from: teacher_vit6    # optional: an earlier stage whose export is this stage's teacher.checkpoint
        overrides: {student: {quantize: {weight_bits: 1}}}

A chained stage (start_from export / latent) must not set `student.init`: its student starts from the previous
weights. `latent` loads the previous run's `checkpoints/best.pt` into the stage's (plain) student, so it needs the
same layers: not after a Theseus stage (its checkpoint holds the teacher modules too) or a split stage (2x wide).
Stage names are run directory names: two pipelines that share a stage of the same name and recipe share its run
(the digits pipelines share their teacher that way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from vitkd.config import Recipe, build_dataclass, deep_merge, load_raw_recipe, load_recipe, read_yaml_mapping
from vitkd.errors import ConfigError
from vitkd.shipped_recipes import find_recipe


@dataclass
class StageConfig:
    """One stage: a recipe (file and/or overrides), where its student starts, where its teacher comes from."""

    name: str
    recipe: Optional[str] = None
    overrides: dict = field(default_factory=dict)
    start_from: Literal["export", "latent", "none"] = "export"
    teacher_from: Optional[str] = None


@dataclass
class PipelineConfig:
    """A pipeline file (see the module docstring); `path` is where it was read from."""

    name: str
    stages: list[StageConfig]
    recipe: Optional[str] = None
    output_dir: str = "runs/pipelines"
    path: str = ""


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and check a pipeline file. Raises ConfigError naming the file and key."""
    path = Path(path)
    data = read_yaml_mapping(path, "pipeline file")
    data.setdefault("name", path.name.removesuffix(".yaml").removesuffix(".pipeline"))
    if "path" in data:
        raise ConfigError(f"{path}: 'path' is not a pipeline key")
    try:
        pipeline = build_dataclass(PipelineConfig, {**data, "path": str(path)})
    except ConfigError as error:
        raise ConfigError(f"pipeline file {path}: {error}") from None
    _check_stages(pipeline)
    return pipeline


def _check_stages(pipeline: PipelineConfig) -> None:
    where = f"pipeline file {pipeline.path}"
    if not pipeline.stages:
        raise ConfigError(f"{where}: stages is empty; list at least one stage (name, recipe and/or overrides)")
    seen: list[str] = []
    for index, stage in enumerate(pipeline.stages):
        if not stage.name or "/" in stage.name or stage.name in (".", ".."):
            raise ConfigError(f"{where}: stages.{index}.name {stage.name!r} must be a plain run directory name")
        if stage.name in seen:
            raise ConfigError(f"{where}: stages.{index}.name {stage.name!r} is used twice; stage names must differ")
        if stage.recipe is None and pipeline.recipe is None:
            raise ConfigError(f"{where}: stages.{index} ({stage.name}) has no recipe; set the pipeline's recipe or "
                              f"the stage's")
        if stage.teacher_from is not None and stage.teacher_from not in seen:
            raise ConfigError(f"{where}: stages.{index}.teacher_from {stage.teacher_from!r} is not an earlier stage; "
                              f"earlier stages: {', '.join(seen) or 'none'}")
        seen.append(stage.name)


def _recipe_path(pipeline: PipelineConfig, recipe: str) -> Path:
    """A stage recipe: relative to the pipeline file when that file exists there, else a path or shipped name."""
    beside = Path(pipeline.path).parent / recipe
    return beside if beside.is_file() else find_recipe(recipe)


def stage_run_dir(pipeline: PipelineConfig, index: int, output_dir: Optional[str] = None) -> Path:
    return Path(output_dir or pipeline.output_dir) / pipeline.stages[index].name


def stage_recipe(pipeline: PipelineConfig, index: int, output_dir: Optional[str] = None,
                 overrides: Sequence[str] = ()) -> Recipe:
    """The training recipe of stage `index`: its recipe file, its overrides, its run directory under `output_dir`,
    its student's start (the previous stage's export or latent checkpoint) and teacher, then the command line's
    `key=value` overrides. Checked by the schema (not yet resolved by the task)."""
    stage = pipeline.stages[index]
    output_dir = output_dir or pipeline.output_dir
    try:
        raw = deep_merge(load_raw_recipe(_recipe_path(pipeline, stage.recipe or pipeline.recipe)), stage.overrides)
    except FileNotFoundError as error:
        raise ConfigError(f"pipeline file {pipeline.path}: stages.{index} ({stage.name}): {error}") from None
    raw["name"] = stage.name
    raw.setdefault("train", {})["output_dir"] = str(output_dir)
    if index > 0 and stage.start_from != "none":  # nothing comes before the first stage
        student = raw.setdefault("student", {})
        if student.get("init") is not None:
            raise ConfigError(f"pipeline file {pipeline.path}: stages.{index} ({stage.name}) starts from the previous "
                              f"stage's weights (start_from: {stage.start_from}) but sets student.init; remove it or "
                              f"set start_from: none")
        previous = stage_run_dir(pipeline, index - 1, output_dir)
        student["checkpoint"] = str(previous / "export" if stage.start_from == "export"
                                    else previous / "checkpoints" / "best.pt")
    if stage.teacher_from is not None:
        teacher = raw.get("teacher")
        if not isinstance(teacher, dict) or not teacher.get("name"):
            raise ConfigError(f"pipeline file {pipeline.path}: stages.{index} ({stage.name}) sets teacher_from but its "
                              f"recipe names no teacher (teacher.name)")
        teacher["checkpoint"] = str(Path(output_dir) / stage.teacher_from / "export")
    return load_recipe(raw=raw, overrides=overrides)
