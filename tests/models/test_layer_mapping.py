import pytest
import torch

from vitkd.models.layer_mapping import (align_token_grid, map_layers_evenly, map_layers_uniformly, resolve_layer_indices,
                                         resolve_layer_pairs)


def test_resolve_layer_indices_keeps_order_and_resolves_negatives():
    assert resolve_layer_indices([0, 1, -1, -12], depth=12, who="student") == [0, 1, 11, 0]
    assert resolve_layer_indices([], depth=12, who="student") == []


@pytest.mark.parametrize("bad", [12, -13, 100])
def test_resolve_layer_indices_out_of_range_names_who_index_and_range(bad):
    with pytest.raises(ValueError) as info:
        resolve_layer_indices([0, bad], depth=12, who="teacher (deit_base)")
    message = str(info.value)
    assert "teacher (deit_base)" in message
    assert str(bad) in message
    assert "-12..11" in message


@pytest.mark.parametrize("bad", [1.0, "3", True])
def test_resolve_layer_indices_rejects_non_int(bad):
    with pytest.raises(ValueError, match="must be an int"):
        resolve_layer_indices([bad], depth=4, who="student")


def test_map_layers_evenly_12_to_24():
    # (i + 1) * 24 / 12 - 1 = 2i + 1
    assert map_layers_evenly(list(range(12)), 12, 24) == [2 * i + 1 for i in range(12)]
    assert map_layers_evenly([0, 5, -1], 12, 24) == [1, 11, 23]


def test_map_layers_evenly_rounds_half_up_and_is_identity_for_equal_depth():
    # student 4 -> teacher 6: (i + 1) * 1.5 = 1.5, 3, 4.5, 6 -> round half up 2, 3, 5, 6 -> minus one
    assert map_layers_evenly([0, 1, 2, 3], 4, 6) == [1, 2, 4, 5]
    assert map_layers_evenly([0, 3, 7], 8, 8) == [0, 3, 7]
    # deeper student than teacher: 12 -> 4, (i + 1) / 3 = 0.33, 0.67, ..., 4 -> 0, 1, ..., 4 -> minus one, but
    # never below teacher layer 0
    assert map_layers_evenly([0, 1, 11], 12, 4) == [0, 0, 3]


def test_map_layers_evenly_bad_student_layer():
    with pytest.raises(ValueError, match="student: layer index 12 is out of range for depth 12"):
        map_layers_evenly([12], 12, 24)


def test_resolve_layer_pairs():
    assert resolve_layer_pairs([(0, 0), (-1, -1), (5, 11)], 12, 24) == [(0, 0), (11, 23), (5, 11)]
    with pytest.raises(ValueError, match="teacher: layer index 24"):
        resolve_layer_pairs([(0, 24)], 12, 24)
    with pytest.raises(ValueError, match=r"must be \(student_layer, teacher_layer\)"):
        resolve_layer_pairs([(0, 1, 2)], 12, 24)


def test_align_token_grid_same_grid_is_identity():
    tokens = torch.randn(2, 16, 3)
    assert align_token_grid(tokens, (4, 4), (4, 4)) is tokens
    assert align_token_grid(tokens, (4, 4), (4, 4), mode="error") is tokens


def test_align_token_grid_bilinear_downsample_hand_computed():
    # 4x4 grid with value h * 4 + w; halving with align_corners=False samples at input coordinates 0.5 and 2.5,
    # i.e. the mean of each 2x2 block: [[mean(0,1,4,5), mean(2,3,6,7)], [mean(8,9,12,13), mean(10,11,14,15)]]
    tokens = torch.arange(16.0).reshape(1, 16, 1)
    out = align_token_grid(tokens, (4, 4), (2, 2))
    assert out.shape == (1, 4, 1)
    assert torch.allclose(out.flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]))


def test_align_token_grid_upsample_keeps_constants_per_channel():
    tokens = torch.tensor([1.0, -2.0]).expand(3, 4, 2)  # (B=3, N=2x2, D=2), each channel constant
    out = align_token_grid(tokens, (2, 2), (3, 5))
    assert out.shape == (3, 15, 2)
    assert torch.allclose(out[..., 0], torch.ones(3, 15)) and torch.allclose(out[..., 1], -2 * torch.ones(3, 15))


def test_align_token_grid_errors_name_both_grids_and_bad_counts():
    tokens = torch.randn(2, 16, 3)
    with pytest.raises(ValueError) as info:
        align_token_grid(tokens, (4, 4), (7, 7), mode="error")
    assert "(4, 4)" in str(info.value) and "(7, 7)" in str(info.value)
    with pytest.raises(ValueError, match=r"17 tokens do not fill the source grid \(4, 4\).*split_prefix"):
        align_token_grid(torch.randn(2, 17, 3), (4, 4), (2, 2))
    with pytest.raises(ValueError, match="mode must be"):
        align_token_grid(tokens, (4, 4), (2, 2), mode="nearest")


def test_uniform_layer_map():
    assert map_layers_uniformly([0, 1, 2, 3], 4, 12) == [2, 5, 8, 11]  # TinyBERT-4 under BERT-base: k = 3
    assert map_layers_uniformly([0, -1], 2, 4) == [1, 3]
    assert map_layers_uniformly(list(range(12)), 12, 12) == list(range(12))
    with pytest.raises(ValueError, match=r"but 4 / 3 is not whole; use teacher_layers: auto"):
        map_layers_uniformly([0], 3, 4)
