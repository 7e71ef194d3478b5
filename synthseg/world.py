"""The miniature world: a procedural renderer of named shapes with exact instance masks.

It plays the real world at a size that trains on two CPU cores. Scenes are deterministic by seed:
1-3 objects of `WORLD_CLASSES` on a textured background, with random position, size, rotation and
colour, drawn back to front so later objects partly occlude earlier ones. Every mask is the exact
visible region of its object (no anti-aliasing, so masks and pixels agree exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import SynthsegError
from .formats import coco_annotation, coco_document, save_label_png, write_json_atomic

WORLD_CLASSES = (
    "circle", "square", "triangle", "star", "heart", "cross",
    "ring", "crescent", "diamond", "arrow", "hexagon", "hourglass",
)


def scene_seed(k: int, held_out: bool) -> int:
    """The k-th scene seed of one side of the world's one split rule: even seeds train the world's
    models, odd seeds are held out for every evaluation."""
    return 2 * k + int(held_out)


# Placement draws until every object keeps `min_visible`; the first success wins, so a higher cap
# changes no scene that an earlier cap could place. Two large objects at 85% visible can need over 100.
PLACEMENT_TRIES = 1000

# Saturated object colours, far from the pale backgrounds.
_COLOURS = np.array([
    (220, 40, 40), (40, 160, 60), (40, 80, 220), (240, 190, 20), (150, 50, 200),
    (240, 120, 20), (20, 170, 190), (200, 40, 140), (90, 60, 30), (30, 30, 30),
], dtype=np.float32)


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _outline(name: str) -> list[tuple[np.ndarray, bool]]:
    """A class's silhouette in the unit disc as (polygon, filled) parts: filled parts add, others cut."""
    if name == "circle":
        return [(_regular(64), True)]
    if name == "square":
        return [(_regular(4, 1.0, np.pi / 4), True)]
    if name == "triangle":
        return [(_regular(3, 1.0, -np.pi / 2) + [0, 0.2], True)]
    if name == "star":
        points = _regular(10, 1.0, -np.pi / 2)
        points[1::2] *= 0.42
        return [(points, True)]
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return [(np.stack([x, -y - 2], axis=1) / 17, True)]
    if name == "cross":
        a, b = 0.32, 1.0
        return [(np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]), True)]
    if name == "ring":
        return [(_regular(64), True), (_regular(64, 0.55), False)]
    if name == "crescent":
        return [(_regular(64), True), (_regular(64, 0.85) + [0.45, -0.2], False)]
    if name == "diamond":
        return [(np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]]), True)]
    if name == "arrow":
        return [(np.array([[-1, -0.22], [0.15, -0.22], [0.15, -0.6], [1, 0], [0.15, 0.6], [0.15, 0.22], [-1, 0.22]]), True)]
    if name == "hexagon":
        return [(_regular(6), True)]
    if name == "hourglass":
        return [(np.array([[-0.75, -1], [0.75, -1], [0.08, 0], [0.75, 1], [-0.75, 1], [-0.08, 0]]), True)]
    raise SynthsegError(f"unknown world class {name!r}; known: {', '.join(WORLD_CLASSES)}")


def shape_mask(name: str, size: int, center: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """HW bool mask of one object: class `name`, centre (x, y) and radius in pixels, angle in radians."""
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    mask = np.zeros((size, size), dtype=bool)
    for polygon, filled in _outline(name):
        points = polygon @ rotation.T * radius + np.asarray(center)
        canvas = Image.new("1", (size, size), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
        part = np.asarray(canvas, dtype=bool)
        mask = mask | part if filled else mask & ~part
    return mask


@dataclass
class Scene:
    """A rendered scene. image: HW3 uint8 RGB. masks: (N, H, W) bool visible instance masks, back to
    front. classes: the N class names. seed: what rendered it."""

    image: np.ndarray
    masks: np.ndarray
    classes: list[str]
    seed: int

    def semantic(self, class_names: tuple[str, ...] = WORLD_CLASSES) -> np.ndarray:
        """HW uint8 label map: 0 background, 1 + index of the class in `class_names`."""
        labels = np.zeros(self.image.shape[:2], dtype=np.uint8)
        for mask, name in zip(self.masks, self.classes):
            labels[mask] = class_names.index(name) + 1
        return labels


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A mild textured background: a pale base colour, a soft gradient, faint stripes and noise."""
    base = rng.uniform(170, 245, size=3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, np.pi)
    gradient = (np.cos(angle) * xx + np.sin(angle) * yy - 0.5) * rng.uniform(-30, 30)
    stripes = np.sin(2 * np.pi * (xx * rng.uniform(-4, 4) + yy * rng.uniform(-4, 4))) * rng.uniform(0, 8)
    noise = rng.normal(0, 4, size=(size, size, 1))
    return base + (gradient + stripes)[..., None] + noise


def render_scene(seed: int, classes: list[str] | None = None, size: int = 64, min_visible: float = 0.5) -> Scene:
    """Render one scene, deterministic for `seed`.

    classes: the objects to draw, back to front (1-3 names); by default 1-3 random classes.
    Objects are resampled until each keeps at least `min_visible` of its area after occlusion.
    """
    rng = np.random.default_rng(seed)
    if classes is None:
        count = int(rng.integers(1, 4))
        classes = [WORLD_CLASSES[i] for i in rng.choice(len(WORLD_CLASSES), size=count, replace=False)]
    if not 1 <= len(classes) <= 3:
        raise SynthsegError(f"a scene holds 1-3 objects, got {len(classes)}")
    for name in classes:
        _outline(name)  # validates the name
    scale = {1: (0.30, 0.42), 2: (0.25, 0.33), 3: (0.20, 0.27)}[len(classes)]
    for _ in range(PLACEMENT_TRIES):
        full = []
        for name in classes:
            radius = rng.uniform(*scale) * size
            center = rng.uniform(radius * 0.8, size - radius * 0.8, size=2)
            full.append(shape_mask(name, size, tuple(center), radius, rng.uniform(0, 2 * np.pi)))
        visible = _visible(full)
        if all(v.sum() >= min_visible * max(f.sum(), 1) and v.any() for v, f in zip(visible, full)):
            break
    else:
        raise SynthsegError(f"could not place {classes} with {min_visible:.0%} visible in {PLACEMENT_TRIES} tries (seed {seed})")
    return _paint(rng, full, classes, size, seed)


def _visible(full: list[np.ndarray]) -> list[np.ndarray]:
    """Each object's visible region: its full mask less every object drawn after (in front of) it."""
    return [m & ~np.any(full[i + 1 :], axis=0) if i + 1 < len(full) else m for i, m in enumerate(full)]


def _paint(rng: np.random.Generator, full: list[np.ndarray], classes: list[str], size: int, seed: int) -> Scene:
    """The scene of placed objects (`full` masks, back to front): a background, then each object in its own
    colour (distinct while there are colours enough), drawn from `rng`."""
    image = _background(rng, size)
    colours = _COLOURS[rng.choice(len(_COLOURS), size=len(classes), replace=len(classes) > len(_COLOURS))]
    for mask, colour in zip(full, colours):
        shade = colour + rng.normal(0, 6, size=(size, size, 3))
        image[mask] = shade[mask]
    return Scene(np.clip(image, 0, 255).round().astype(np.uint8), np.stack(_visible(full)), list(classes), seed)


def render_layout(seed: int, phrases: list[str], boxes, size: int = 64) -> Scene:
    """Render one object per phrase inside its box (x0, y0, x1, y1 as fractions of the image), back to
    front, deterministic for `seed`: each shape centred in its box, as large as the box's shorter side
    allows, at a random angle. The scenes GLIGEN's world layers train on; masks are the visible regions."""
    rng = np.random.default_rng(seed)
    if not phrases or len(phrases) != len(boxes):
        raise SynthsegError(f"a layout scene needs one box per phrase, got {len(phrases)} phrases and {len(boxes)} boxes")
    full = []
    for name, (x0, y0, x1, y1) in zip(phrases, boxes):
        radius = min(x1 - x0, y1 - y0) * size / 2
        full.append(shape_mask(name, size, ((x0 + x1) * size / 2, (y0 + y1) * size / 2), radius, rng.uniform(0, 2 * np.pi)))
    return _paint(rng, full, phrases, size, seed)


def layout_scene(layout, held_out: bool, size: int = 64) -> Scene:
    """A layout (`layouts.Layout`: phrases, boxes, seed) drawn by the world itself (`render_layout`), from
    its seed's side of the split rule (`scene_seed`): exact training scenes for the layout models, or
    exact held-out renders that judge them."""
    return render_layout(scene_seed(layout.seed, held_out), layout.phrases, layout.boxes, size)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The bounding box (x0, y0, x1, y1, fractions of the image) of an HW bool mask; None if it is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    height, width = mask.shape
    return (xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height)


def export_scenes(directory: str | Path, seeds: list[int], size: int = 64) -> Path:
    """Render `seeds` into a labelled dataset: the "real" test set of Protocol ii.

    Writes images/<seed>.png, masks/<seed>.png (VOC-palette label maps, 0 background, k = k-th
    class of WORLD_CLASSES) and annotations.json (COCO instances, RLE, categories 1..12).
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "masks").mkdir(exist_ok=True)
    images, annotations = [], []
    for image_id, seed in enumerate(seeds, start=1):
        scene = render_scene(seed, size=size)
        name = f"{seed:08d}.png"
        Image.fromarray(scene.image).save(directory / "images" / name)
        save_label_png(directory / "masks" / name, scene.semantic())
        images.append(dict(id=image_id, file_name=name, width=size, height=size))
        for mask, cls in zip(scene.masks, scene.classes):
            annotations.append(coco_annotation(len(annotations) + 1, image_id, WORLD_CLASSES.index(cls) + 1, mask))
    write_json_atomic(directory / "annotations.json", coco_document(images, annotations, WORLD_CLASSES, "synthseg miniature world, rendered"))
    return directory
