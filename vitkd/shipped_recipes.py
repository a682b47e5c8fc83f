"""The recipes shipped with vitkd, found by name: `vitkd train demo/vit_plain` trains `recipes/demo/vit_plain.yaml`.

The repository's top-level `recipes/` folder is their one source. The package reaches it through `vitkd/recipes`, a
symbolic link to `../recipes`: an editable install (`pip install -e .`) reads the files in place, and building a wheel
(`pip install .`, `pip wheel .`) copies them into the package as data (`[options.package_data]` in setup.cfg), so
`vitkd demo` and recipes by name work from any install. Their `base: base.yaml` includes stay relative to the file.

A recipe argument is a path when that file exists (an existing path always wins); otherwise it is a shipped name:
`demo/vit_plain`, `demo/vit_plain.yaml` or `recipes/demo/vit_plain.yaml` (the path the README writes, which then also
works outside a checkout). `base.yaml` files only hold shared settings for `base:` includes and are not listed.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

RECIPES_DIR = Path(__file__).parent / "recipes"
SUFFIX = ".yaml"
BASE_FILE = "base.yaml"


def recipes_dir() -> Path:
    """The folder of the shipped recipes (`demo/`, `imagenet/`)."""
    if not RECIPES_DIR.is_dir():
        raise FileNotFoundError(f"vitkd's shipped recipes are missing: {RECIPES_DIR} is not a folder; reinstall "
                                f"vitkd (in a source checkout it is a link to the top-level recipes/ folder)")
    return RECIPES_DIR


def shipped_recipe_names() -> list[str]:
    """Every shipped recipe by name, e.g. `demo/vit_plain`, `imagenet/vitkd_deit_tiny` (sorted; no base files)."""
    root = recipes_dir()
    return sorted(path.relative_to(root).with_suffix("").as_posix()
                  for path in root.rglob(f"*{SUFFIX}") if path.name != BASE_FILE)


def shipped_recipe(name: str) -> Path:
    """The file of a shipped recipe given by name (`demo/vit_plain`, with or without `.yaml` or `recipes/`)."""
    parts = PurePosixPath(name.replace(os.sep, "/")).parts
    if parts[:1] == ("recipes",):
        parts = parts[1:]
    key = "/".join(parts)
    if key.endswith(SUFFIX):
        key = key[: -len(SUFFIX)]
    names = shipped_recipe_names()
    if key not in names:
        raise FileNotFoundError(f"recipe {name}: no such file, and no shipped recipe of that name; shipped recipes: "
                                f"{', '.join(names)}")
    return recipes_dir() / f"{key}{SUFFIX}"


def find_recipe(recipe: str | os.PathLike) -> Path:
    """A recipe argument as a file: the path itself when that file exists, else the shipped recipe of that name.

    Raises `FileNotFoundError` naming the argument and listing the shipped recipe names when it is neither.
    """
    path = Path(recipe)
    if path.is_file():
        return path
    return shipped_recipe(str(recipe))
