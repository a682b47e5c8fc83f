"""Every shipped pipeline (recipes/*/pipelines/*.yaml) loads, and each of its stages is a valid recipe."""

from pathlib import Path

import pytest

from vitkd.pipeline import load_pipeline, stage_recipe
from vitkd.tasks import resolve_recipe

REPO = Path(__file__).parents[2]
PIPELINES = sorted(str(path.relative_to(REPO)) for path in (REPO / "recipes").glob("*/pipelines/*.yaml"))


def test_the_reference_pipelines_are_shipped():
    assert {Path(path).name for path in PIPELINES} >= {"xtc_single_stage.yaml", "xtc_multi_stage.yaml"}
    assert any(path.startswith("recipes/demo/") for path in PIPELINES)
    assert any(path.startswith("recipes/imagenet/") for path in PIPELINES)


@pytest.mark.parametrize("path", PIPELINES)
def test_pipeline_stages_validate(path):
    pipeline = load_pipeline(REPO / path)
    recipes = [resolve_recipe(stage_recipe(pipeline, index)) for index in range(len(pipeline.stages))]
    bits = [recipe.student.quantize.weight_bits for recipe in recipes if recipe.student.quantize]
    assert bits and bits[-1] == 1  # every shipped pipeline ends with a 1-bit student
