"""Layouts: deterministic sampling within the recipe's limits, layouts files with one-line errors, and
instance masks that keep touching objects of one class apart."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from synthseg import SynthsegError
from synthseg.config import load_config
from synthseg.dataset import DatasetRecipe
from synthseg.layouts import Layout, LayoutRecipe, box_fill, box_iou, instance_masks, read_layouts, sample_layouts
from synthseg.prompts import describe
from synthseg.world import WORLD_CLASSES

CLASSES = list(WORLD_CLASSES)
PAIRS = [["circle", "square"], ["star", "heart"]]


def test_sampling_is_deterministic_and_a_layout_does_not_depend_on_the_count():
    recipe = LayoutRecipe(seed=3)
    first = sample_layouts(recipe, CLASSES, PAIRS, 40)
    assert first == sample_layouts(recipe, CLASSES, PAIRS, 40)
    assert sample_layouts(recipe, CLASSES, PAIRS, 10) == first[:10]
    assert sample_layouts(replace(recipe, seed=4), CLASSES, PAIRS, 40) != first


def test_a_dataset_s_seed_draws_its_layouts_unless_its_section_names_one(tmp_path):
    from synthseg.dataset import load_dataset_recipe, plan

    zero, one = (load_dataset_recipe("world", layouts=True, per_class=2, seed=seed) for seed in (0, 1))
    assert (zero.layouts.seed, one.layouts.seed) == (0, 1)
    assert [(lay.phrases, lay.boxes, lay.seed) for lay in plan(zero)] != [(lay.phrases, lay.boxes, lay.seed) for lay in plan(one)]
    (tmp_path / "named.yaml").write_text("classes: world\nper_class: 2\nlayouts: {seed: 5}\n")
    assert load_dataset_recipe(recipe=tmp_path / "named.yaml", seed=1).layouts.seed == 5


def test_sampled_layouts_keep_the_recipe_s_limits():
    recipe = LayoutRecipe(min_objects=1, max_objects=4, repeat_fraction=0.5, max_overlap=0.2, min_size=0.2, max_size=0.6, max_aspect=2.0)
    layouts = sample_layouts(recipe, CLASSES, PAIRS, 300)
    counts = [len(layout.phrases) for layout in layouts]
    assert min(counts) == 1 and max(counts) == 4 and len(set(counts)) == 4
    assert any(len(layout.classes) < len(layout.phrases) for layout in layouts)  # same-class repeats
    assert any(len(layout.phrases) >= 3 and len(layout.classes) == 1 for layout in layouts)  # "three circles" can be asked for
    assert any(layout.classes in PAIRS for layout in layouts)
    for layout in layouts:
        assert len(layout.boxes) == len(layout.phrases) and set(layout.phrases) <= set(CLASSES)
        for i, box in enumerate(layout.boxes):
            width, height = box[2] - box[0], box[3] - box[1]
            assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
            assert 0.2 - 1e-3 <= min(width, height) and max(width, height) <= 0.6 + 1e-3
            assert max(width / height, height / width) <= 2.0 + 1e-3
            assert all(box_iou(box, other) <= 0.2 for other in layout.boxes[:i])
    assert layouts[0].prompt.startswith("a photograph of ")


def test_prompts_name_each_class_once_with_its_count():
    assert describe(["circle", "star", "star", "arrow"]) == "a circle, two stars and an arrow"
    assert describe(["cross", "cross", "cross"]) == "three crosses"
    assert describe(["sheep", "person", "person", "hourglass", "hourglass", "dining table"]) == \
        "a sheep, two people, two hourglasses and a dining table"


def test_bad_recipe_values_are_refused_by_name(tmp_path):
    for bad, message in [(dict(min_objects=3, max_objects=2), "above max_objects"), (dict(max_overlap=1.5), "max_overlap"),
                         (dict(box_attention=-1.0), "box_attention and count_guidance not negative"),
                         (dict(count_guidance=-1.0), "box_attention and count_guidance not negative"),
                         (dict(min_size=0.7, max_size=0.5), "min_size"), (dict(templates=["a {} and {}"]), "one slot"),
                         (dict(fit="centred"), "fit must be one of extent, inscribed, got 'centred'"),
                         (dict(strays="keep"), "strays must be one of unlabelled, instances, drop, got 'keep'")]:
        with pytest.raises(SynthsegError, match=message):
            load_config(LayoutRecipe, bad, "recipe.yaml")
    with pytest.raises(SynthsegError, match=r"^recipe.yaml: layouts: strays must be one of"):  # the section named once
        load_config(DatasetRecipe, dict(classes="world", layouts=dict(strays="keep")), "recipe.yaml")


def write(tmp_path, *lines):
    path = tmp_path / "layouts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_layouts_file_reads_with_prompts_and_seeds_filled_in(tmp_path):
    path = write(tmp_path, json.dumps(dict(phrases=["circle", "circle"], boxes=[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]])), "",
                 json.dumps(dict(prompt="two stars", phrases=["star"], boxes=[[0.1, 0.1, 0.4, 0.6]], seed=7)))
    first, second = read_layouts(path, CLASSES)
    assert first.prompt == "a photograph of two circles" and first.boxes == [(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)]
    assert second == Layout(1, "two stars", ["star"], [(0.1, 0.1, 0.4, 0.6)], 7)
    assert read_layouts(path, CLASSES)[0].seed == first.seed


@pytest.mark.parametrize("line, message", [
    ('{"phrases": ["circle"], "boxes": [[0, 0, 0.5', "line 2: malformed layout"),
    ('{"phrases": ["circle"]}', "line 2: malformed layout (missing 'boxes')"),
    ("[1, 2]", "line 2: malformed layout"),
    ('{"phrases": "circle", "boxes": [[0, 0, 0.5, 0.5]]}', "line 2: malformed layout (not a JSON object with lists of phrases and boxes)"),
    ('{"phrases": ["circle"], "boxes": [[0, 0, 0.5, 0.5]], "seed": 1.5}', "line 2: seed must be an integer from 0 to 2**63 - 1, got 1.5"),
    ('{"phrases": ["circle"], "boxes": [[0, 0, 0.5, 0.5]], "seed": -1}', "line 2: seed must be an integer from 0 to 2**63 - 1, got -1"),
    ('{"phrases": ["circle"], "boxes": [[0, 0, 1.5, 0.5]]}', "line 2: box [0.0, 0.0, 1.5, 0.5] must be [x0, y0, x1, y1] with every value in [0, 1]"),
    ('{"phrases": ["circle"], "boxes": [[0.5, 0, 0.5, 0.5]]}', "line 2: box [0.5, 0.0, 0.5, 0.5] has zero area"),
    ('{"phrases": ["dog"], "boxes": [[0, 0, 0.5, 0.5]]}', "line 2: phrase 'dog' is not in the class set"),
    ('{"phrases": ["circle", "star"], "boxes": [[0, 0, 0.5, 0.5]]}', "line 2: a layout needs one box per phrase"),
    ('{"phrases": ["circle", "circle", "circle"], "boxes": [[0, 0, 0.2, 0.2], [0, 0, 0.3, 0.3], [0, 0, 0.4, 0.4]]}',
     "line 2: 3 boxes, but the model's position net takes at most 2"),
])
def test_a_bad_layout_line_is_named_by_its_number(tmp_path, line, message):
    path = write(tmp_path, '{"phrases": ["star"], "boxes": [[0, 0, 0.5, 0.5]]}', line)
    with pytest.raises(SynthsegError) as error:
        read_layouts(path, CLASSES, max_boxes=2)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_and_empty_layouts_files(tmp_path):
    with pytest.raises(SynthsegError, match="layouts file not found"):
        read_layouts(tmp_path / "nope.jsonl", CLASSES)
    with pytest.raises(SynthsegError, match="no layouts"):
        read_layouts(write(tmp_path, ""), CLASSES)


def test_touching_objects_of_one_class_come_out_as_separate_instances():
    probs = np.zeros((2, 64, 64), dtype=np.float32)
    probs[0, 16:40, 8:32] = 0.9   # two touching circles: one connected region of class 0
    probs[0, 16:40, 32:56] = 0.8
    probs[1, 44:60, 44:60] = 0.95  # a star, overlapping the second circle's margin
    layout = Layout(0, "", ["circle", "circle", "star"], [(8 / 64, 16 / 64, 32 / 64, 40 / 64), (32 / 64, 16 / 64, 56 / 64, 40 / 64),
                                                         (44 / 64, 44 / 64, 60 / 64, 60 / 64)], 0)
    left, right, star = instance_masks(probs, ["circle", "star"], layout, margin=0.1)
    assert not (left & right).any() and not (left & star).any() and not (right & star).any()
    assert left[16:40, 8:32].all() and not left[:, 33:].any()
    assert right[16:40, 33:56].all() and not right[:, :31].any()
    assert star[44:60, 44:60].all() and star.sum() == 16 * 16
    assert box_fill(left, layout.boxes[0]) == 1.0 and box_fill(np.zeros_like(left), layout.boxes[0]) == 0.0
    assert not instance_masks(probs * 0.5, ["circle", "star"], layout, margin=0.1)[0].any()  # below the threshold: no instance


@pytest.mark.parametrize("strays", ["unlabelled", "instances", "drop"])
def test_an_object_drawn_where_no_box_asked_follows_layouts_strays(tmp_path, strays):
    """A circle the generator drew outside the layout's one box, and a fringe of the boxed circle past its margin: the
    fringe stays part of its box's object (it touches the box's instance), the stray is unlabelled, an instance, or
    drops the image."""
    from PIL import Image

    from synthseg.dataset import DatasetRecipe, write_item
    from synthseg.layouts import LayoutGeneration

    probs = np.zeros((1, 64, 64), dtype=np.float32)
    probs[0, 8:32, 8:40] = 0.9  # the boxed circle, reaching past its box's margin to x = 40
    probs[0, 44:60, 44:60] = 0.9  # a stray circle
    layout = Layout(0, "a photograph of a circle", ["circle"], [(8 / 64, 8 / 64, 32 / 64, 32 / 64)], 0)
    recipe = load_config(DatasetRecipe, {"classes": "circle,star", "layouts": {"strays": strays}})
    made = LayoutGeneration.cut(layout, Image.new("RGB", (64, 64)), torch.from_numpy(probs), margin=0.1)
    for sub in ("images", "masks", "records"):
        (tmp_path / sub).mkdir()
    write_item(tmp_path, layout, made.image, made.probs, recipe, {}, made)
    record = json.loads((tmp_path / "records" / "000000.json").read_text())
    if strays == "drop":
        assert record["dropped"] == "an object of a layout's class lies outside its boxes" and not (tmp_path / "images" / "000000.png").exists()
        return
    from pycocotools import mask as mask_utils

    found = [mask_utils.decode(a["segmentation"]).astype(bool) for a in record["instances"]]
    assert record["dropped"] is None and np.array_equal(found[0], made.instances[0]) and not found[0][:, 36:].any()
    assert len(found) == (2 if strays == "instances" else 1)
    if strays == "instances":
        assert found[1].sum() == 16 * 16 and found[1][44:60, 44:60].all()


def test_a_box_whose_instance_is_too_small_to_write_still_claims_its_region(tmp_path):
    """A box's instance under min_instance_area is not written, but the region it touches is its object, not a
    stray: with `strays: drop` the image is kept, with `instances` the region is not written as a stray."""
    from PIL import Image

    from synthseg.dataset import DatasetRecipe, write_item
    from synthseg.layouts import LayoutGeneration

    probs = np.zeros((1, 64, 64), dtype=np.float32)
    probs[0, 8:12, 8:40] = 0.9  # a thin circle: 4x4 px in its small box (and margin), 4x32 px in all
    layout = Layout(0, "a photograph of a circle", ["circle"], [(8 / 64, 8 / 64, 12 / 64, 12 / 64)], 0)
    made = LayoutGeneration.cut(layout, Image.new("RGB", (64, 64)), torch.from_numpy(probs), margin=0.0)
    assert 0 < made.instances[0].sum() < 20 and made.fills[0] == 1.0
    for strays in ("drop", "instances"):
        recipe = load_config(DatasetRecipe, {"classes": "circle,star", "min_instance_area": 20, "layouts": {"strays": strays}})
        out = tmp_path / strays
        for sub in ("images", "masks", "records"):
            (out / sub).mkdir(parents=True)
        write_item(out, layout, made.image, made.probs, recipe, {}, made)
        record = json.loads((out / "records" / "000000.json").read_text())
        assert record["dropped"] is None and record["instances"] == []


def test_a_gligen_pipeline_generates_a_layout_and_the_module_cuts_one_instance_per_phrase(tmp_path):
    """A tiny GLIGEN UNet built from configs (gated self-attention plus the position net), loaded through the
    one loader: the boxes reach the UNet, the capture is the text-only one, and every phrase gets a mask."""
    from synthseg import GroundingConfig, GroundingModule
    from synthseg.layouts import check_takes_layouts, generate_layout
    from synthseg.pipeline import load_pipeline
    from synthseg.refine import refine_masks
    from synthseg.tiny import tiny_pipeline

    pipe = load_pipeline(_gligen_folder(tmp_path / "gligen"))
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "StableDiffusionGLIGENPipeline"
    check_takes_layouts(pipe)
    torch.manual_seed(0)
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                          token_patch=2)).eval()
    layout = Layout(0, "a photograph of two dogs and a cat", ["dog", "dog", "cat"], [(0, 0, .4, .4), (.5, 0, 1, .5), (.2, .5, .8, 1)], 7)
    options = dict(guidance_scale=2.0, num_inference_steps=4, scheduled_sampling_beta=0.5)  # gated layers in 2 of 4 steps
    first = generate_layout(pipe, module, layout, **options)
    assert first.probs.shape == (2, 32, 32) and len(first.instances) == 3 and len(first.fills) == 3
    refined = generate_layout(pipe, module, layout, **options, refine=20)  # PAMR on the masks, then the instances cut from them
    expected = refine_masks(first.image, first.probs, 20)
    torch.testing.assert_close(refined.probs, expected)
    cut = instance_masks(expected.numpy(), layout.classes, layout, LayoutRecipe.margin)
    assert all(np.array_equal(m, e) for m, e in zip(refined.instances, cut)) and not torch.equal(refined.probs, first.probs)
    for mask, box in zip(first.instances, layout.boxes):  # an instance stays within its box and margin
        ys, xs = np.nonzero(mask)
        assert mask.shape == (32, 32) and (len(xs) == 0 or (xs.min() >= (box[0] - .1 * (box[2] - box[0])) * 32 - 1))
    again = generate_layout(pipe, module, layout, **options)
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))  # seeded by the layout
    moved = generate_layout(pipe, module, replace(layout, boxes=[(.6, .6, 1, 1), (0, .5, .4, 1), (0, 0, .5, .4)]), **options)
    assert not np.array_equal(np.asarray(moved.image), np.asarray(first.image))  # the boxes steer the gated layers
    processors = dict(pipe.unet.attn_processors)
    steered = generate_layout(pipe, module, layout, **options, box_attention=5.0)
    assert not np.array_equal(np.asarray(steered.image), np.asarray(first.image))  # the bias reaches the cross-attention
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items())  # and is gone after
    unsteered = dict(options, scheduled_sampling_beta=0.0)  # gated layers off: box attention is off with them
    assert np.array_equal(np.asarray(generate_layout(pipe, module, layout, **unsteered, box_attention=5.0).image),
                          np.asarray(generate_layout(pipe, module, layout, **unsteered).image))
    with pytest.raises(SynthsegError, match="takes no layouts: box-grounded generation needs a GLIGEN pipeline"):
        generate_layout(tiny_pipeline(), module, layout, **options)
    with pytest.raises(SynthsegError, match="the model's position net takes at most 30"):
        generate_layout(pipe, module, replace(layout, phrases=["dog"] * 31, boxes=[(0, 0, .5, .5)] * 31), **options)
    late = dict(options, scheduled_sampling_beta=0.75)  # the gated layers in 3 of 4 steps: off at the captured last one
    assert generate_layout(pipe, module, layout, **late).probs.shape == (2, 32, 32)
    with pytest.raises(SynthsegError, match=r"runs GLIGEN's gated layers at the captured step \(4 of 4\).*3 / 4 or less"):
        generate_layout(pipe, module, layout, **dict(options, scheduled_sampling_beta=1.0))


def test_box_attention_biases_each_class_s_tokens_toward_its_boxes_in_the_conditional_half_only():
    from synthseg.layouts import BoxAttention, box_region
    from synthseg.tiny import tiny_pipeline

    region = box_region([(0, 0, .5, .25), (.75, .75, 1, 1)], 4, 4).reshape(4, 4)
    assert region.tolist() == [[True, True, False, False], [False] * 4, [False] * 4, [False, False, False, True]]
    assert box_region([(.3, .3, .4, .4)], 2, 2).reshape(2, 2).tolist() == [[True, False], [False, False]]  # a small box keeps a cell

    layout = Layout(0, "two dogs and a cat", ["dog", "dog", "cat"], [(0, 0, .5, .5), (.5, .5, 1, 1), (.5, 0, 1, .5)], 0)
    context = BoxAttention(tiny_pipeline(gligen=True).unet, [layout], [[[1, 2], [4]]], 3, classifier_free_guidance=True)  # an int bias too
    context._latent_hw = (8, 8)
    bias = context.bias(16, 6)  # a 4x4 attention grid, 6 tokens
    assert bias.shape == (2, 16, 6) and not bias[0].any()  # the unconditional half is left alone
    dog, cat = bias[1, :, 1].reshape(4, 4), bias[1, :, 4].reshape(4, 4)
    assert torch.equal(bias[1, :, 1], bias[1, :, 2]) and not bias[1, :, [0, 3, 5]].any()
    assert (dog[:2, :2] == 3).all() and (dog[2:, 2:] == 3).all() and (dog[:2, 2:] == -3).all() and (dog[2:, :2] == -3).all()
    assert (cat[:2, 2:] == 3).all() and (cat[2:] == -3).all() and (cat[:, :2] == -3).all()


def test_class_set_log_probability_is_the_probability_of_exactly_those_classes():
    from synthseg.captioner import class_set_log_probability

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    p = torch.sigmoid(logits)
    expected = torch.log(p[:, 0] * p[:, 2] * (1 - p[:, 1]))
    torch.testing.assert_close(class_set_log_probability(logits, [0, 2]), expected)
    torch.testing.assert_close(class_set_log_probability(logits[0], [1]), torch.log(p[0, 1] * (1 - p[0, 0]) * (1 - p[0, 2])))


def test_a_layout_s_candidates_are_made_in_one_call_and_the_captioner_s_choice_is_kept(tmp_path, make_chooser):
    """generate_layout with candidates: the kept image and masks are those of the candidate that best_candidate
    picks, and the first candidate is the layout's image without a choice."""
    from synthseg import GroundingConfig, GroundingModule
    from synthseg.candidates import best_candidate, candidate_seeds
    from synthseg.layouts import generate_layout
    from synthseg.pipeline import load_pipeline

    pipe = load_pipeline(_gligen_folder(tmp_path / "gligen"))
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                          token_patch=2)).eval()
    recogniser = make_chooser(pipe, ["dog", "cat", "bird"])
    layout = Layout(0, "a photograph of two dogs and a cat", ["dog", "dog", "cat"], [(0, 0, .4, .4), (.5, 0, 1, .5), (.2, .5, .8, 1)], 7)
    options = dict(guidance_scale=2.0, num_inference_steps=4, scheduled_sampling_beta=0.5, box_attention=2.0)
    alone = [generate_layout(pipe, module, replace(layout, seed=seed), **options) for seed in candidate_seeds(layout.seed, 3)]
    chosen = generate_layout(pipe, module, layout, **options, candidates=3, recogniser=recogniser)
    best = best_candidate(pipe, recogniser, layout.classes, [made.image for made in alone], phrases=layout.phrases)
    pixels = np.asarray(chosen.image).astype(int)
    assert np.abs(pixels - np.asarray(alone[best].image).astype(int)).max() <= 1  # the same image, made in a batch of 3
    assert all(np.abs(pixels - np.asarray(other.image).astype(int)).max() > 1 for k, other in enumerate(alone) if k != best)
    torch.testing.assert_close(chosen.probs, alone[best].probs, atol=1e-3, rtol=0)
    with pytest.raises(SynthsegError, match="needs an implicit captioner"):
        generate_layout(pipe, module, layout, **options, candidates=2)
    with pytest.raises(SynthsegError, match="layout 0: the captioner does not know cat"):  # the judge's error names its layout
        generate_layout(pipe, module, layout, **options, candidates=2, recogniser=make_chooser(pipe, ["dog", "bird"]))


def _gligen_folder(directory):
    """A tiny GLIGEN pipeline folder with its gates open (GLIGEN starts them shut)."""
    from diffusers.models.attention import GatedSelfAttentionDense

    from synthseg.tiny import tiny_pipeline

    gligen = tiny_pipeline(gligen=True)
    for layer in gligen.unet.modules():
        if isinstance(layer, GatedSelfAttentionDense):
            layer.alpha_attn.data.fill_(1.0)
            layer.alpha_dense.data.fill_(1.0)
    gligen.save_pretrained(directory)
    return directory


def test_make_dataset_with_a_layouts_file_writes_one_coco_instance_per_box(tmp_path):
    """`make-dataset --layouts-file` on a GLIGEN folder: COCO instances are exactly the non-empty per-box masks
    that `generate_layout` gives for the same layout and seed, several of one class where the file asks."""
    from pycocotools.coco import COCO
    from typer.testing import CliRunner

    from synthseg import GroundingConfig, GroundingModule
    from synthseg.cli import app
    from synthseg.layouts import generate_layout
    from synthseg.pipeline import load_pipeline

    folder = _gligen_folder(tmp_path / "gligen")
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(3)
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                          token_patch=2)).eval()
    with torch.no_grad():  # a sure module: every class certain everywhere, so each box's instance is its own region
        module.pixel_embed.weight.zero_(), module.pixel_embed.bias.fill_(1.0)
        module.mask_mlp[-1].weight.zero_(), module.mask_mlp[-1].bias.fill_(1.0)
    module.save_pretrained(tmp_path / "module")
    lines = [{"phrases": ["dog", "dog", "cat"], "boxes": [[0, 0, .45, .45], [.5, 0, 1, .45], [.1, .5, .9, 1]], "seed": 1},
             {"prompt": "a photograph of a cat", "phrases": ["cat"], "boxes": [[.2, .2, .8, .8]]}]
    (tmp_path / "layouts.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("classes: dog,cat\nrequire_all_classes: false\nnum_inference_steps: 4\nguidance_scale: 2.0\n"
                      "layouts: {min_fill: 0.0, margin: 0.1}\n")
    out = tmp_path / "ds"
    args = ["make-dataset", "--recipe", str(recipe), "--model", str(folder), "--grounding", str(tmp_path / "module"),
            "--layouts-file", str(tmp_path / "layouts.jsonl"), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    coco = COCO(str(out / "annotations.json"))
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["phrases"] for r in records] == [line["phrases"] for line in lines] and records[1]["boxes"] == [[.2, .2, .8, .8]]
    for record, image_id in zip(records, sorted(coco.getImgIds())):
        layout = Layout(record["index"], record["prompt"], record["phrases"], [tuple(b) for b in record["boxes"]], record["seed"])
        made = generate_layout(pipe, module, layout, guidance_scale=2.0, num_inference_steps=4, margin=0.1)
        expected = [(["dog", "cat"].index(p) + 1, m) for p, m in zip(layout.phrases, made.instances) if m.sum() >= 4]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert [a["category_id"] for a in annotations] == [c for c, _ in expected]
        for annotation, (_, mask) in zip(annotations, expected):
            assert np.array_equal(coco.annToMask(annotation).astype(bool), mask)
    assert [a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=sorted(coco.getImgIds())[0]))].count(1) == 2  # two dogs
    again = CliRunner().invoke(app, args)  # finished: the same command changes nothing
    assert again.exit_code == 0 and json.loads((out / "annotations.json").read_text()) == coco.dataset


@pytest.mark.parametrize("args, message", [
    (["--candidates", "2", "--captioner", "none"], "candidates 2 needs a per-class implicit captioner"),  # a text prompt's
    (["--candidates", "2", "--model", "runs/no-such-model"], "candidates 2 needs a per-class implicit captioner"),  # no bundle, no captioner
    (["--candidates", "0"], "candidates must be at least 1, got 0"),
    (["--layouts", "--candidates", "0"], "layouts: candidates must be at least 1, got 0"),
    (["--layouts", "--candidates", "2", "--captioner", "none"], "layouts.candidates 2 needs a per-class implicit captioner"),
    (["--layouts", "--candidates", "2", "--model", "runs/no-such-gligen"], "layouts.candidates 2 needs a per-class implicit captioner"),
    (["--layouts", "--captioner", "no/such/captioner"], "no captioner at no/such/captioner"),
    (["--layouts", "--counter", "no/such/counter"], "no counter at no/such/counter"),
    (["--layouts", "--candidates", "1", "--count-guidance", "0", "--counter", "world-layout"], "a counter judges candidates or guides sampling"),
    (["--counter", "world-layout"], "a counter judges candidates or guides sampling: it needs candidates above 1 or count_guidance above 0"),
    (["--count-guidance", "1"], "count_guidance follows a counter's gradient: give one"),  # the world's bundle has no counter
    (["--count-guidance", "-1", "--model", "world-dit"], "count_guidance must be 0 or more, got -1.0"),
    (["--count-guidance", "1", "--model", "world-dit", "--counter", "none"], "count_guidance follows a counter's gradient: give one"),
    (["--layouts", "--count-guidance", "-1"], "margin, box_attention and count_guidance not negative"),
    (["--layouts", "--count-guidance", "1", "--counter", "none"], "layouts.count_guidance follows a counter's gradient: give one"),
])
def test_make_dataset_bad_candidate_settings_give_one_error_line_and_write_nothing(tmp_path, args, message):
    from typer.testing import CliRunner

    from synthseg.cli import app

    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["make-dataset", "--per-class", "1", *args, "--out", str(out)])
    assert result.exit_code == 1 and message in result.output and result.output.count("error:") == 1, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_make_dataset_refuses_count_guidance_on_a_scheduler_it_cannot_read_before_writing(tmp_path, make_counter):
    from diffusers import EulerDiscreteScheduler
    from typer.testing import CliRunner

    from synthseg import GroundingConfig, GroundingModule
    from synthseg.cli import app
    from synthseg.pipeline import load_pipeline

    pipe = load_pipeline(_gligen_folder(tmp_path / "gligen"))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "euler")
    GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                 token_patch=2)).save_pretrained(tmp_path / "module")
    make_counter(["dog", "cat"], max_count=2).model.save_pretrained(tmp_path / "counter")
    (tmp_path / "layouts.jsonl").write_text(json.dumps({"phrases": ["dog", "cat"], "boxes": [[0, 0, .5, .5], [.5, .5, 1, 1]]}) + "\n")
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["make-dataset", "--classes", "dog,cat", "--model", str(tmp_path / "euler"), "--grounding",
                                      str(tmp_path / "module"), "--layouts-file", str(tmp_path / "layouts.jsonl"), "--count-guidance", "1",
                                      "--counter", str(tmp_path / "counter"), "--num-inference-steps", "4", "--out", str(out)])
    assert result.exit_code == 1 and result.output.count("error:") == 1, result.output
    assert "count guidance needs flow matching, or a DDPM-type scheduler predicting epsilon or v" in result.output and "EulerDiscreteScheduler" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_make_dataset_refuses_gated_layers_at_the_captured_step_before_writing(tmp_path):
    from typer.testing import CliRunner

    from synthseg.cli import app

    out, recipe = tmp_path / "ds", tmp_path / "late.yaml"
    recipe.write_text("classes: world\nper_class: 1\nper_pair: 0\nlayouts: {scheduled_sampling_beta: 1.0}\n")
    result = CliRunner().invoke(app, ["make-dataset", "--recipe", str(recipe), "--out", str(out)])
    assert result.exit_code == 1 and result.output.count("error:") == 1 and "at the captured step (25 of 25)" in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_make_dataset_layouts_on_a_model_without_gligen_is_refused_before_writing(tmp_path):
    from typer.testing import CliRunner

    from synthseg.cli import app

    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["make-dataset", "--layouts", "--model", "world", "--per-class", "1", "--out", str(out)])
    assert result.exit_code == 1 and "model 'world' takes no layouts: its GLIGEN is 'world-layout'" in result.output
    result = CliRunner().invoke(app, ["make-dataset", "--layouts", "--model", "world-dit", "--per-class", "1", "--out", str(out)])
    assert result.exit_code == 1 and "takes no layouts: box-grounded generation needs a GLIGEN pipeline" in result.output
    assert not out.exists()


def test_make_dataset_layouts_with_no_model_uses_the_bundled_world_gligen(tmp_path):
    """`make-dataset --layouts` alone: the shipped world-layout export draws the boxes, the world's module
    masks them, and a layout's same-class repeats come out as separate COCO instances."""
    from pycocotools.coco import COCO
    from typer.testing import CliRunner

    from synthseg.cli import app
    from synthseg.dataset import file_hash, load_dataset_recipe
    from synthseg.registry import BUNDLES, model_card

    recipe = load_dataset_recipe("world", layouts=True)
    assert recipe.model == "world-layout" and recipe.layouts.max_objects == 4  # the export's card's limits
    assert recipe.layouts.candidates == model_card("world-layout").layouts["candidates"] > 1 and recipe.captioner == "world-layout"
    assert recipe.counter == "world-layout"  # and its counter adds its say
    assert recipe.layouts.count_guidance == model_card("world-layout").layouts["count_guidance"] > 0  # the counter guides, too
    alone = load_dataset_recipe("world", layouts=True, counter="none", count_guidance=0)
    assert alone.counter is None and not alone.count_guided and load_dataset_recipe("world", counter="none").counter is None
    assert load_dataset_recipe("world", layouts=True, candidates=1).captioner is None  # no choice: no captioner
    assert load_dataset_recipe("world", layouts=True, candidates=1, count_guidance=0).counter is None
    guided = load_dataset_recipe("world", layouts=True, candidates=1, count_guidance=2.0)  # guidance alone brings the counter
    assert guided.counter == "world-layout" and guided.captioner is None and guided.count_guided and not guided.chooses
    assert recipe.layouts.scheduled_sampling_beta == model_card("world-layout").layouts["scheduled_sampling_beta"] != 0.3  # and beta
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["make-dataset", "--layouts", "--classes", "circle,ring", "--per-class", "3", "--per-pair", "0",
                                      "--seed", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert records and {r["grounding_hash"] for r in records} == {file_hash(BUNDLES["world"].grounding)}
    assert {r["captioner_hash"] for r in records} == {file_hash(BUNDLES["world"].captioner)}  # the world captioner chose
    assert {r["counter_hash"] for r in records} == {file_hash(BUNDLES["world-layout"].counter)}  # with world-layout's counter
    assert f"and the counter world-layout ({records[0]['counter_hash']})" in (out / "README.md").read_text()
    card = (out / "README.md").read_text()  # the counter guided the sampling too
    assert f"counting guidance 3 while GLIGEN's gated layers run, by the counter world-layout ({records[0]['counter_hash']})" in card
    coco = COCO(str(out / "annotations.json"))
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert sum(counts) >= len(counts) and max(counts) >= 2  # one instance per kept box, several in a layout
