"""Which stage runs are reused, resumed or refused, decided from the run directory alone (no training here)."""

import json

import pytest
import yaml

from tests.conftest import tiny_recipe_dict
from vitkd.config import dump_recipe, load_recipe
from vitkd.errors import ConfigError
from vitkd.pipeline.stages import INPUTS_FILE, stage_inputs, stage_state
from vitkd.tasks import resolve_recipe


def _recipe(tmp_path, **train):
    raw = tiny_recipe_dict(tmp_path)
    raw["train"].update(train)
    return resolve_recipe(load_recipe(raw=raw))


def _finished_run(recipe, saved: dict) -> None:
    recipe.run_dir.mkdir(parents=True)
    (recipe.run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    (recipe.run_dir / "summary.json").write_text(json.dumps({"epochs": recipe.train.epochs, "top1": 50.0}))
    (recipe.run_dir / INPUTS_FILE).write_text(json.dumps(stage_inputs(recipe)))


def test_a_run_saved_before_keys_were_added_is_still_reused(tmp_path):
    recipe = _recipe(tmp_path)
    saved = yaml.safe_load(dump_recipe(recipe))
    del saved["student"]["init"], saved["student"]["quantize"]  # what a run of an older vitkd wrote
    _finished_run(recipe, saved)
    assert stage_state(recipe) == "finished"


def test_states_new_interrupted_and_refusals(tmp_path):
    recipe = _recipe(tmp_path)
    assert stage_state(recipe) == "new"
    _finished_run(recipe, yaml.safe_load(dump_recipe(recipe)))
    (recipe.run_dir / "summary.json").unlink()
    (recipe.run_dir / "checkpoints").mkdir()
    (recipe.run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    assert stage_state(recipe) == "interrupted"
    with pytest.raises(ConfigError, match=r"holds a run of a different recipe"):
        stage_state(_recipe(tmp_path, epochs=5))
    (recipe.run_dir / INPUTS_FILE).write_text(json.dumps({"student": "other", "teacher": None}))
    with pytest.raises(ConfigError, match=r"trained from other starting weights"):
        stage_state(recipe)
