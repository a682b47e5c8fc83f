"""`vitkd export` end to end: ONNX from an export directory (default path, printed errors), safetensors from a spec,
and the exit status 2 of bad input."""

import onnx

from vitkd.cli import main
from vitkd.deploy.export_command import default_output
from vitkd.engine.checkpoint import export_student
from vitkd.models.factory import build_model, load_model_from_path

KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "num_classes": 10}
SPEC = "vit_tiny_patch16_224:" + ",".join(f"{key}={value}" for key, value in KWARGS.items())


def test_onnx_from_an_export_directory_lands_beside_it_with_the_recorded_preprocessing(tmp_path, capsys):
    export_dir = tmp_path / "run" / "export"
    export_student(build_model("vit_tiny_patch16_224", KWARGS), export_dir, "vit_tiny_patch16_224", KWARGS,
                   extra_info={"img_size": 32, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "crop_pct": 1.0,
                               "classes": [str(digit) for digit in range(10)]})
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "random inputs (batch 8): max abs error" in printed and "digits inputs (batch 8)" in printed
    path = export_dir / "student.onnx"
    metadata = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert metadata["mean"] == "[0.1, 0.2, 0.3]" and metadata["std"] == "[0.4, 0.5, 0.6]"
    assert metadata["crop_pct"] == "1.0" and metadata["classes"].startswith('["0", "1"')


def test_safetensors_from_a_spec_is_a_loadable_vitkd_export(tmp_path, capsys):
    output = tmp_path / "exported"
    assert main(["export", SPEC, "--format", "safetensors", "--output", str(output)]) == 0
    model, info = load_model_from_path(output)
    assert info["model"] == "vit_tiny_patch16_224" and info["kwargs"] == KWARGS and info["img_size"] == 32
    assert model.embed_dim == 16


def test_default_outputs():
    assert str(default_output("deit_tiny_patch16_224", "deit_tiny_patch16_224", onnx=True)) == \
        "deit_tiny_patch16_224.onnx"
    assert str(default_output("x", "resnet18", onnx=False)) == "resnet18_export"


def test_bad_opset_exits_with_status_2_and_one_line(tmp_path, capsys):
    assert main(["export", SPEC, "--opset", "30", "--output", str(tmp_path / "m.onnx")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("vitkd export: error: --opset 30") and "\n" not in error
    assert not (tmp_path / "m.onnx").exists()
