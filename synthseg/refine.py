"""Mask refinement on the image's own colours: PAMR (pixel-adaptive mask refinement, Araslanov & Roth, "Single-Stage
Semantic Segmentation from Image Labels", CVPR 2020), as weakly supervised and open-vocabulary segmenters use it.

A grounding module's masks come from features at the latent's stride (8 for SD, 4 for the world) and are upsampled,
so their edges are blurred over several pixels, where most of its wrong pixels lie (on world scenes, 55% of them
within a pixel of a true edge and 70% within two). PAMR moves each mask value towards those of the neighbours that
look like its pixel: each pixel's 8 neighbours at each of the dilations get weights from a softmax over their colour
distance, scaled by the neighbourhood's spread, and each iteration replaces the masks by the weighted mean of the
neighbours'. The weights sum to 1, so probabilities stay probabilities, and class weights summing to 1 still do.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import SynthsegError

PAMR_ITERATIONS = 20  # GroundingSegmenter's default: on world scenes 500-699, 59.4 -> 65.9 / 66.5 / 67.0 / 67.0 harmonic
                      # mIoU at 5 / 10 / 20 / 40 (RESULTS.md, "Ad hoc trials (world)")
PAMR_DILATIONS = (1, 2, 4, 8)  # at a 64 px short side (the world's scenes), scaled with it (`dilations_for`)


def check_iterations(iterations: int) -> None:
    """Refuse a negative number of refinement iterations (`refine`)."""
    if iterations < 0:
        raise SynthsegError(f"refine must be 0 or more PAMR iterations, got {iterations}")


def dilations_for(size: tuple[int, int]) -> tuple[int, ...]:
    """PAMR_DILATIONS for an image of (H, W) `size`: scaled by its short side over 64, so that the neighbourhoods
    cover the same share of it (x8 at 512 px, where SD's masks are blurred over its stride of 8)."""
    scale = max(1, round(min(size) / 64))
    return tuple(d * scale for d in PAMR_DILATIONS)


def _offsets(dilations: tuple[int, ...], centre: bool = False) -> list[tuple[int, int]]:
    ring = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    return [(0, 0), *ring] if centre else ring


def _shifts(x: torch.Tensor, offsets: list[tuple[int, int]], pad: int):
    """(C, H, W) x at each offset in turn (views of one padded copy, edges replicated)."""
    height, width = x.shape[-2:]
    padded = F.pad(x[None], [pad] * 4, mode="replicate")[0]
    return (padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width] for dy, dx in offsets)


def _shifted(x: torch.Tensor, offsets: list[tuple[int, int]], pad: int) -> torch.Tensor:
    """(C, H, W) -> (C, P, H, W): x at each offset, edges replicated."""
    return torch.stack(list(_shifts(x, offsets, pad)), 1)


def pamr_weights(image: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """Affinities of an image (3, H, W): (P, H, W) weights over each pixel's P = 8 x len(dilations) neighbours,
    summing to 1. The colour distances are divided by the neighbourhood's spread, so the image's scale does not
    matter."""
    pad = max(dilations)
    neighbours = _shifted(image, _offsets(dilations), pad)
    spread = _shifted(image, _offsets(dilations, centre=True), pad).std(1, keepdim=True)
    distance = ((neighbours - image[:, None]).abs() / (1e-8 + 0.1 * spread)).mean(0)
    return torch.softmax(-distance, 0)


def pamr(image: torch.Tensor, masks: torch.Tensor, iterations: int = PAMR_ITERATIONS, dilations: tuple[int, ...] | None = None) -> torch.Tensor:
    """`masks` (K, H, W) refined by `iterations` PAMR steps on the colours of `image` (3, H, W), with `dilations`
    (default `dilations_for` the image's size)."""
    check_iterations(iterations)
    dilations = dilations or dilations_for(tuple(image.shape[-2:]))
    weights = pamr_weights(image.float(), dilations)
    offsets, pad = _offsets(dilations), max(dilations)
    for _ in range(iterations):  # one neighbour at a time: (K, P, H, W) at once would be 0.7 GB for 20 classes at 512^2
        masks = sum(shifted * w for shifted, w in zip(_shifts(masks, offsets, pad), weights))
    return masks


def refine_masks(image: Image.Image, masks: torch.Tensor, iterations: int = PAMR_ITERATIONS) -> torch.Tensor:
    """`masks` (K, H, W) of a PIL `image` of that size refined by `pamr` on its colours."""
    return pamr(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1), masks, iterations)
