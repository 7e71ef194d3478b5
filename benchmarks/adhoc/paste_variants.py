"""Ad hoc: variants of the segmenter's Simple Copy-Paste in Protocol ii (a), against the shipped one (one image pasted,
at the crop's own scale range).

Run from the repository root, after bench_protocol_ii.py has made its synthetic dataset:
    python benchmarks/adhoc/paste_variants.py WORK SEED STEPS two|small|two-small [a|b]
- two: a second image pasted over the first paste (scenes of up to three generated images' objects);
- small: the pasted image scaled to crop x U(0.4, 1.0) and put at a random place (smaller objects, anywhere);
- two-small: both.
(a) trains on the synthetic dataset (the default), (b) on as many rendered scenes (the oracle).
Prints harmonic mIoU on Protocol ii's test scenes (0-499) and on scenes 500-999.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, "benchmarks/adhoc")
from segmenter_trial import SYNTHETIC, train_and_score  # noqa: E402

import synthseg.train.segmenter as segmenter_training  # noqa: E402
from synthseg.formats import IGNORE  # noqa: E402
from synthseg.readers import read_synthseg, read_world  # noqa: E402
from synthseg.train.augment import PASTED_BAND, copy_paste  # noqa: E402

work, seed, steps, variant = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
key = sys.argv[5] if len(sys.argv) > 5 else "a"
synthetic = read_synthseg(SYNTHETIC)
data = {"a": synthetic, "b": read_world(len(synthetic), held_out=False)}[key]


def small_paste(pixels, target, other, rng, crop, scale_range):
    image, labels = other
    side = max(4, round(crop * rng.uniform(0.4, 1.0)))
    size = (side, side) if image.width == image.height else (side, max(1, round(side * image.height / image.width)))
    small = np.asarray(image.resize(size, Image.BILINEAR))
    marked = np.asarray(Image.fromarray(np.where(labels == IGNORE, PASTED_BAND, labels).astype(np.uint8)).resize(size, Image.NEAREST))
    if rng.random() < 0.5:
        small, marked = small[:, ::-1], marked[:, ::-1]
    h, w = min(size[1], crop), min(size[0], crop)
    top, left = int(rng.integers(crop - h + 1)), int(rng.integers(crop - w + 1))
    canvas, labels_c = np.zeros((crop, crop, 3), np.uint8), np.zeros((crop, crop), np.uint8)
    canvas[top:top + h, left:left + w], labels_c[top:top + h, left:left + w] = small[:h, :w], marked[:h, :w]
    where = (labels_c != 0) & (labels_c != IGNORE)
    pixels = np.where(where[..., None], canvas, pixels)
    target = np.where(where, np.where(labels_c == PASTED_BAND, IGNORE, labels_c), target)
    return pixels, target, where


one = small_paste if "small" in variant else copy_paste


def variant_paste(pixels, target, other, rng, crop, scale_range):
    pixels, target, where = one(pixels, target, other, rng, crop, scale_range)
    if variant.startswith("two"):
        pixels, target, second = one(pixels, target, data[int(rng.integers(len(data)))], rng, crop, scale_range)
        where = where | second
    return pixels, target, where


segmenter_training.copy_paste = variant_paste
print(f"({key}) {data.name}: {len(data)} images, seed {seed}, {steps} steps, paste variant {variant}", flush=True)
train_and_score(f"({key}) paste {variant}, seed {seed}, {steps} steps", data, work, steps, seed, copy_paste=0.5)
