"""Recipe validation (schema in vitkd.config, names by the task): every bad input fails before any work, naming the
key path and the valid choices."""

import pytest
import yaml

from vitkd.config import load_recipe as load_schema_checked
from vitkd.tasks import resolve_recipe


def load_recipe(*args, **kwargs):
    """What the CLI and the engine do: the schema check (`vitkd.config`), then the task's resolution."""
    return resolve_recipe(load_schema_checked(*args, **kwargs))
from vitkd.errors import ConfigError


def test_valid_recipe_resolves_deit_paper_weights(tiny_recipe):
    raw = tiny_recipe(student={"name": "deit_tiny_distilled_patch16_224", "kwargs": {}},
                      teacher={"name": "vitkd_small_cnn"},
                      losses=[{"name": "ce"}, {"name": "deit", "mode": "hard"}])
    recipe = load_recipe(raw=raw)
    assert [(t.name, t.weight) for t in recipe.losses] == [("ce", 0.5), ("deit", 0.5)]
    raw["losses"] = [{"name": "ce"}, {"name": "deit", "mode": "soft"}]
    recipe = load_recipe(raw=raw)
    assert [(t.name, t.weight) for t in recipe.losses] == [("ce", pytest.approx(0.9)), ("deit", 0.1)]
    assert recipe.losses[1].params == {"mode": "soft"}


def _set(section, key, value):
    return lambda raw: raw[section].__setitem__(key, value)


@pytest.mark.parametrize("change, message", [
    (_set("data", "batchsize", 3), r"data\.batchsize: unknown key \(did you mean 'batch_size'\?\); valid keys:"),
    (_set("data", "batch_size", "many"), r"data\.batch_size: expected an integer, got str 'many'"),
    (lambda raw: raw["student"].pop("name"), r"student\.name is required"),
    (_set("student", "name", "deit_tiny_patch16_22"),
     r"student\.name: unknown model 'deit_tiny_patch16_22'.*deit_tiny_patch16_224"),
    (_set("data", "on_corrupt", "ignore"),
     r"data\.on_corrupt: 'ignore' is not a valid choice; valid choices: 'fail', 'skip'"),
    (_set("train", "log_every", 0), r"train\.log_every must be > 0, got 0"),
    (lambda raw: raw.__setitem__("task", "detect"), r"task: unknown task 'detect' \(did you mean 'detection'\?\); valid tasks: classification, detection, "
     r"instance_segmentation, semantic_segmentation"),
], ids=["unknown key", "wrong type", "missing value", "unknown model", "invalid choice", "log_every", "unknown task"])
def test_bad_recipe_values_name_the_key_and_what_is_valid(tiny_recipe, change, message):
    raw = tiny_recipe()
    change(raw)
    with pytest.raises(ConfigError, match=message):
        load_recipe(raw=raw)


def test_unknown_loss_and_loss_parameter(tiny_recipe):
    with pytest.raises(ConfigError, match=r"losses\.0\.name: unknown loss 'kdd' \(did you mean 'kd'\?\); valid losses"):
        load_recipe(raw=tiny_recipe(losses=[{"name": "kdd"}]))
    with pytest.raises(ConfigError, match=r"losses\.0\.temp: unknown parameter for loss 'kd'; valid parameters: "
                                          r"temperature, head"):
        load_recipe(raw=tiny_recipe(losses=[{"name": "kd", "temp": 2}]))
    with pytest.raises(ConfigError, match=r"losses\.1\.mode: 'medium' is not valid"):
        load_recipe(raw=tiny_recipe(losses=[{"name": "ce"}, {"name": "deit", "mode": "medium"}]))


def test_overrides_with_dotted_keys_and_list_indices(tiny_recipe):
    raw = tiny_recipe(losses=[{"name": "ce"}, {"name": "kd", "temperature": 2.0}])
    recipe = load_recipe(raw=raw, overrides=["data.batch_size=8", "losses.1.temperature=3", "losses.1.weight=0.3",
                                             "student.kwargs.depth=1", "data.scale=[0.5, 1.0]"])
    assert recipe.data.batch_size == 8
    assert recipe.losses[1].params["temperature"] == 3 and recipe.losses[1].weight == 0.3
    assert recipe.student.kwargs["depth"] == 1
    assert recipe.data.scale == (0.5, 1.0)
    with pytest.raises(ConfigError, match=r"parameter\(s\) \['temperature'\] given both"):
        load_recipe(raw=raw, overrides=["losses.1.params.temperature=3"])
    with pytest.raises(ConfigError, match=r"index 5 out of range; the list has 2 items"):
        load_recipe(raw=raw, overrides=["losses.5.weight=1"])
    with pytest.raises(ConfigError, match=r"not of the form key=value"):
        load_recipe(raw=raw, overrides=["data.batch_size"])


def test_recipe_file_with_base(tmp_path):
    (tmp_path / "base.yaml").write_text("student:\n  name: vit_tiny_patch16_224\n  kwargs: {img_size: 16, patch_size: 4}\n"
                                        "data:\n  img_size: 16\n  batch_size: 4\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ndata:\n  batch_size: 8\n")
    recipe = load_recipe(tmp_path / "child.yaml")
    assert recipe.name == "child"
    assert recipe.data.batch_size == 8 and recipe.data.img_size == 16
    assert recipe.student.kwargs == {"img_size": 16, "patch_size": 4}


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe file .*nope.yaml does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_folder_dataset_needs_root(tiny_recipe):
    raw = tiny_recipe()
    raw["data"]["dataset"] = "folder"
    with pytest.raises(ConfigError, match=r"data\.root is required"):
        load_recipe(raw=raw)


def test_off_and_on_stay_strings_in_files_and_overrides(tmp_path, tiny_recipe):
    # YAML 1.1 would read `off` as False; recipes use YAML 1.2 booleans (only true/false).
    recipe = load_recipe(raw=tiny_recipe(), overrides=["train.amp=off", "train.ema=true", "optim.lr=1e-3"])
    assert recipe.train.amp == "off" and recipe.train.ema is True and recipe.optim.lr == 0.001
    path = tmp_path / "r.yaml"
    raw = tiny_recipe()
    raw["train"]["amp"] = "off"
    path.write_text(yaml.safe_dump(raw).replace("amp: 'off'", "amp: off"))
    assert "amp: off" in path.read_text()
    assert load_recipe(path).train.amp == "off"
