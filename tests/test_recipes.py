"""Every shipped recipe is valid: known keys, known models, known losses (ImageNet ones need data only to train)."""

from pathlib import Path

import pytest

from vitkd.config import load_recipe

RECIPES = sorted(str(path.relative_to(Path(__file__).parents[1]))
                 for path in (Path(__file__).parents[1] / "recipes").rglob("*.yaml"))


def test_recipes_exist():
    assert any(name.startswith("recipes/demo/") for name in RECIPES)
    assert any(name.startswith("recipes/imagenet/") for name in RECIPES)


@pytest.mark.parametrize("recipe_path", [name for name in RECIPES if not name.endswith("base.yaml")])
def test_recipe_validates(recipe_path):
    recipe = load_recipe(Path(__file__).parents[1] / recipe_path)
    assert recipe.name and recipe.losses
    assert all(term.weight is not None for term in recipe.losses)
