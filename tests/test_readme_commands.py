"""Every concrete `vitkd ...` command in the README's code blocks parses, names recipes that exist and load, and
the cheap ones run as written (the synopsis lines with RECIPE/MODEL placeholders are left out)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vitkd.cli import main, parse_command_line
from vitkd.config import load_recipe
from vitkd.shipped_recipes import find_recipe

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]{2,}\b|\[|\|")  # RECIPE, CACHE_DIR, [options], a|b


def readme_commands() -> list[str]:
    """The `vitkd` and `torchrun ... -m vitkd` lines of the README's bash blocks, continuations joined, comments cut."""
    commands, in_block, pending = [], False, ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block = line.strip() in ("```bash", "```sh")
            continue
        if not in_block:
            continue
        line = pending + line.split("  #")[0].split(" # ")[0].rstrip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        stripped = line.strip()
        if re.match(r"^(torchrun .*-m )?vitkd ", stripped) and not PLACEHOLDER.search(stripped):
            commands.append(stripped)
    return commands


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    return words[words.index("vitkd") + 1:] if "vitkd" in words else words[words.index("-m") + 2:]


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 10, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses_and_its_recipe_loads(command):
    _, args = parse_command_line(_argv(command))
    recipe_name = getattr(args, "recipe", None)
    if recipe_name and getattr(args, "action", None) != "eval":  # `finetune eval RUN_DIR` names a run, not a recipe
        recipe = load_recipe(find_recipe(recipe_name), list(getattr(args, "overrides", None) or []))
        assert recipe.name


def test_the_readme_bench_example_runs_as_written(tmp_path, monkeypatch, tiny_recipe, capsys):
    (command,) = [c for c in COMMANDS if c.startswith("vitkd bench runs/demo/vit_plain vitkd_small_cnn")]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = tiny_recipe(name="vit_plain")
    raw["train"].update(epochs=1, max_steps_per_epoch=2, output_dir="runs/demo")
    assert main(["train", *_write(tmp_path, raw)]) == 0  # stands in for the demo's vit_plain run
    capsys.readouterr()
    assert main(_argv(command)) == 0
    report = capsys.readouterr().out
    assert "runs/demo/vit_plain" in report and "vitkd_small_cnn" in report


def _write(directory: Path, raw: dict) -> list[str]:
    import yaml

    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return [str(path)]
