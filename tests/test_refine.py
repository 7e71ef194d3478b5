import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthseg import SynthsegError
from synthseg.refine import PAMR_DILATIONS, dilations_for, pamr, pamr_weights


def scene(size=32, seed=0):
    """A noisy two-colour image (a square on a background) and its exact mask."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(size, size)
    truth[7:22, 11:27] = 1
    image = torch.stack([0.2 + 0.6 * truth, 0.7 - 0.4 * truth, torch.full_like(truth, 0.5)]) + 0.02 * torch.randn(3, size, size, generator=g)
    return image, truth


def blurred(truth, stride=8):
    """What a module at a latent stride gives: the mask pooled to the stride and upsampled bilinearly."""
    coarse = F.avg_pool2d(truth[None, None], stride)
    return F.interpolate(coarse, size=truth.shape, mode="bilinear", align_corners=False)[0, 0]


def iou(mask, truth):
    pred = mask > 0.5
    return float((pred & (truth > 0)).sum() / (pred | (truth > 0)).sum())


def test_pamr_moves_a_blurred_mask_to_the_colour_edge_and_keeps_probabilities():
    image, truth = scene()
    soft = blurred(truth)
    background = 1 - soft
    refined = pamr(image, torch.stack([soft, background]), 20)
    assert iou(refined[0], truth) > iou(soft, truth) + 0.05 and iou(refined[0], truth) > 0.97
    torch.testing.assert_close(refined.sum(0), torch.ones_like(soft))  # a distribution stays one
    assert refined.min() >= 0 and refined.max() <= 1
    assert torch.equal(pamr(image, soft[None], 0)[0], soft)
    with pytest.raises(SynthsegError, match="refine must be 0 or more PAMR iterations, got -1"):
        pamr(image, soft[None], -1)


def test_pamr_weights_sum_to_one_follow_colour_and_ignore_the_image_scale():
    image, truth = scene()
    weights = pamr_weights(image, PAMR_DILATIONS)
    assert weights.shape == (8 * len(PAMR_DILATIONS), 32, 32)
    torch.testing.assert_close(weights.sum(0), torch.ones(32, 32))
    # at the square's left edge (row 16, column 11), the inner neighbour at distance 1 weighs more than the outer one
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    assert weights[offsets.index((0, 1)), 16, 11] > 5 * weights[offsets.index((0, -1)), 16, 11]
    torch.testing.assert_close(pamr_weights(2 * image - 1, PAMR_DILATIONS), weights, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size, scale", [((64, 64), 1), ((32, 48), 1), ((512, 768), 8), ((200, 300), 3)])
def test_dilations_scale_with_the_short_side(size, scale):
    assert dilations_for(size) == tuple(d * scale for d in PAMR_DILATIONS)


def test_refine_in_segment_sharpens_the_tiny_modules_masks_and_is_refused_below_zero(pipe):
    """GroundingSegmenter refines by default: its probabilities are PAMR's of the unrefined ones."""
    from PIL import Image

    from synthseg import GroundingConfig, GroundingModule
    from synthseg.segment import GroundingSegmenter

    torch.manual_seed(0)
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                          token_patch=2)).eval()
    image, _ = scene(64)
    picture = Image.fromarray((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    plain = GroundingSegmenter(pipe, module, ["dog", "cat"], refine=0).segment(picture)
    refined = GroundingSegmenter(pipe, module, ["dog", "cat"]).segment(picture)
    expected = pamr(torch.from_numpy(np.array(picture)).permute(2, 0, 1), plain.probs, 20)
    torch.testing.assert_close(refined.probs, expected)
    assert not torch.equal(refined.probs, plain.probs)
    with pytest.raises(SynthsegError, match="refine must be 0 or more"):
        GroundingSegmenter(pipe, module, ["dog"], refine=-1)
