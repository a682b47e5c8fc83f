"""Multi-stage compression pipelines (`vitkd pipeline`): stages of training recipes chained by their students'
weights, each reused when finished and resumed when interrupted, reported in one table."""

from vitkd.pipeline.recipe import PipelineConfig, StageConfig, load_pipeline, stage_recipe
from vitkd.pipeline.runner import run_pipeline
from vitkd.pipeline.stages import run_stage, stage_state

__all__ = ["PipelineConfig", "StageConfig", "load_pipeline", "run_pipeline", "run_stage", "stage_recipe",
           "stage_state"]
