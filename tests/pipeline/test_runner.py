"""A two-stage pipeline resumes after its second stage was interrupted. Stage 1: a student made from a teacher's
layers, trained with a feature term; stage 2: its 1-bit version with 8-bit activations, whose plain and packed exports
give the same outputs."""

import json

import pytest
import torch
import yaml

from tests.conftest import TINY_VIT_KWARGS, tiny_recipe_dict
from vitkd.engine.trainer import Trainer
from vitkd.errors import TrainingStopped
from vitkd.models.factory import load_model_from_path
from vitkd.models.quantize import PACKED_FILE, add_activation_quantizers, load_packed, quantized_layers
from vitkd.pipeline.recipe import load_pipeline
from vitkd.pipeline.runner import run_pipeline


def test_two_stage_pipeline_resumes_an_interrupted_second_stage(tmp_path, monkeypatch):
    base = tiny_recipe_dict(tmp_path, teacher={"name": "vit_tiny_patch16_224",
                                               "kwargs": {**TINY_VIT_KWARGS, "depth": 4}},
                            losses=[{"name": "ce"}, {"name": "kd", "temperature": 4.0}])
    base.pop("name")
    base["train"].update(epochs=1, max_steps_per_epoch=2)
    base["data"]["eval_batch_size"] = 360  # the whole validation split in one batch
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"name": "two", "recipe": "base.yaml", "output_dir": str(tmp_path / "out"),
                                    "stages": [{"name": "float", "overrides": {
                                                   "student": {"init": {"layers": "every_other"}},
                                                   "losses": [{"name": "ce"}, {"name": "kd"},
                                                              {"name": "hidden", "teacher_layers": "uniform"}]}},
                                               {"name": "binary", "overrides": {
                                                   "student": {"quantize": {"weight_bits": 1, "activation_bits": 8}},
                                                   "train": {"epochs": 2}}}]}))
    pipeline = load_pipeline(path)
    original = Trainer._run_epoch

    def interrupted(self, epoch, throughputs):  # what a kill after the binary stage's first epoch leaves
        evaluation = original(self, epoch, throughputs)
        if self.recipe.name == "binary" and epoch == 0:
            raise TrainingStopped("stopped by SIGTERM after epoch 1", 15, str(self.last_path))
        return evaluation

    monkeypatch.setattr(Trainer, "_run_epoch", interrupted)
    with pytest.raises(TrainingStopped):
        run_pipeline(pipeline)
    out = tmp_path / "out"
    assert (out / "binary" / "checkpoints" / "last.pt").is_file() and not (out / "binary" / "summary.json").exists()
    first_summary = (out / "float" / "summary.json").read_text()
    monkeypatch.setattr(Trainer, "_run_epoch", original)

    rows = run_pipeline(pipeline)
    assert [row["action"] for row in rows] == ["reused", "resumed"]
    assert (out / "float" / "summary.json").read_text() == first_summary  # the finished stage was not retrained
    epochs = [json.loads(line)["epoch"] for line in (out / "binary" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    assert [row["bits"] for row in rows] == ["32", "1"]
    assert rows[1]["stored_bytes"] < rows[0]["stored_bytes"] and rows[1]["flops"] == rows[0]["flops"]
    assert "| binary | vit_tiny_patch16_224 (2 blocks) | 1 |" in (out / "two" / "report.md").read_text()

    export = out / "binary" / "export"
    plain, info = load_model_from_path(export)  # plain timm: the quantised weights as floats
    assert info["quantize"]["weight_bits"] == 1 and not quantized_layers(plain)
    rows = plain.blocks[0].mlp.fc1.weight.abs()
    assert torch.allclose(rows, rows[:, :1].expand_as(rows))  # 1 bit: one magnitude per output row
    packed, packed_info = load_packed(export / PACKED_FILE)
    assert packed_info["activation_bits"] == 8 and packed_info["layers"]["blocks.0.attn.qkv"]["bits"] == 1
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(packed.eval()(images), plain.eval()(images), atol=1e-5, rtol=1e-5)
    add_activation_quantizers(packed, packed_info)
    assert not torch.allclose(packed(images), plain(images))  # the 8-bit input rounding is back
