"""The student export loads with plain timm (no vitkd installed) and gives the trained model's outputs."""

import json
import subprocess
import sys

import torch

from vitkd.config import load_recipe
from vitkd.training import train
from vitkd.models.factory import load_model_from_path

LOAD_WITH_TIMM_ONLY = """
import json, sys
sys.modules["vitkd"] = None  # any import of vitkd now fails
import timm, torch
info = json.load(open(sys.argv[1] + "/student.json"))
model = timm.create_model(info["model"], pretrained=False, checkpoint_path=sys.argv[1] + "/student.safetensors",
                          **info["kwargs"]).eval()
torch.manual_seed(0)
images = torch.randn(4, 3, info["img_size"], info["img_size"])
with torch.no_grad():
    torch.save(model(images), sys.argv[2])
"""


def test_export_round_trip_through_timm_without_vitkd(tiny_recipe, tmp_path):
    recipe = load_recipe(raw=tiny_recipe(train=dict(tiny_recipe()["train"], epochs=1, max_steps_per_epoch=3)))
    train(recipe)
    export_dir = recipe.run_dir / "export"
    info = json.loads((export_dir / "student.json").read_text())
    assert info["model"] == "vit_tiny_patch16_224" and info["kwargs"]["num_classes"] == 10
    logits_path = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", LOAD_WITH_TIMM_ONLY, str(export_dir), str(logits_path)], check=True,
                   cwd=tmp_path)
    timm_logits = torch.load(logits_path, weights_only=True)

    model, _ = load_model_from_path(recipe.run_dir)
    torch.manual_seed(0)
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        vitkd_logits = model.eval()(images)
    best = torch.load(recipe.run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    exported = {k: v for k, v in model.state_dict().items()}
    assert all(torch.equal(exported[key], best[key]) for key in best)
    assert torch.allclose(timm_logits, vitkd_logits, atol=1e-6)
