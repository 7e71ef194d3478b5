import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from synthseg import SynthsegError, world
from synthseg.formats import voc_palette
from synthseg.world import WORLD_CLASSES, export_scenes, render_scene, shape_mask


def test_a_higher_placement_cap_only_rescues_scenes_a_lower_one_could_not_place(monkeypatch):
    hard = (1806987640, ["ring", "circle"], 64, 0.85)  # two large objects, 85% visible: over 100 draws
    easy = [render_scene(seed, size=48) for seed in range(8)]
    monkeypatch.setattr(world, "PLACEMENT_TRIES", 100)
    with pytest.raises(SynthsegError, match="in 100 tries"):
        render_scene(*hard)
    for seed, scene in enumerate(easy):
        assert np.array_equal(render_scene(seed, size=48).image, scene.image)
    monkeypatch.undo()
    assert [m.any() for m in render_scene(*hard).masks] == [True, True]


def test_scenes_are_deterministic_by_seed():
    a, b, c = render_scene(7), render_scene(7), render_scene(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks) and a.classes == b.classes
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    counts = {len(render_scene(s).classes) for s in range(40)}
    assert counts == {1, 2, 3}
    assert len(WORLD_CLASSES) >= 12


@pytest.mark.parametrize(
    "name, area, perimeter",
    [("square", 2.0, 4 * 2**0.5), ("circle", np.pi, 2 * np.pi), ("diamond", 1.24, 4 * (0.62**2 + 1) ** 0.5), ("cross", 8 * 0.32 - 4 * 0.32**2, 8.0)],
)
def test_masks_have_the_shapes_area(name, area, perimeter):
    radius = 28
    mask = shape_mask(name, 64, (32, 32), radius, 0.3)
    # The rasteriser fills pixels the outline touches: about half a pixel along the perimeter extra.
    assert abs(mask.sum() / (area * radius**2 + perimeter * radius / 2) - 1) < 0.03


def test_ring_and_crescent_have_holes_cut():
    ring = shape_mask("ring", 64, (32, 32), 20, 0.0)
    assert not ring[32, 32] and ring[32, 32 + 16]
    assert abs(ring.sum() / (np.pi * 400 * (1 - 0.55**2)) - 1) < 0.08


def test_masks_are_exact_disjoint_and_match_pixels():
    for seed in range(30):
        scene = render_scene(seed)
        assert scene.masks.sum(axis=0).max() <= 1  # no overlap: occluded parts belong to the object in front
        for mask in scene.masks:
            assert mask.any()
            inside = scene.image[mask].astype(float)
            assert inside.std(axis=0).max() < 12  # one flat colour plus mild noise
            ring = np.zeros_like(mask)
            ring[1:-1, 1:-1] = mask[:-2, 1:-1] | mask[2:, 1:-1] | mask[1:-1, :-2] | mask[1:-1, 2:]
            outside = scene.image[ring & ~scene.masks.any(0)].astype(float)
            if len(outside) > 10:
                assert np.abs(inside.mean(0) - outside.mean(0)).max() > 25
        labels = scene.semantic()
        for mask, name in zip(scene.masks, scene.classes):
            assert (labels[mask] == WORLD_CLASSES.index(name) + 1).all()
        assert (labels[~scene.masks.any(0)] == 0).all()


def test_occlusion_keeps_each_object_mostly_visible():
    scene = render_scene(3, ["circle", "square", "star"])
    assert scene.classes == ["circle", "square", "star"]
    full_star = scene.masks[2]
    assert not (scene.masks[0] & full_star).any() and not (scene.masks[1] & full_star).any()


def test_bad_scene_requests():
    with pytest.raises(SynthsegError, match="unknown world class 'dog'"):
        render_scene(0, ["dog"])
    with pytest.raises(SynthsegError, match="1-3 objects"):
        render_scene(0, ["circle"] * 4)


def test_export_is_valid_coco_and_palette_png(tmp_path):
    export_scenes(tmp_path, list(range(12)))
    coco = COCO(str(tmp_path / "annotations.json"))
    assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == list(range(1, len(WORLD_CLASSES) + 1))
    assert len(coco.getImgIds()) == 12
    ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(ids) == len(set(ids))
    for ann in coco.dataset["annotations"]:
        assert ann["iscrowd"] == 0 and ann["bbox"][2] > 0 and ann["bbox"][3] > 0
        assert coco.annToMask(ann).sum() == ann["area"]
    detections = [dict(a, score=1.0) for a in coco.dataset["annotations"]]
    evaluator = COCOeval(coco, coco.loadRes(detections), "segm")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)
    label = Image.open(tmp_path / "masks" / "00000000.png")
    assert label.mode == "P" and label.getpalette()[: 3 * 256] == voc_palette()
    scene = render_scene(0)
    assert np.array_equal(np.array(label), scene.semantic())
    assert np.array_equal(np.array(Image.open(tmp_path / "images" / "00000000.png")), scene.image)
