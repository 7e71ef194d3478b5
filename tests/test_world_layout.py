"""The world's GLIGEN (`world-layout`): layout scenes put each object in its box, training moves only
GLIGEN's weights and resumes exactly, and the export (GLIGEN's weights alone, over a named base) loads
through the one loader as a `StableDiffusionGLIGENPipeline`."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionGLIGENPipeline
from safetensors.torch import load_file, save_file
from test_worldmodel import tiny_recipe

from synthseg import SynthsegError, load_pipeline
from synthseg.config import load_config
from synthseg.train.world_layout import layout_batch, phrase_embeddings, train_world_layout
from synthseg.train.world_t2i import train_world_model
from synthseg.world import WORLD_CLASSES, layout_scene, mask_box, render_layout, scene_seed
from synthseg.worldmodel import GLIGEN_WEIGHTS, BoxGatedSelfAttention, LayoutModelRecipe, WorldGLIGENPipeline, build_gligen_unet, is_gligen_weight


def test_a_layout_scene_puts_each_object_in_its_box():
    boxes = [(0.05, 0.05, 0.45, 0.45), (0.55, 0.1, 0.95, 0.5), (0.3, 0.55, 0.7, 0.95)]
    scene = render_layout(3, ["circle", "circle", "star"], boxes)
    again = render_layout(3, ["circle", "circle", "star"], boxes)
    assert np.array_equal(scene.image, again.image) and np.array_equal(scene.masks, again.masks)
    assert scene.classes == ["circle", "circle", "star"] and scene.masks.shape == (3, 64, 64)
    for mask, box in zip(scene.masks, boxes):
        x0, y0, x1, y1 = mask_box(mask)
        assert x0 >= box[0] - 1 / 64 and y0 >= box[1] - 1 / 64 and x1 <= box[2] + 1 / 64 and y1 <= box[3] + 1 / 64
    circle = mask_box(scene.masks[0])
    assert circle[2] - circle[0] > 0.9 * 0.4  # as large as the box allows
    assert mask_box(np.zeros((4, 4), bool)) is None
    with pytest.raises(SynthsegError, match="one box per phrase"):
        render_layout(0, ["circle"], boxes)
    with pytest.raises(SynthsegError, match="unknown layout fit 'middle'"):
        render_layout(0, ["circle"], boxes[:1], fit="middle")
    from synthseg.layouts import Layout

    layout = Layout(0, "two circles and a star", ["circle", "circle", "star"], boxes, 1)
    held_out, training = layout_scene(layout, held_out=True, fit="extent"), layout_scene(layout, held_out=False, fit="extent")
    assert np.array_equal(held_out.image, render_layout(scene_seed(1, held_out=True), layout.phrases, boxes).image)
    assert not np.array_equal(held_out.image, training.image)  # the two sides of the split rule draw apart


@pytest.mark.parametrize("name", WORLD_CLASSES)
def test_an_extent_fit_makes_the_box_its_object_s_bounding_box_and_inscribed_keeps_the_shorter_side(name):
    """Fit "extent" (the default): each object's bounding box is its box, as COCO's are, where the shape's proportions
    allow: filling it along the side that limits it, never beyond, and near the box's aspect for a long box when the
    shape is long too. Fit "inscribed" (the models before session 50) centres the shape in the box's shorter side."""
    rng = np.random.default_rng(WORLD_CLASSES.index(name))
    ious, gaps = [], []
    for k in range(20):
        w, h = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        box = (x0, y0, x0 + w, y0 + h)
        found = np.array(mask_box(render_layout(k, [name], [box]).masks[0]))
        spill = (found - box) * 64 * [-1, -1, 1, 1]  # > 0: beyond the box
        assert spill.max() <= 1.0
        gap = np.abs(found - box) * 64
        limiting = [0, 2] if (found[2] - found[0]) / w > (found[3] - found[1]) / h else [1, 3]
        gaps.append(gap[limiting].max())  # how far short of the box along the side that limits it
        ix = max(0, min(found[2], box[2]) - max(found[0], box[0])) * max(0, min(found[3], box[3]) - max(found[1], box[1]))
        ious.append(ix / ((found[2] - found[0]) * (found[3] - found[1]) + w * h - ix))
        inscribed = render_layout(k, [name], [box], fit="inscribed").masks[0]
        ys, xs = np.nonzero(inscribed)  # within the disc of the shorter side at the box's centre (an hourglass's corners reach 1.25)
        radius = np.hypot(xs + 0.5 - (box[0] + box[2]) * 32, ys + 0.5 - (box[1] + box[3]) * 32)
        assert radius.max() <= 1.25 * min(w, h) * 32 + 1
    # within a pixel; a crescent's horns, too thin to fill pixels at their tips, come up to 3 px short now and then
    assert (np.median(gaps) if name == "crescent" else max(gaps)) <= 1.0
    assert np.mean(ious) > {"arrow": 0.85, "diamond": 0.85}.get(name, 0.6)  # long shapes turn to long boxes


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny world export (32 px) for GLIGEN to train over."""
    tmp = tmp_path_factory.mktemp("base")
    return train_world_model(tiny_recipe(), tmp / "work", tmp / "t2i", max_steps=1)


def tiny_layout_recipe(base) -> LayoutModelRecipe:
    return LayoutModelRecipe(base=str(base), steps=4, batch_size=2, warmup_steps=1, checkpoint_every=1000)


def test_a_training_batch_conditions_each_object_on_its_visible_box(base):
    pipe = load_pipeline(base)
    recipe = tiny_layout_recipe(base)
    phrases = dict(zip(WORLD_CLASSES, phrase_embeddings(pipe.tokenizer, pipe.text_encoder, list(WORLD_CLASSES))))
    images, captions, boxes, embeds, masks = layout_batch(recipe, 5, phrases, 32)
    assert images.shape == (2, 3, 32, 32) and boxes.shape == (2, 30, 4) and embeds.shape == (2, 30, 384) and masks.shape == (2, 30)
    again = layout_batch(recipe, 5, phrases, 32)
    assert captions == again[1] and torch.equal(boxes, again[2])  # the batch of a step is fixed: resumable
    for row in range(2):
        n = int(masks[row].sum())
        assert 1 <= n <= 4 and masks[row, :n].all() and not boxes[row, n:].any() and not embeds[row, n:].any()
        assert ((boxes[row, :n, 2:] > boxes[row, :n, :2]).all())
        # each token's embedding is the pooled embedding of one class named in the caption
        named = [name for name in WORLD_CLASSES if any(torch.equal(embeds[row, k], phrases[name]) for k in range(n))]
        assert named and all(name in captions[row] for name in named)


@pytest.mark.slow
def test_training_moves_only_gligen_weights_resumes_exactly_and_loads_as_a_gligen_pipeline(base, tmp_path):
    recipe = tiny_layout_recipe(base)
    whole = train_world_layout(recipe, tmp_path / "whole", tmp_path / "whole-out")
    train_world_layout(recipe, tmp_path / "split", tmp_path / "split-out", max_steps=2)
    split = train_world_layout(recipe, tmp_path / "split", tmp_path / "split-out")  # the second sitting
    assert json.loads((whole / "training.json").read_text()) == json.loads((split / "training.json").read_text())
    saved = load_file(whole / "unet" / GLIGEN_WEIGHTS)
    assert saved.keys() == load_file(split / "unet" / GLIGEN_WEIGHTS).keys()
    assert all(torch.equal(v, load_file(split / "unet" / GLIGEN_WEIGHTS)[k]) for k, v in saved.items())
    assert sorted(p.name for p in whole.iterdir()) == ["model_index.json", "synthseg.json", "training.json", "unet"]  # GLIGEN's alone
    assert (whole / "unet" / GLIGEN_WEIGHTS).stat().st_mode & 0o777 == 0o644  # safetensors alone writes owner-only files
    assert all(is_gligen_weight(k) for k in saved) and any(".fuser.alpha_attn" in k and v != 0 for k, v in saved.items())
    card = json.loads((whole / "synthseg.json").read_text())
    assert card["base"] == str(base) and card["layouts"]["max_objects"] == 4 and card["layouts"]["templates"] == ["{}"]

    pipe = load_pipeline(whole)
    assert isinstance(pipe, WorldGLIGENPipeline) and isinstance(pipe, StableDiffusionGLIGENPipeline)
    plain = load_pipeline(base)
    state = pipe.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.unet.state_dict().items())  # the base UNet, frozen
    pipe.set_progress_bar_config(disable=True)

    def draw(boxes):
        return pipe("a circle and a star", gligen_phrases=["circle", "star"], gligen_boxes=boxes, gligen_scheduled_sampling_beta=1.0,
                    num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="np").images

    first = draw([[0, 0, .5, .5], [.5, .5, 1, 1]])
    assert first.shape == (1, 32, 32, 3) and np.array_equal(first, draw([[0, 0, .5, .5], [.5, .5, 1, 1]]))
    assert not np.array_equal(first, draw([[.5, .5, 1, 1], [0, 0, .5, .5]]))  # the boxes reach the trained layers
    fusers, runs = [m for m in pipe.unet.modules() if isinstance(m, BoxGatedSelfAttention)], []
    pipe.unet.register_forward_pre_hook(lambda module, args: runs.append([f.enabled for f in fusers]))
    pipe("a circle", gligen_phrases=["circle"], gligen_boxes=[[0, 0, .5, .5]], gligen_scheduled_sampling_beta=0.34, num_inference_steps=3)
    assert fusers and [set(r) for r in runs] == [{True}, {False}, {False}]  # scheduled sampling: the gated layers in the first third only

    # make-dataset --layouts on the export: layouts within its card's limits, a recipe's section over them
    from synthseg.dataset import load_dataset_recipe, plan_summary

    boxed = load_dataset_recipe("world", layouts=True, model=str(whole), grounding="world", per_class=2, per_pair=0)
    assert boxed.layouts.templates == ["{}"] and boxed.layouts.max_aspect == 1.3 and boxed.layouts.margin == 0.1
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"classes: world\nmodel: {whole}\nper_class: 1\nlayouts: {{max_objects: 2, margin: 0.2}}\n")
    narrowed = load_dataset_recipe(recipe=str(mine))  # a layouts section asks for layouts
    assert narrowed.layouts.max_objects == 2 and narrowed.layouts.margin == 0.2 and narrowed.layouts.max_aspect == 1.3
    summary = plan_summary(boxed, "cpu")  # no model loaded: the image size comes from the base's configs
    assert summary.startswith("24 images from layouts:") and "boxes per class (12)" in summary and "per item" in summary

    (whole / "synthseg.json").write_text(json.dumps({k: v for k, v in card.items() if k != "base"}))
    with pytest.raises(SynthsegError, match="naming its base pipeline"):
        load_pipeline(whole)
    (whole / "synthseg.json").write_text(json.dumps(card))
    save_file({k: v for k, v in saved.items() if "position_net" not in k}, whole / "unet" / GLIGEN_WEIGHTS)
    with pytest.raises(SynthsegError, match="does not fit base"):
        load_pipeline(whole)


@pytest.mark.slow
def test_a_later_stage_trains_on_from_an_export_and_its_card_gives_the_sampling_beta(base, tmp_path):
    first = train_world_layout(tiny_layout_recipe(base), tmp_path / "first", tmp_path / "first-out")
    layouts = dataclasses.replace(tiny_layout_recipe(base).layouts, scheduled_sampling_beta=0.6)
    frozen = dataclasses.replace(tiny_layout_recipe(base), init_from=str(first), steps=2, lr=0.0, layouts=layouts)  # lr 0: weights kept
    second = train_world_layout(frozen, tmp_path / "second", tmp_path / "second-out")
    before, after = load_file(first / "unet" / GLIGEN_WEIGHTS), load_file(second / "unet" / GLIGEN_WEIGHTS)
    assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())  # started from stage 1
    assert json.loads((second / "training.json").read_text())["gligen"]["steps"] == 4 + 2  # stage 1's steps counted first
    assert json.loads((second / "synthseg.json").read_text())["layouts"]["scheduled_sampling_beta"] == 0.6

    from synthseg.dataset import load_dataset_recipe

    assert load_dataset_recipe("world", layouts=True, model=str(second), grounding="world").layouts.scheduled_sampling_beta == 0.6
    with pytest.raises(SynthsegError, match="not a GLIGEN export over the base"):
        train_world_layout(dataclasses.replace(frozen, init_from=str(base)), tmp_path / "bad", tmp_path / "bad-out")
    assert not (tmp_path / "bad").exists()  # refused before the workdir was claimed


def test_bad_layout_model_recipes():
    with pytest.raises(SynthsegError, match="box_dropout"):
        LayoutModelRecipe(box_dropout=1.0).validate("r")
    with pytest.raises(SynthsegError, match="min_timestep"):
        LayoutModelRecipe(min_timestep=1000).validate("r")
    with pytest.raises(SynthsegError, match="^r: layouts: need 0 < min_size"):  # the section checked where it is read
        load_config(LayoutModelRecipe, dict(layouts=dict(min_size=0.9)), "r")


def test_a_visual_token_reads_only_the_objects_whose_box_holds_it(base):
    unet = build_gligen_unet(load_pipeline(base).unet)
    fusers = [m for m in unet.modules() if isinstance(m, BoxGatedSelfAttention)]
    assert fusers and len(fusers) == sum(1 for name, _ in unet.named_modules() if name.endswith(".fuser"))
    boxes = torch.zeros(1, 30, 4)
    boxes[0, 0], boxes[0, 1] = torch.tensor([0.0, 0.0, 0.5, 0.5]), torch.tensor([0.5, 0.5, 1.0, 1.0])
    masks = torch.zeros(1, 30)
    masks[0, 0] = 1  # object 1 is padding: its box must not matter
    text = torch.randn(1, 16, unet.config.cross_attention_dim)
    gligen = dict(boxes=boxes, positive_embeddings=torch.randn(1, 30, 384), masks=masks)
    for height, width in ((4, 4), (8, 4)):  # latents; the hooks set each call's boxes and each block's grid
        with torch.no_grad():
            unet(torch.randn(1, 4, height, width), 500, encoder_hidden_states=text, cross_attention_kwargs={"gligen": gligen})
        assert (height, width) in {f.grid for f in fusers} and all(f.boxes is boxes for f in fusers)
    fuser = fusers[0]
    fuser.grid = (4, 4)
    with torch.no_grad():
        fuser.alpha_attn.fill_(1.0)
        x, objs = torch.randn(1, 16, fuser.linear.out_features), torch.randn(1, 30, fuser.linear.in_features)
        out = fuser(x, objs)
        for k, changed_tokens in ((0, [0, 1, 4, 5]), (1, [])):  # object 0 fills the top-left 2x2 cells
            other = objs.clone()
            other[0, k] += 1.0
            moved = (fuser(x, other) - out).abs().amax(-1)[0]
            assert sorted(torch.nonzero(moved > 1e-6).flatten().tolist()) == changed_tokens
    fuser.grid = (3, 3)
    with pytest.raises(SynthsegError, match="grid and boxes"):
        fuser(x, objs)


def test_the_shipped_card_says_what_its_recipe_says():
    """The bundled world-layout's card is what `train-world-layout --recipe world-layout-finetune` writes: the sampling
    settings chosen after training (box attention, candidates, count guidance) are in the recipe, not only the card."""
    from synthseg.registry import BUNDLES
    from synthseg.train.world_layout import CARD_LAYOUT_LIMITS, load_layout_recipe

    recipe = load_layout_recipe("world-layout-finetune")
    card = json.loads((BUNDLES["world-layout"].pipeline / "synthseg.json").read_text())
    expected = {k: v for k, v in dataclasses.asdict(recipe.layouts).items() if k in CARD_LAYOUT_LIMITS}
    assert card["layouts"] == expected and card["layouts"]["count_guidance"] > 0
    assert (card["num_inference_steps"], card["guidance_scale"]) == (recipe.num_inference_steps, recipe.guidance_scale)
