import pytest
import yaml

from tests.conftest import tiny_recipe_dict
from vitkd.errors import ConfigError
from vitkd.pipeline.recipe import load_pipeline, stage_recipe


def _write(tmp_path, stages, **extra):
    base = tiny_recipe_dict(tmp_path)
    base.pop("name")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "recipe": "base.yaml", "output_dir": str(tmp_path / "out"),
                                    "stages": stages, **extra}))
    return path


def test_stages_chain_their_students_and_teachers(tmp_path):
    pipeline = load_pipeline(_write(tmp_path, [
        {"name": "first", "overrides": {"train": {"epochs": 3}}},
        {"name": "second", "overrides": {"student": {"quantize": {"weight_bits": 2}}}},
        {"name": "third", "start_from": "latent", "teacher_from": "first",
         "overrides": {"teacher": {"name": "vit_tiny_patch16_224"}}},
    ]))
    first, second, third = (stage_recipe(pipeline, i) for i in range(3))
    out = tmp_path / "out"
    assert first.name == "first" and first.train.epochs == 3 and first.student.checkpoint is None
    assert second.run_dir == out / "second" and second.train.epochs == 2  # the base recipe's epochs
    assert second.student.checkpoint == str(out / "first" / "export") and second.student.quantize.weight_bits == 2
    assert third.student.checkpoint == str(out / "second" / "checkpoints" / "best.pt")
    assert third.teacher.checkpoint == str(out / "first" / "export")
    assert stage_recipe(pipeline, 1, str(tmp_path / "elsewhere"), ["train.epochs=7"]).train.epochs == 7


@pytest.mark.parametrize("stages,message", [
    ([], r"stages is empty"),
    ([{"name": "a"}, {"name": "a"}], r"stages.1.name 'a' is used twice"),
    ([{"name": "a", "teacher_from": "b"}], r"teacher_from 'b' is not an earlier stage"),
    ([{"name": "a", "start_from": "weights"}], r"stages.0.start_from: 'weights' is not a valid choice"),
    ([{"name": "a/b"}], r"must be a plain run directory name"),
])
def test_bad_pipelines_are_refused(tmp_path, stages, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_write(tmp_path, stages))


def test_chained_stage_with_init_is_refused(tmp_path):
    pipeline = load_pipeline(_write(tmp_path, [{"name": "a"}, {"name": "b", "overrides": {
        "student": {"init": {"layers": "first"}}}}]))
    with pytest.raises(ConfigError, match=r"stages.1 \(b\) starts from the previous stage's weights .* sets "
                                          r"student.init"):
        stage_recipe(pipeline, 1)
