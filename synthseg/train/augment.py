"""Augmentations of (image, label map) pairs shared by the trainings that read labelled datasets.

Label maps are HW uint8: 0 background, k the data's k-th class, IGNORE (255) unlabelled.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..formats import IGNORE


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


def place(image: Image.Image, planes: np.ndarray, rng: np.random.Generator, shape: tuple[int, int],
          scale_range: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """`image` and its (N, h, w) uint8 `planes` (a label map, or instance masks) scaled (the short side to that of
    `shape` times U(scale_range)), flipped at random and put at a random place on an (H, W) = `shape` canvas:
    anywhere inside it where smaller, a random window of it where larger. -> (H x W x 3 pixels, (N, H, W) planes),
    zero off the image."""
    height, width = shape
    factor = min(height, width) * rng.uniform(*scale_range) / min(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    own_pixels = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR))
    own = np.array([np.asarray(Image.fromarray(plane).resize(size, Image.NEAREST)) for plane in planes], planes.dtype).reshape(-1, size[1], size[0])
    if rng.random() < 0.5:
        own_pixels, own = own_pixels[:, ::-1], own[:, :, ::-1]
    top = int(rng.integers(min(0, height - size[1]), max(0, height - size[1]) + 1))
    left = int(rng.integers(min(0, width - size[0]), max(0, width - size[0]) + 1))
    rows, cols = slice(max(0, top), min(height, top + size[1])), slice(max(0, left), min(width, left + size[0]))
    pixels, placed = np.zeros((height, width, 3), np.uint8), np.zeros((len(planes), height, width), own.dtype)
    pixels[rows, cols] = own_pixels[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
    placed[:, rows, cols] = own[:, rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
    return pixels, placed


def copy_paste(pixels: np.ndarray, target: np.ndarray, other: tuple[Image.Image, np.ndarray], rng: np.random.Generator,
               scale_range: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simple Copy-Paste (Ghiasi et al. 2021) on a semantic crop, so that images of one or two objects also teach
    scenes of more: `other` (image, labels) is `place`d on the crop, and its object pixels (every class, and the
    ignore band that labels their edges) are pasted over the HW(x3) `pixels`, `target`; its background is not.
    -> (pixels, target, the pasted pixels' HW bool mask).

    The placement is its own draw, not the crop's: scaled below the crop, a pasted image of one large object puts a
    smaller one anywhere (at its own scale_range, with top-left placement, segmenter-world's (a) scored 59.1 harmonic
    mIoU at 4,000 steps against 64.0; RESULTS.md, "Ad hoc trials (world)").
    """
    image, labels = other
    placed_pixels, (placed,) = place(image, labels[None], rng, target.shape, scale_range)
    where = placed != 0
    return np.where(where[..., None], placed_pixels, pixels), np.where(where, placed, target), where


def copy_paste_instances(pixels: np.ndarray, masks: np.ndarray, labels: np.ndarray, other: tuple[np.ndarray, np.ndarray, np.ndarray],
                         rng: np.random.Generator, scale_range: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simple Copy-Paste as its paper does it, on instances: `other` (HW x 3 pixels, (M, h, w) masks, M labels) is
    `place`d on the HW x 3 `pixels`, its instances pasted over them; the (N, H, W) `masks` lose what the paste covers
    (an instance it hides whole is left empty, for the caller to drop). -> (pixels, N + M masks, N + M labels)."""
    image, other_masks, other_labels = other
    placed_pixels, placed = place(Image.fromarray(image), other_masks.astype(np.uint8), rng, masks.shape[1:], scale_range)
    where = placed.any(0)
    return (np.where(where[..., None], placed_pixels, pixels), np.concatenate([masks & ~where, placed.astype(bool)]),
            np.concatenate([labels, other_labels]))
