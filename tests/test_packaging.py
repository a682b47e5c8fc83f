"""vitkd works when installed, not only from its checkout: the shipped recipes come with the package.

The editable install (`pip install -e .`, what `make install` does) reads `recipes/` in place through the
`vitkd/recipes` link; a wheel (`pip install .`, `pip install dist/vitkd-*.whl`) carries them as package data. The
wheel check builds the sdist and then the wheel from it (what `python -m build` does), installs the wheel with
`pip install --no-deps --target`, and runs it with this interpreter (torch and the other dependencies come from its
environment) from a directory outside the checkout, so nothing of the source tree can be imported.
"""

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(path.relative_to(REPO / "recipes").as_posix() for path in (REPO / "recipes").rglob("*.yaml"))
NAMES = sorted(name[:-len(".yaml")] for name in SHIPPED if not name.endswith("base.yaml"))


def _run(command, cwd, pythonpath=None, check=True):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_editable_install_reads_the_checkout_recipes(tmp_path):
    where = _run([sys.executable, "-c", "import json, vitkd, vitkd.shipped_recipes as s; print(json.dumps("
                  "[vitkd.__file__, str(s.recipes_dir().resolve()), s.shipped_recipe_names()]))"],
                 cwd=tmp_path, check=False)
    if where.returncode != 0 or not Path(json.loads(where.stdout)[0]).resolve().is_relative_to(REPO):
        pytest.skip(f"this interpreter has no editable install of {REPO} (`pip install -e .`)")
    _, recipes, names = json.loads(where.stdout)
    assert Path(recipes) == (REPO / "recipes").resolve() and names == NAMES


@pytest.mark.slow
def test_a_wheel_install_ships_the_recipes_and_runs_them_by_name(tmp_path):
    # sdist, then the wheel from the unpacked sdist: no build/ left over in the checkout can leak into the wheel.
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path)!r})"],
         cwd=REPO)
    (sdist,) = tmp_path.glob("vitkd-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (source,) = (tmp_path / "unpacked").iterdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheels",
          source], cwd=tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("vitkd-*.whl")
    in_wheel = sorted(name[len("vitkd/recipes/"):] for name in zipfile.ZipFile(wheel).namelist()
                      if name.startswith("vitkd/recipes/"))
    assert in_wheel == SHIPPED

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", site, wheel], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"  # the working directory: no recipes/, no vitkd/
    elsewhere.mkdir()
    check = f"""
import contextlib, io, json, sys
from pathlib import Path
import vitkd, vitkd.cli, vitkd.demo, vitkd.shipped_recipes as shipped
checkout = Path({str(REPO)!r})
assert Path(vitkd.__file__).is_relative_to(Path({str(site)!r})), vitkd.__file__
assert not any(entry and Path(entry).resolve() == checkout for entry in sys.path), sys.path
rows = [vitkd.demo.demo_recipe(row.recipe, Path("runs/demo"), 0.1) for row in vitkd.demo.DEMO_ROWS]
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    shown = vitkd.cli.main(["train", "imagenet/vitkd_deit_tiny.yaml", "--print-config"])
    unknown = vitkd.cli.main(["train", "demo/no_such_recipe"])
print(json.dumps({{"recipes": str(shipped.recipes_dir()), "names": shipped.shipped_recipe_names(),
                  "demo_dir": str(vitkd.demo.demo_recipes_dir()), "rows": [row.name for row in rows],
                  "shown": shown, "config": out.getvalue(), "unknown": unknown, "error": err.getvalue()}}))
"""
    found = json.loads(_run([sys.executable, "-c", check], cwd=elsewhere, pythonpath=site).stdout)
    assert Path(found["recipes"]) == site / "vitkd" / "recipes" and found["names"] == NAMES
    assert Path(found["demo_dir"]) == site / "vitkd" / "recipes" / "demo"
    assert found["rows"] == ["teacher_cnn", "vit_plain", "deit_hard", "logit_kd", "cached_kd", "vitkd", "manifold"]
    assert found["shown"] == 0 and yaml.safe_load(found["config"])["name"] == "vitkd_deit_tiny"
    assert found["unknown"] == 2 and all(name in found["error"] for name in NAMES)

    # The installed console script, as a user runs it: a shipped recipe by name, its `base: base.yaml` included.
    shown = _run([site / "bin" / "vitkd", "train", "demo/vit_plain", "train.epochs=2", "--print-config"],
                 cwd=elsewhere, pythonpath=site)
    config = yaml.safe_load(shown.stdout)
    assert config["name"] == "vit_plain" and config["train"]["epochs"] == 2
    assert config["student"]["kwargs"]["embed_dim"] == 96
    assert not (elsewhere / "runs").exists()
