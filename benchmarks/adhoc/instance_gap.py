"""Ad hoc: where instance-level Protocol ii's layout dataset (a) loses to the oracle (c). The same world annotator
architecture and training as `bench_protocol_ii_instances.py`, on more datasets of as many images (RESULTS.md, "Ad hoc
trials (world)", session 49):

- plan: the world itself renders each kept image's phrases in its boxes (`world.render_layout`), exact instances:
  what the layouts ask for, drawn perfectly;
- drawn: (a)'s own images, labelled by the world annotator's instances (all 12 classes; a diagnosis only, the
  annotator learnt every class from exact masks): what the generator drew, labelled (almost) perfectly.

(c) - plan is the cost of the layouts as the world draws them, plan - drawn that of the generator's drawing, drawn - (a)
that of the labels.
`plan@KEY=VALUE,...` renders as many layouts of another plan instead (the dataset's `layouts` section with those
fields changed, layout stream 40), with exact instances: what that plan would give, drawn perfectly.

`scenes` writes WORK/scene-layouts.jsonl, a layouts file of the boxes of training scenes (`world.render_scene`, the
oracle's kind, scenes 1000 on; 1.6 layouts per kept image of LAYOUT_DATASET, for make-dataset --layouts-file), and
renders its first layouts with `render_layout`: layouts taken from the target domain's own boxes, drawn perfectly.
`fitted` renders the same first layouts of that file with each shape fitted to its box's extent (`render_layout`'s fit
"extent" since session 50; session 49 measured a first version here: 24 angles, extents from 512-px renders) instead of
inscribed in the shorter side. `plan` renders with LAYOUT_DATASET's own fit (its recipe.json: "extent" since session 50,
the fit its world-layout learnt); the other modes render as session 49 did, inscribed.
`kept@DATASET` trains on the first as many images of another dataset (e.g. made from that file) as LAYOUT_DATASET keeps.

Run from the repository root: python benchmarks/adhoc/instance_gap.py WORK LAYOUT_DATASET STEPS [plan|drawn|plan@K=V,...|scenes|fitted|kept@DIR ...]
"""
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthseg.annotators import MaskRCNNAnnotator, load_annotator
from synthseg.dataset import load_dataset_recipe, read_recipe
from synthseg.formats import coco_annotation, coco_document, write_json_atomic
from synthseg.layouts import sample_layouts
from synthseg.train.annotator import load_annotator_recipe, train_world_annotator, world_mask_ap
from synthseg.world import WORLD_CLASSES, layout_scene, mask_box, render_layout, render_scene, scene_seed

work, source, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
which = sys.argv[4:] or ["plan", "drawn"]
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
items = [json.loads(line) for line in (source / "metadata.jsonl").read_text().splitlines()]


def write(name, pairs):
    """pairs: (HW3 uint8 image, [(HW bool mask, class name)]) -> a COCO folder under work/name."""
    folder = work / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (image, instances) in enumerate(pairs, start=1):
        file_name = f"{image_id:06d}.png"
        Image.fromarray(image).save(folder / "images" / file_name)
        images.append(dict(id=image_id, file_name=f"images/{file_name}", width=image.shape[1], height=image.shape[0]))
        for mask, class_name in instances:
            annotations.append(coco_annotation(len(annotations) + 1, image_id, WORLD_CLASSES.index(class_name) + 1, mask))
    write_json_atomic(folder / "annotations.json", coco_document(images, annotations, WORLD_CLASSES, f"instance gap: {name}"))
    print(f"{name}: {len(images)} images, {len(annotations)} instances", flush=True)
    return folder


def exact(scene):
    """A rendered scene with its exact instances (those left visible)."""
    return scene.image, [(m, c) for m, c in zip(scene.masks, scene.classes) if m.any()]


def plan():
    fit = read_recipe(source).layouts.fit  # drawn as the layout model learnt them
    for item in items:
        scene = render_layout(scene_seed(item["index"], held_out=False), item["phrases"], item["boxes"], fit=fit)
        yield exact(scene)


def other_plan(changes):
    section = load_dataset_recipe("world", layouts=True, model="world-layout").layouts
    fields = {key: type(getattr(section, key))(value) for key, value in (pair.split("=") for pair in changes.split(","))}
    for layout in sample_layouts(replace(section, seed=40, **fields), list(WORLD_CLASSES), [], len(items)):
        scene = layout_scene(layout, held_out=False, fit="inscribed")
        yield exact(scene)


def scenes():
    lines = []
    for k in range(1000, 1000 + int(1.6 * len(items))):
        scene = render_scene(scene_seed(k, held_out=False))
        lines.append(dict(phrases=scene.classes, boxes=[list(mask_box(m)) for m in scene.masks]))
    (work / "scene-layouts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for k, line in enumerate(lines[:len(items)]):
        scene = render_layout(scene_seed(k, held_out=False), line["phrases"], line["boxes"], fit="inscribed")
        yield exact(scene)


def fitted():
    lines = [json.loads(line) for line in (work / "scene-layouts.jsonl").read_text().splitlines()]
    for k, line in enumerate(lines[:len(items)]):
        scene = render_layout(scene_seed(k, held_out=False), line["phrases"], line["boxes"], fit="extent")
        yield exact(scene)


def kept(folder):
    from pycocotools.coco import COCO

    coco = COCO(str(Path(folder) / "annotations.json"))
    for image_id in sorted(coco.getImgIds())[:len(items)]:
        info = coco.loadImgs(image_id)[0]
        image = np.array(Image.open(Path(folder) / info["file_name"]).convert("RGB"))
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        yield image, [(coco.annToMask(a).astype(bool), WORLD_CLASSES[a["category_id"] - 1]) for a in annotations]


def drawn():
    annotator = load_annotator("world")
    for start in range(0, len(items), 16):
        chunk = items[start:start + 16]
        images = [np.array(Image.open(source / item["file_name"]).convert("RGB")) for item in chunk]
        with torch.no_grad():
            found = annotator.annotate(images, [list(WORLD_CLASSES)] * len(images))
        yield from ((image, [(i.mask, i.class_name) for i in instances]) for image, instances in zip(images, found))


for name in which:
    folder = work / name
    if not (folder / "annotations.json").is_file():
        kind, _, argument = name.partition("@")
        makers = {"plan": plan, "drawn": drawn, "scenes": scenes, "fitted": fitted}
        write(name, {"plan": other_plan, "kept": kept}[kind](argument) if argument else makers[name]())
    out = work / f"annotator-{name}"
    if not (out / "metrics.json").is_file():
        recipe = replace(load_annotator_recipe("world-annotator"), steps=steps, train_data=str(folder.resolve()))
        train_world_annotator(recipe, work / f"annotator-{name}-work", out)
        metrics = world_mask_ap(MaskRCNNAnnotator.from_pretrained(out), 500)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"{name}: mask AP {100 * metrics['mask_ap']:.1f} AP50 {100 * metrics['mask_ap50']:.1f} AP75 {100 * metrics['mask_ap75']:.1f}", flush=True)
