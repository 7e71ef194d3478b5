import json

import numpy as np
import pytest
import torch

from synthseg import SynthsegError
from synthseg.annotators import MaskRCNNAnnotator, MaskRCNNConfig, build_maskrcnn
from synthseg.train.annotator import WorldAnnotatorRecipe, load_annotator_recipe, scene_targets, train_world_annotator
from synthseg.world import WORLD_CLASSES, render_scene, scene_seed


@pytest.fixture(scope="module")
def coco():
    return MaskRCNNAnnotator.coco(weights=None, score_threshold=0.0)


def test_coco_names_map_and_unknown_classes_are_refused(coco):
    assert coco.categories[coco.category_of("aeroplane") - 1] == "airplane"
    assert coco.categories[coco.category_of("tvmonitor") - 1] == "tv"
    assert coco.categories[coco.category_of("diningtable") - 1] == "dining table"
    assert coco.category_of("dog") == coco.categories.index("dog") + 1
    with pytest.raises(SynthsegError, match="cannot label 'hexagon': it has no category 'hexagon'"):
        coco.category_of("hexagon")


def test_coco_weights_offline_fail_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SynthsegError) as error:
        MaskRCNNAnnotator.coco()
    assert "maskrcnn_resnet50_fpn_v2_coco" in str(error.value) and "\n" not in str(error.value)


def test_annotate_returns_only_requested_classes(coco):
    scene = render_scene(1)
    results = coco.annotate([scene.image, scene.image], [["dog", "cat"], ["person"]])
    assert len(results) == 2
    assert {inst.class_name for inst in results[0]} <= {"dog", "cat"}
    assert {inst.class_name for inst in results[1]} <= {"person"}
    for inst in results[0] + results[1]:
        assert inst.mask.shape == (64, 64) and inst.mask.dtype == bool and inst.mask.any()


def small_recipe(steps=8) -> WorldAnnotatorRecipe:
    model = MaskRCNNConfig(categories=list(WORLD_CLASSES), fpn_channels=32, image_size=64, anchor_sizes=[8, 16, 32, 64], mask_channels=32)
    return WorldAnnotatorRecipe(model=model, steps=steps, batch_size=2, warmup_steps=2, lr=1e-3, checkpoint_every=100)


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_round_trips(tmp_path):
    recipe = small_recipe()
    scenes = [render_scene(scene_seed(i, held_out=True)) for i in range(4)]
    images = [torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in scenes]
    targets = [scene_targets(s) for s in scenes]

    def held_out_loss(model):
        model.train()
        torch.manual_seed(0)
        with torch.no_grad():
            return sum(model(images, targets).values()).item()

    torch.manual_seed(recipe.seed)
    before = held_out_loss(build_maskrcnn(recipe.model))
    annotator = train_world_annotator(recipe, tmp_path / "work", tmp_path / "annotator")
    after = held_out_loss(annotator.model)
    assert after < 0.8 * before
    assert json.loads((tmp_path / "annotator" / "training.json").read_text())["annotator"]["steps"] == recipe.steps
    loaded = MaskRCNNAnnotator.from_pretrained(tmp_path / "annotator", score_threshold=0.0)
    saved = loaded.model.state_dict()
    for name, value in annotator.model.state_dict().items():  # the export holds the weights in fp16
        assert torch.equal(saved[name], value.half().to(value.dtype) if value.is_floating_point() else value), name
    annotator.model.load_state_dict(saved)
    annotator.model.eval()
    annotator.score_threshold = 0.0
    a = annotator.annotate([s.image for s in scenes], [list(WORLD_CLASSES)] * len(scenes))
    b = loaded.annotate([s.image for s in scenes], [list(WORLD_CLASSES)] * len(scenes))
    assert [[(i.class_name, i.score) for i in x] for x in a] == [[(i.class_name, i.score) for i in y] for y in b]
    assert all(np.array_equal(x.mask, y.mask) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def test_scene_targets_match_the_masks():
    scene = render_scene(5, ["star", "ring"])
    target = scene_targets(scene)
    assert target["labels"].tolist() == [WORLD_CLASSES.index("star") + 1, WORLD_CLASSES.index("ring") + 1]
    for box, mask in zip(target["boxes"], scene.masks):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_load_errors(tmp_path):
    with pytest.raises(SynthsegError, match="no annotator at"):
        MaskRCNNAnnotator.from_pretrained(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text('{"model": {"categories": ["x"]}}')
    with pytest.raises(SynthsegError, match="missing, corrupt or not matching"):
        MaskRCNNAnnotator.from_pretrained(tmp_path / "a")


def test_shipped_recipe_is_valid():
    recipe = load_annotator_recipe("world-annotator")
    assert recipe.model.categories == list(WORLD_CLASSES) and recipe.eval_scenes == 500


def test_training_batches_from_a_coco_folder_carry_its_instances(tmp_path):
    """`train_data`: a COCO folder (here rendered scenes exported as one) gives the exact masks, boxes and
    labels of its images, with the dataset's categories mapped onto the annotator's; a bad folder is refused
    before the workdir is claimed."""
    from dataclasses import replace

    from synthseg.readers import read_coco_instances
    from synthseg.train.annotator import training_batches
    from synthseg.world import export_scenes

    seeds = [scene_seed(i, held_out=False) for i in range(3)]
    export_scenes(tmp_path / "scenes", seeds)
    data = read_coco_instances(tmp_path / "scenes")
    image, masks, labels = data[1]
    scene = render_scene(seeds[1])
    assert np.array_equal(np.asarray(image), scene.image) and np.array_equal(masks, scene.masks)
    assert [data.class_names[k - 1] for k in labels] == scene.classes
    recipe = replace(small_recipe(), train_data=str(tmp_path / "scenes"), model=replace(small_recipe().model, categories=list(WORLD_CLASSES)[::-1]))
    images, targets = training_batches(recipe)(0)
    assert training_batches(recipe)(0)[0][0].equal(images[0])  # the batch of a step is fixed
    for image, target in zip(images, targets):
        index = next(i for i, s in enumerate(seeds) if np.array_equal((image.permute(1, 2, 0) * 255).round().byte().numpy(), render_scene(s).image))
        truth = scene_targets(render_scene(seeds[index]))
        assert torch.equal(target["masks"], truth["masks"]) and torch.equal(target["boxes"], truth["boxes"])
        assert [recipe.model.categories[k - 1] for k in target["labels"]] == render_scene(seeds[index]).classes
    with pytest.raises(SynthsegError, match="no COCO JSON"):
        train_world_annotator(replace(recipe, train_data=str(tmp_path / "none")), tmp_path / "work", tmp_path / "out")
    assert not (tmp_path / "work").exists()
    with pytest.raises(SynthsegError, match="'circle' is not a category of the annotator"):
        training_batches(replace(recipe, model=replace(recipe.model, categories=["square"])))


def test_layout_fraction_mixes_layout_scenes_into_the_batches():
    """With `layout_fraction`, that share of the rendered training scenes are layouts of the recipe's
    stream (up to four objects, same-class repeats possible, each inside its box), the rest world scenes;
    the batch of a step is fixed. A fraction outside [0, 1] is refused."""
    from dataclasses import replace

    from synthseg.layouts import LayoutRecipe, sample_layout
    from synthseg.train.annotator import training_scene

    layouts = LayoutRecipe(min_objects=4, max_objects=4, repeat_fraction=1.0, min_size=0.25, max_size=0.3, max_overlap=0.0, seed=5)
    recipe = replace(small_recipe(), layout_fraction=0.5, layouts=layouts)
    rng = np.random.default_rng(0)
    scenes = [training_scene(recipe, rng) for _ in range(40)]
    from_layouts = [s for s in scenes if len(s.classes) == 4]  # world scenes hold 1-3 objects
    assert 10 <= len(from_layouts) <= 30
    for scene in from_layouts:
        assert len(set(scene.classes)) < 4  # repeat_fraction 1: a class repeats
        areas = scene.masks.reshape(4, -1).sum(1)
        assert areas.max() <= (0.3 * 64) ** 2  # each object within its box's shorter side
    draws = np.random.default_rng(1)
    draws.random()  # whether the scene is a layout's, then the layout's index
    expected = sample_layout(layouts, list(WORLD_CLASSES), [], int(draws.integers(2**30)))
    rng = np.random.default_rng(1)
    assert training_scene(replace(recipe, layout_fraction=1.0), rng).classes == expected.phrases
    world_only = [training_scene(replace(recipe, layout_fraction=0.0), rng) for _ in range(10)]
    assert all(len(s.classes) <= 3 and len(set(s.classes)) == len(s.classes) for s in world_only)
    with pytest.raises(SynthsegError, match="layout_fraction must lie in"):
        load_annotator_recipe("world-annotator", layout_fraction=1.5)


def test_copy_paste_instances_occludes_the_base_and_adds_the_pasted_instances():
    from synthseg.train.augment import copy_paste_instances

    masks = np.zeros((2, 8, 8), bool)
    masks[0, :, :2], masks[1, 6:, 6:] = True, True  # a bar at the left edge; a small square at the lower right
    other_masks = np.zeros((1, 8, 8), bool)
    other_masks[0, :, 4:] = True  # the right half of an 8 x 8 image, placed whole at scale 1
    other = (np.full((8, 8, 3), 200, np.uint8), other_masks, np.array([5]))
    for seed in range(10):
        pixels, out, labels = copy_paste_instances(np.zeros((8, 8, 3), np.uint8), masks, np.array([1, 2]), other,
                                                   np.random.default_rng(seed), scale_range=[1.0, 1.0])
        assert list(labels) == [1, 2, 5] and out.shape == (3, 8, 8)
        assert (pixels[out[2]] == 200).all() and (pixels[~out[2]] == 0).all()  # only the instance's pixels pasted
        assert not (out[:2] & out[2]).any() and ((out[0] | out[2]) >= masks[0]).all()  # the base lost what the paste covers
        covered = out[2, 6:, 6:].all()
        assert out[1].any() != covered  # the square: hidden whole (empty) where the paste lands on the right half
    empty = (np.full((8, 8, 3), 200, np.uint8), np.zeros((0, 8, 8), bool), np.zeros(0, np.int64))  # an image without instances
    pixels, out, labels = copy_paste_instances(np.zeros((8, 8, 3), np.uint8), masks, np.array([1, 2]), empty, np.random.default_rng(0),
                                               scale_range=[1.0, 1.0])
    assert (pixels == 0).all() and np.array_equal(out, masks) and list(labels) == [1, 2]  # nothing pasted


def test_annotator_copy_paste_pastes_another_drawn_items_instances(tmp_path):
    """With `copy_paste` 1 every image of a batch also holds another drawn image's instances, the targets' boxes
    follow the occluded masks, and the batch of a step is fixed; at 0 the draws are those of a recipe without it."""
    from dataclasses import replace

    from synthseg.train.annotator import training_batches, training_scene
    from synthseg.world import export_scenes

    export_scenes(tmp_path / "scenes", [scene_seed(i, held_out=False) for i in range(4)])
    recipe = replace(small_recipe(), train_data=str(tmp_path / "scenes"), model=replace(small_recipe().model, categories=list(WORLD_CLASSES)))
    plain_images, plain = training_batches(recipe)(3)
    rng = np.random.default_rng([recipe.seed, 3])
    assert [len(t["labels"]) for t in plain] == [len(render_scene(scene_seed(int(rng.integers(4)), held_out=False)).classes) for _ in plain]
    pasted_images, pasted = training_batches(replace(recipe, copy_paste=1.0))(3)
    assert training_batches(replace(recipe, copy_paste=1.0))(3)[0][0].equal(pasted_images[0])
    assert sum(len(t["labels"]) for t in pasted) > sum(len(t["labels"]) for t in plain)
    for target in pasted:
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = np.nonzero(mask.numpy())
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    rendered = replace(small_recipe(), copy_paste=0.0)
    rng = np.random.default_rng([rendered.seed, 0])
    scene = training_scene(rendered, rng)
    assert np.array_equal(training_batches(rendered)(0)[0][0].permute(1, 2, 0).mul(255).round().byte().numpy(), scene.image)
    for bad, match in ((dict(copy_paste=1.5), "copy_paste must lie in"), (dict(paste_scale_range=[1.0, 0.5]), "paste_scale_range")):
        with pytest.raises(SynthsegError, match=match):
            load_annotator_recipe("world-annotator", **bad)


def test_shipped_recipe_draws_layouts_from_a_stream_no_bench_uses():
    """The annotator judges bench_layouts, so its training layouts (and its held-out AP's) come from
    streams other than the bench's (9 and 10; 1 and 2 before), the choices' (5, 6), world-layout's stages' (0, 7, 8, 12, 14) and
    its layout bases' (11, 13)."""
    from synthseg.train.world_layout import load_layout_recipe
    from synthseg.train.world_t2i import load_world_model_recipe

    recipe = load_annotator_recipe("world-annotator")
    assert recipe.layout_fraction > 0
    streams = {recipe.layouts.seed, recipe.layouts.seed + 1}
    names = ("world-layout", "world-layout-finetune", "world-layout-finetune2", "world-layout-finetune3", "world-layout-finetune4")
    training = {load_layout_recipe(name).layouts.seed for name in names}
    training |= {load_world_model_recipe(name).layouts.seed for name in ("world-t2i-layouts", "world-t2i-layouts2")}
    assert len(training) == 7 and not (streams | {1, 2, 5, 6, 9, 10}) & training and not streams & {1, 2, 5, 6, 9, 10}
    assert recipe.layouts.min_size <= load_layout_recipe("world-layout").layouts.min_size


def test_a_coco_image_without_instances_trains_as_a_negative_example(tmp_path):
    """A COCO image with no annotations (a synthetic dataset's image whose instances were all left out) gives empty
    targets, on which Mask R-CNN's training loss is finite."""
    from dataclasses import replace

    from synthseg.readers import read_coco_instances
    from synthseg.train.annotator import instance_targets, training_batches
    from synthseg.world import export_scenes

    export_scenes(tmp_path / "scenes", [scene_seed(i, held_out=False) for i in range(2)])
    document = json.loads((tmp_path / "scenes" / "annotations.json").read_text())
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != document["images"][0]["id"]]
    (tmp_path / "scenes" / "annotations.json").write_text(json.dumps(document))
    _, masks, labels = read_coco_instances(tmp_path / "scenes")[0]
    empty = instance_targets(masks, labels)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["masks"].shape == (0, 64, 64)
    recipe = replace(small_recipe(), train_data=str(tmp_path / "scenes"), batch_size=4)
    images, targets = training_batches(recipe)(0)
    assert any(len(t["labels"]) == 0 for t in targets) and any(len(t["labels"]) for t in targets)
    torch.manual_seed(0)
    model = build_maskrcnn(recipe.model).train()
    assert torch.isfinite(sum(model(images, targets).values()))
