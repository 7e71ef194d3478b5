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
    annotator.model.eval()
    annotator.score_threshold = 0.0
    a = annotator.annotate([scenes[0].image], [list(WORLD_CLASSES)])[0]
    b = loaded.annotate([scenes[0].image], [list(WORLD_CLASSES)])[0]
    assert [(i.class_name, i.score) for i in a] == [(i.class_name, i.score) for i in b]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b))


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
