import torch

from vitkd.models.quantize.ternary import TernaryWeight


def test_ternary_weights_follow_twn_threshold_and_kept_mean():
    weight = torch.tensor([[1.0, -0.2, 0.6, -2.2],
                           [0.1, 0.1, -0.1, 0.1]])
    # row 0: mean |W| = 4.0 / 4 = 1.0, delta = 0.7; kept: 1.0, -2.2 -> alpha = 1.6; 0.6 and -0.2 become 0
    # row 1: mean 0.1, delta 0.07; all kept -> alpha 0.1
    expected = torch.tensor([[1.6, 0.0, 0.0, -1.6],
                             [0.1, 0.1, -0.1, 0.1]])
    torch.testing.assert_close(TernaryWeight()(weight), expected)


def test_ternary_all_zero_row_stays_zero():
    assert TernaryWeight()(torch.zeros(2, 4)).abs().sum() == 0


def test_ternary_codes_use_three_values_and_decode():
    weight = torch.randn(5, 12)
    quantizer = TernaryWeight(group_size=6)
    codes, scales = quantizer.encode(weight)
    assert set(codes.unique().tolist()) <= {0, 1, 2} and scales.shape == (5, 2)
    torch.testing.assert_close(quantizer.decode(codes, scales, weight.shape), quantizer(weight))
