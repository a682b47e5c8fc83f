"""The `vitkd finetune` command module: task words, refusals before any work."""

import argparse

import pytest

from vitkd.errors import ConfigError
from vitkd.finetune import TASK_WORDS, add_arguments, evaluate_run, fine_tune


def test_arguments_take_overrides_and_task_words():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["seg", "downstream/digit_scenes_seg", "train.epochs=1", "--resume"])
    assert (args.action, args.overrides, args.resume) == ("seg", ["train.epochs=1"], True)
    assert TASK_WORDS == {"det": "detection", "inst": "instance_segmentation", "seg": "semantic_segmentation"}


def test_a_recipe_of_another_task_is_refused_with_the_right_command(tmp_path):
    recipe = tmp_path / "seg.yaml"
    recipe.write_text("name: seg\ntask: semantic_segmentation\nstudent: {name: vit_tiny_patch16_224}\n")
    with pytest.raises(ConfigError, match=r"task is 'semantic_segmentation', not 'detection'; run it with "
                                          r"`vitkd finetune seg "):
        fine_tune("det", str(recipe), [])


def test_eval_needs_a_fine_tuning_run(tmp_path):
    with pytest.raises(ConfigError, match="not a vitkd run directory"):
        evaluate_run(tmp_path, [])
    (tmp_path / "config.yaml").write_text("name: cls\nstudent: {name: vit_tiny_patch16_224}\n")
    with pytest.raises(ConfigError, match="is a 'classification' run; evaluate it with `vitkd eval"):
        evaluate_run(tmp_path, [])
