"""Augmentations of (image, label map) pairs shared by the trainings that read labelled datasets.

Label maps are HW uint8: 0 background, k the data's k-th class, IGNORE (255) unlabelled.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import SynthsegError
from ..formats import IGNORE
from ..readers import SegmentationData

PASTED_BAND = IGNORE - 1  # copy_paste's mark for a pasted image's ignore band, told apart from the padding's ignore


def scale_crop_flip(image: Image.Image, labels: np.ndarray, rng: np.random.Generator, crop: int, scale_range: list[float]):
    """MaskFormer's semantic augmentation: the short side scaled to `crop * U(scale_range)`, a random `crop` crop
    (padded with ignore, right and below, where the image is smaller), a random horizontal flip
    -> (crop x crop x 3 uint8, crop x crop uint8)."""
    short = crop * rng.uniform(*scale_range)
    factor = short / min(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    pixels = np.asarray(image.resize(size, Image.BILINEAR))
    target = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
    height, width = max(crop, size[1]), max(crop, size[0])
    padded = np.zeros((height, width, 3), dtype=np.uint8)
    padded_labels = np.full((height, width), IGNORE, dtype=np.uint8)
    padded[: size[1], : size[0]], padded_labels[: size[1], : size[0]] = pixels, target
    top, left = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
    pixels, target = padded[top : top + crop, left : left + crop], padded_labels[top : top + crop, left : left + crop]
    if rng.random() < 0.5:
        pixels, target = pixels[:, ::-1], target[:, ::-1]
    return np.ascontiguousarray(pixels), np.ascontiguousarray(target)


def copy_paste(pixels: np.ndarray, target: np.ndarray, other: tuple[Image.Image, np.ndarray], rng: np.random.Generator,
               crop: int, scale_range: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simple Copy-Paste (Ghiasi et al. 2021) on a semantic crop, so that images of one or two objects also teach
    scenes of more: `other` (image, labels), through scale_crop_flip on its own draws, has its object pixels
    (every class, and the ignore band that labels their edges) pasted over the (crop x crop) `pixels`, `target`.
    -> (pixels, target, the pasted pixels' HW bool mask).

    Its background is not pasted, nor its padding: before augmenting, its band takes a class index that no dataset
    uses (PASTED_BAND; check_pastable), which tells the two apart, and is ignore again once pasted.
    """
    image, labels = other
    pasted_pixels, pasted = scale_crop_flip(image, np.where(labels == IGNORE, PASTED_BAND, labels), rng, crop, scale_range)
    where = (pasted != 0) & (pasted != IGNORE)
    pixels = np.where(where[..., None], pasted_pixels, pixels)
    target = np.where(where, np.where(pasted == PASTED_BAND, IGNORE, pasted), target)
    return pixels, target, where


def check_pastable(data: SegmentationData, share: float) -> None:
    """copy_paste marks a pasted band with PASTED_BAND, so the data's class indices must stay below it."""
    if share and len(data.class_names) >= PASTED_BAND:
        raise SynthsegError(f"{data.name}: copy_paste marks pasted edges with label {PASTED_BAND}; "
                            f"{len(data.class_names)} classes reach it")
