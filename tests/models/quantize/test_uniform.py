import pytest
import torch
from torchao.quantization.qat import IntxFakeQuantizeConfig
from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

from vitkd.models.quantize.uniform import UniformWeight, integer_range


def test_symmetric_8_bit_by_hand():
    weight = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    # scale = max |W| / ((127 - -128) / 2) = 2 / 127.5; q = round(W / scale) = [127.5 -> clamp 127, -63.75 -> -64,
    # 31.875 -> 32, 0]
    scale = 2.0 / 127.5
    expected = torch.tensor([[127.0, -64.0, 32.0, 0.0]]) * scale
    torch.testing.assert_close(UniformWeight(8)(weight), expected)


def test_symmetric_4_bit_by_hand():
    weight = torch.tensor([[1.5, -0.5, 0.1, -1.5]])
    # scale = 1.5 / 7.5 = 0.2; q = [7.5 -> 8 -> clamp 7, -2.5 -> -2 (half to even), 0.5 -> 0, -7.5 -> -8]
    expected = torch.tensor([[7.0, -2.0, 0.0, -8.0]]) * 0.2
    torch.testing.assert_close(UniformWeight(4)(weight), expected)
    assert integer_range(4) == (-8, 7)


@pytest.mark.parametrize("bits,dtype", [(4, torch.int4), (8, torch.int8)])
def test_matches_torchao_qat_fake_quantizer(bits, dtype):
    weight = torch.randn(8, 16)
    reference = IntxFakeQuantizer(IntxFakeQuantizeConfig(dtype, group_size=8, is_symmetric=True))
    torch.testing.assert_close(UniformWeight(bits, group_size=8)(weight), reference(weight))
