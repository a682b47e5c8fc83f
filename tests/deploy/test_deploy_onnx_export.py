"""ONNX export round trips (ViT, distilled DeiT, TinyViT-style, CNN), metadata, and the export's bad input."""

import json
import sys

import onnx
import pytest
import torch
from torch import nn

from vitkd.bench.onnx_build import export_to_onnx
from vitkd.bench.onnx_runtime import OnnxRuntimeClassifier, create_session
from vitkd.deploy import export_model_to_onnx, failed_validation_path, load_source
from vitkd.deploy.onnx_export import ModelSource
from vitkd.errors import DeployError

VIT = "vit_tiny_patch16_224:img_size=32,patch_size=8,embed_dim=16,depth=1,num_heads=2,num_classes=10"
DEIT = "deit_tiny_distilled_patch16_224:img_size=32,patch_size=8,embed_dim=16,depth=1,num_heads=2,num_classes=10"
TINYVIT = ("tiny_vit_5m_224:embed_dims=[16,16,16,16],depths=[1,1,1,1],num_heads=[1,1,1,1],"
           "window_sizes=[4,4,2,1],num_classes=10")
CNN = "vitkd_small_cnn:num_classes=10"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`exported(spec)`: (source, ExportResult) of the spec exported once with a dynamic batch, cached per module."""
    results = {}

    def export(spec: str):
        if spec not in results:
            source = load_source(spec, img_size=32)
            path = tmp_path_factory.mktemp("onnx") / "model.onnx"
            results[spec] = source, export_model_to_onnx(source, path, dynamic_batch=True)
        return results[spec]

    return export


@pytest.mark.parametrize("spec", [VIT, DEIT, TINYVIT, CNN], ids=["vit", "deit_distilled", "tiny_vit", "cnn"])
def test_round_trip_matches_pytorch_on_random_and_digit_images(exported, spec):
    source, result = exported(spec)
    assert [comparison.inputs for comparison in result.comparisons] == ["random", "digits"]
    for comparison in result.comparisons:
        assert comparison.batch_size == 8
        assert comparison.relative_error < 1e-5 and comparison.max_abs_error < 1e-4
    assert result.path.is_file() and result.file_bytes == result.path.stat().st_size
    images = torch.rand(3, 3, 32, 32)  # a batch size the export never saw
    with torch.no_grad():
        expected = source.model.eval()(images)
    got = OnnxRuntimeClassifier(create_session(result.path, threads=1))(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_metadata_records_preprocessing_and_names(exported):
    _, result = exported(VIT)
    proto = onnx.load(str(result.path))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata["model_name"] == "vit_tiny_patch16_224"
    assert json.loads(metadata["model_kwargs"])["embed_dim"] == 16
    assert metadata["img_size"] == "32"
    assert json.loads(metadata["mean"]) == pytest.approx([0.5, 0.5, 0.5])  # timm's ViT config
    assert json.loads(metadata["std"]) == pytest.approx([0.5, 0.5, 0.5])
    assert float(metadata["crop_pct"]) == pytest.approx(0.9)
    assert json.loads(metadata["input_names"]) == ["input"] and json.loads(metadata["output_names"]) == ["logits"]
    assert [value.name for value in proto.graph.input] == ["input"]
    assert [value.name for value in proto.graph.output] == ["logits"]
    dimensions = proto.graph.input[0].type.tensor_type.shape.dim
    assert [dimensions[0].dim_param] + [dimension.dim_value for dimension in dimensions[1:]] == ["batch", 3, 32, 32]


def test_distilled_deit_exports_the_average_of_its_two_heads(exported):
    source, result = exported(DEIT)
    model = source.model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(images)  # (B, N, D): class token, distillation token, patches
        by_hand = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2  # (B, classes)
    got = OnnxRuntimeClassifier(create_session(result.path, threads=1))(images)
    torch.testing.assert_close(got, by_hand, rtol=1e-4, atol=1e-5)


class _DiffersWhenTraced(nn.Module):
    """Adds 1 to the logits only while the exporter traces it: an ONNX file that disagrees with PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(images)
        return logits + 1.0 if torch.jit.is_tracing() else logits


def test_output_mismatch_fails_and_keeps_the_file_under_a_failed_name(tmp_path):
    source = ModelSource(text="differs", model=_DiffersWhenTraced(), model_name="differs", model_kwargs={},
                         preprocessing={"img_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0})
    path = tmp_path / "differs.onnx"
    with pytest.raises(DeployError, match=r"differs from PyTorch's.*relative error.*failed-validation"):
        export_model_to_onnx(source, path)
    assert not path.exists()
    assert failed_validation_path(path).is_file()
    assert failed_validation_path(path).name == "differs.failed-validation.onnx"


@torch.library.custom_op("vitkd_test::mystery", mutates_args=())
def _mystery(images: torch.Tensor) -> torch.Tensor:
    return images * 2


class _Mystery(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _mystery(images)


class _NetWithMystery(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.odd = _Mystery()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.odd(self.conv(images)).mean((2, 3))


def test_unsupported_op_names_the_op_and_its_module(tmp_path):
    with pytest.raises(DeployError, match=r"op vitkd_test::mystery in module odd \(_Mystery\)"):
        export_to_onnx(_NetWithMystery(), (3, 8, 8), tmp_path / "odd.onnx")
    assert not (tmp_path / "odd.onnx").exists()


def test_op_missing_at_an_old_opset_names_the_attention_module(tmp_path):
    model = load_source(VIT, img_size=32).model
    with pytest.raises(DeployError, match=r"op aten::scaled_dot_product_attention in module blocks.0.attn "
                                          r"\(Attention\).*version 14"):
        export_to_onnx(model, (3, 32, 32), tmp_path / "vit.onnx", opset=11)


@pytest.mark.parametrize("opset", [6, 21])
def test_opset_the_exporter_cannot_write_is_refused(tmp_path, opset):
    with pytest.raises(DeployError, match=rf"--opset {opset}: .*operator sets 7 to 20"):
        export_to_onnx(nn.Conv2d(3, 4, 3), (3, 8, 8), tmp_path / "conv.onnx", opset=opset)


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_missing_deploy_extra_names_the_extra(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    with pytest.raises(DeployError, match=rf"'{package}'.*pip install -e '\.\[deploy\]'"):
        if package == "onnx":
            export_to_onnx(nn.Conv2d(3, 4, 3), (3, 8, 8), tmp_path / "conv.onnx")
        else:
            create_session(tmp_path / "conv.onnx")
