"""Every shipped recipe is valid: known keys, known models, known losses (ImageNet ones need data only to train).

Shipped recipes are also found by name (`vitkd train demo/vit_plain`), from any working directory and any install;
`tests/test_packaging.py` checks the same from a built wheel.
"""

from pathlib import Path

import pytest

from vitkd.config import load_recipe
from vitkd.shipped_recipes import find_recipe, recipes_dir, shipped_recipe, shipped_recipe_names
from vitkd.tasks import resolve_recipe

REPO = Path(__file__).parents[1]
RECIPES = sorted(str(path.relative_to(REPO)) for path in (REPO / "recipes").rglob("*.yaml"))
NAMES = sorted(name[len("recipes/"):-len(".yaml")] for name in RECIPES if not name.endswith("base.yaml"))
#: Training recipes; files under a `pipelines/` folder list stages for `vitkd pipeline` (tests/pipeline checks them).
TRAINING_RECIPES = [name for name in RECIPES if not name.endswith("base.yaml") and "/pipelines/" not in name]


def test_recipes_exist():
    assert any(name.startswith("recipes/demo/") for name in RECIPES)
    assert any(name.startswith("recipes/imagenet/") for name in RECIPES)


@pytest.mark.parametrize("recipe_path", TRAINING_RECIPES)
def test_recipe_validates(recipe_path):
    recipe = resolve_recipe(load_recipe(REPO / recipe_path))
    assert recipe.name
    if recipe.task == "classification":  # downstream tasks train their heads' own losses, not loss terms
        assert recipe.losses and all(term.weight is not None for term in recipe.losses)
    else:
        assert recipe.downstream is not None


def test_the_package_ships_the_top_level_recipes():
    # One source: vitkd/recipes is a link to the top-level recipes/, not a copy (what an editable install reads).
    assert (REPO / "vitkd" / "recipes").is_symlink()
    assert recipes_dir().resolve() == (REPO / "recipes").resolve()
    assert shipped_recipe_names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_shipped_recipe_loads_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the name alone must find the file (and its base.yaml)
    for spelling in (name, f"{name}.yaml", f"recipes/{name}.yaml"):
        assert find_recipe(spelling) == recipes_dir() / f"{name}.yaml"
    if "/pipelines/" not in name:
        assert load_recipe(find_recipe(name)) == load_recipe(REPO / "recipes" / f"{name}.yaml")


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "vit_plain.yaml").write_text("name: mine\nstudent: {name: vit_tiny_patch16_224}\n")
    assert find_recipe("demo/vit_plain.yaml") == Path("demo/vit_plain.yaml")
    assert load_recipe(find_recipe("demo/vit_plain.yaml")).name == "mine"
    assert find_recipe("demo/vit_plain") == recipes_dir() / "demo" / "vit_plain.yaml"  # no such file here


@pytest.mark.parametrize("argument", ["demo/no_such_recipe", "no_such_recipe.yaml", "demo/base", "demo"])
def test_an_unknown_name_lists_the_shipped_recipes(argument, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as raised:
        find_recipe(argument)
    message = str(raised.value)
    assert argument in message and all(name in message for name in NAMES)
    with pytest.raises(FileNotFoundError):
        shipped_recipe(argument)
