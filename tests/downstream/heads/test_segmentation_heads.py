import math
from collections import OrderedDict

import pytest
import torch

from vitkd.downstream.heads import SegmentationCrossEntropy, SemanticFPNHead, build_segmenter
from vitkd.errors import ConfigError

from tiny_heads_setup import tiny_backbone


def test_semantic_fpn_head_sums_levels_at_stride_four():
    head = SemanticFPNHead(8, ["0", "1", "2", "3"], [4, 8, 16, 32], num_classes=5, channels=8)
    assert [len(branch) for branch in head.branches] == [1, 1, 2, 3]  # log2(s / 4) upsampling stages, at least one
    features = OrderedDict((str(i), torch.randn(2, 8, 16 // 2 ** i, 12 // 2 ** i)) for i in range(4))
    assert head(features).shape == (2, 5, 16, 12)


@pytest.mark.parametrize("kind", ["plain", "hierarchical"])
def test_semantic_fpn_segmenter_forward_backward(kind):
    segmenter = build_segmenter(tiny_backbone(kind), num_classes=4, channels=8)
    images = torch.rand(2, 3, 64, 96)
    logits = segmenter(images)
    assert logits.shape == (2, 4, 64, 96)
    SegmentationCrossEntropy()(logits, torch.randint(0, 4, (2, 64, 96))).backward()
    assert next(segmenter.backbone.body.parameters()).grad is not None  # the gradient reaches the stem


def test_linear_head_on_tokens():
    segmenter = build_segmenter(tiny_backbone(pyramid=False), num_classes=3, head="linear")
    assert segmenter.head.classifier.in_channels == 32  # the ViT's width: the tokens themselves
    assert segmenter(torch.rand(1, 3, 48, 64)).shape == (1, 3, 48, 64)
    with pytest.raises(ConfigError, match=r"downstream\.head\.name: linear .*downstream\.backbone\.pyramid: false"):
        build_segmenter(tiny_backbone(), num_classes=3, head="linear")


def test_segmenter_normalises_with_the_student_statistics():
    segmenter = build_segmenter(tiny_backbone(pyramid=False), num_classes=2, head="linear",
                                image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)).eval()
    reference = segmenter.head(segmenter.backbone(torch.zeros(1, 3, 32, 32)))  # 0.5 normalises to 0
    logits = segmenter(torch.full((1, 3, 32, 32), 0.5))
    torch.testing.assert_close(logits[..., ::16, ::16], torch.nn.functional.interpolate(
        reference, size=(32, 32), mode="bilinear", align_corners=False)[..., ::16, ::16])


def test_cross_entropy_by_hand():
    # one image, 1x3 pixels, 2 classes; pixel 3 is ignored
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 0.0, -5.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2  # -log softmax at the true class, 2 pixels
    assert SegmentationCrossEntropy()(logits, target).item() == pytest.approx(expected)


def test_cross_entropy_with_nothing_labelled_is_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = SegmentationCrossEntropy()(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match="share batch and spatial sizes"):
        SegmentationCrossEntropy()(logits, torch.zeros(1, 3, 3, dtype=torch.long))


def test_cross_entropy_divides_by_a_given_normaliser_instead_of_its_own_count():
    """Two processes' shards of one batch with 2 and 1 labelled pixels: each divides its sum by the mean count, 1.5,
    so the average of the two losses (what DDP's gradient average sees) is the mean over all 3 labelled pixels;
    the average of the shards' own means is not."""
    loss = SegmentationCrossEntropy()
    logits_a, target_a = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 0.0, -5.0]]]]), torch.tensor([[[0, 1, 255]]])
    logits_b, target_b = torch.tensor([[[[0.0, 1.0]], [[3.0, 0.0]]]]), torch.tensor([[[1, 255]]])
    a1, a2, b1 = math.log(1 + math.exp(-2.0)), math.log(2.0), math.log(1 + math.exp(-3.0))
    assert loss.labelled_pixels(target_a).item() == 2.0 and loss.labelled_pixels(target_b).item() == 1.0
    normaliser = torch.tensor(1.5)  # (2 + 1) / 2 processes
    balanced = (loss(logits_a, target_a, normaliser) + loss(logits_b, target_b, normaliser)) / 2
    assert balanced.item() == pytest.approx((a1 + a2 + b1) / 3)
    own_means = (loss(logits_a, target_a) + loss(logits_b, target_b)) / 2
    assert own_means.item() == pytest.approx(((a1 + a2) / 2 + b1) / 2)
    assert abs(own_means.item() - (a1 + a2 + b1) / 3) > 0.05
