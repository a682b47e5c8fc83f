import timm
import torch

from tests.conftest import TINY_VIT_KWARGS
from vitkd.models.quantize.apply import quantize_model
from vitkd.models.quantize.binary import BinaryWeight
from vitkd.models.quantize.layers import QuantizedLinear, SplitBinaryLinear
from vitkd.models.quantize.ternary import TernaryWeight
from vitkd.models.quantize.weight_split import split_latent, split_layer, split_ternary_model


def test_split_halves_binarise_to_the_ternary_weight():
    torch.manual_seed(0)
    weight = torch.randn(16, 24)
    quantizer = TernaryWeight(group_size=8)
    first, second = split_latent(weight, quantizer)
    binary = BinaryWeight(group_size=8)
    torch.testing.assert_close(binary(first) + binary(second), quantizer(weight))


def test_split_of_a_hand_sized_row():
    weight = torch.tensor([[1.0, -0.2, 0.6, -2.2]])  # ternary: [1.6, 0, 0, -1.6] (see test_ternary)
    first, second = split_latent(weight, TernaryWeight())
    binary = BinaryWeight()
    torch.testing.assert_close(binary(first) + binary(second), torch.tensor([[1.6, 0.0, 0.0, -1.6]]))
    assert torch.equal(torch.sign(first[0, [0, 3]]), torch.sign(second[0, [0, 3]]))  # kept: same signs
    assert torch.equal(torch.sign(first[0, [1, 2]]), -torch.sign(second[0, [1, 2]]))  # zeroed: opposite signs


def test_split_layer_keeps_the_output_and_doubles_the_width():
    torch.manual_seed(1)
    layer = QuantizedLinear.from_linear(torch.nn.Linear(12, 5), TernaryWeight())
    split = split_layer(layer)
    assert isinstance(split, SplitBinaryLinear) and split.weight.shape == (5, 24)
    x = torch.randn(7, 12)
    torch.testing.assert_close(split(x), layer(x))


def test_split_model_keeps_the_output():
    torch.manual_seed(2)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TINY_VIT_KWARGS).eval()
    quantize_model(model, 2)
    images = torch.randn(2, 3, 16, 16)
    before = model(images)
    assert len(split_ternary_model(model)) == 8
    torch.testing.assert_close(model(images), before, atol=1e-5, rtol=1e-5)
