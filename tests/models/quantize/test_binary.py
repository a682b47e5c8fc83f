import torch

from vitkd.models.quantize.binary import BinaryWeight
from vitkd.models.quantize.straight_through import straight_through


def test_binary_weights_are_sign_times_row_mean_magnitude():
    weight = torch.tensor([[0.5, -1.0, 0.25, 0.0],
                           [2.0, -2.0, 1.0, -3.0]])
    # row 0: mean |W| = (0.5 + 1 + 0.25 + 0) / 4 = 0.4375; sign(0) is +1; row 1: (2 + 2 + 1 + 3) / 4 = 2
    expected = torch.tensor([[0.4375, -0.4375, 0.4375, 0.4375],
                             [2.0, -2.0, 2.0, -2.0]])
    torch.testing.assert_close(BinaryWeight()(weight), expected)


def test_binary_groups_have_their_own_scales():
    weight = torch.tensor([[1.0, -3.0, 0.5, 0.5]])
    # groups of 2: (1, -3) -> mean 2; (0.5, 0.5) -> mean 0.5
    torch.testing.assert_close(BinaryWeight(group_size=2)(weight), torch.tensor([[2.0, -2.0, 0.5, 0.5]]))


def test_binary_codes_and_scales_round_trip():
    weight = torch.randn(6, 8)
    quantizer = BinaryWeight(group_size=4)
    codes, scales = quantizer.encode(weight)
    assert codes.shape == (6, 2, 4) and scales.shape == (6, 2) and set(codes.unique().tolist()) <= {0, 1}
    torch.testing.assert_close(quantizer.decode(codes, scales, weight.shape), quantizer(weight))


def test_straight_through_gradient_is_the_identity():
    weight = torch.randn(4, 6, requires_grad=True)
    upstream = torch.randn(4, 6)
    out = straight_through(weight, BinaryWeight()(weight))
    torch.testing.assert_close(out.detach(), BinaryWeight()(weight))
    (out * upstream).sum().backward()
    torch.testing.assert_close(weight.grad, upstream)
