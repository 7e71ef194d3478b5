"""The miniature world: a procedural renderer of named shapes with exact instance masks.

It plays the real world at a size that trains on two CPU cores. Scenes are deterministic by seed:
1-3 objects of `WORLD_CLASSES` on a textured background, with random position, size, rotation and
colour, drawn back to front so later objects partly occlude earlier ones. Every mask is the exact
visible region of its object (no anti-aliasing, so masks and pixels agree exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
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


# How `render_layout` puts a shape in its box. "extent": the box is the shape's bounding box, as COCO's
# boxes are (the shape turned to the angle whose extent is most like the box's aspect, then scaled and
# shifted to fill the box along its limiting side). "inscribed": the shape centred in the box's shorter
# side at any angle, what the layout models before session 50 trained on (their recipes say so).
LAYOUT_FITS = ("extent", "inscribed")
_FIT_ANGLES = 24  # angles tried for "extent"


@lru_cache(maxsize=None)
def _silhouette_support(name: str) -> np.ndarray:
    """(N, 2) points (x, y) of a class's visible silhouette at unit radius and angle 0, from one fine render: those
    farthest along each of 720 directions, so the extent at any angle is theirs turned, cuts included (a crescent's
    is narrower than its disc)."""
    ys, xs = np.nonzero(shape_mask(name, 402, (201.0, 201.0), 200.0, 0.0))
    points = (np.stack([xs, ys], axis=1) - 201.0) / 200.0
    directions = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    farthest = np.argmax(points @ np.stack([np.cos(directions), np.sin(directions)]), axis=0)
    return points[np.unique(farthest)]


def _outline_extents(name: str, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A, 2) min and (A, 2) max corners (x, y) of a class's silhouette at each of `angles`, at unit radius."""
    cos, sin = np.cos(angles), np.sin(angles)
    rotations = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (A, 2, 2)
    points = np.einsum("nj,aij->ani", _silhouette_support(name), rotations)
    return points.min(axis=1), points.max(axis=1)


def _fitted(name: str, box, size: int, rng: np.random.Generator) -> tuple[tuple[float, float], float, float]:
    """(centre, radius, angle) in pixels that put shape `name` in `box` (fractions) with the box as its extent:
    of `_FIT_ANGLES` random angles, the one whose extent's aspect is nearest the box's (in log ratio), scaled
    and shifted to fill the box along its limiting side, then corrected once by its render's pixel extent
    (pixels its edges touch, a crescent's horns too thin to fill any)."""
    x0, y0, x1, y1 = (v * size for v in box)
    angles = rng.uniform(0, 2 * np.pi, size=_FIT_ANGLES)
    lows, highs = _outline_extents(name, angles)
    sides = highs - lows
    best = int(np.argmin(np.abs(np.log(sides[:, 0] / sides[:, 1]) - math.log((x1 - x0) / (y1 - y0)))))
    lo, hi, angle = lows[best], highs[best], float(angles[best])

    def placed(lo, hi):  # the radius and centre that put extent (lo, hi) at unit radius on the box
        radius = min((x1 - x0) / (hi[0] - lo[0]), (y1 - y0) / (hi[1] - lo[1]))
        return ((x0 + x1) / 2 - radius * (lo[0] + hi[0]) / 2, (y0 + y1) / 2 - radius * (lo[1] + hi[1]) / 2), radius

    centre, radius = placed(lo, hi)
    drawn = mask_box(shape_mask(name, size, centre, radius, angle))
    if drawn is not None:
        corners = np.array(drawn).reshape(2, 2) * size
        centre, radius = placed((corners[0] - centre) / radius, (corners[1] - centre) / radius)
    return centre, radius, angle


def render_layout(seed: int, phrases: list[str], boxes, size: int = 64, fit: str = "extent") -> Scene:
    """Render one object per phrase in its box (x0, y0, x1, y1 as fractions of the image), back to front,
    deterministic for `seed`, placed as `fit` says (`LAYOUT_FITS`). The scenes GLIGEN's world layers train
    on; masks are the visible regions."""
    rng = np.random.default_rng(seed)
    if not phrases or len(phrases) != len(boxes):
        raise SynthsegError(f"a layout scene needs one box per phrase, got {len(phrases)} phrases and {len(boxes)} boxes")
    if fit not in LAYOUT_FITS:
        raise SynthsegError(f"unknown layout fit {fit!r}; known: {', '.join(LAYOUT_FITS)}")
    full = []
    for name, box in zip(phrases, boxes):
        if fit == "extent":
            centre, radius, angle = _fitted(name, box, size, rng)
        else:
            x0, y0, x1, y1 = box
            centre, radius, angle = ((x0 + x1) * size / 2, (y0 + y1) * size / 2), min(x1 - x0, y1 - y0) * size / 2, rng.uniform(0, 2 * np.pi)
        full.append(shape_mask(name, size, centre, radius, angle))
    return _paint(rng, full, phrases, size, seed)


def layout_scene(layout, held_out: bool, fit: str, size: int = 64) -> Scene:
    """A layout (`layouts.Layout`: phrases, boxes, seed) drawn by the world itself (`render_layout`, with `fit`),
    from its seed's side of the split rule (`scene_seed`): exact training scenes for the layout models, or
    exact held-out renders that judge them."""
    return render_layout(scene_seed(layout.seed, held_out), layout.phrases, layout.boxes, size, fit)


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
