"""Ad hoc: where instance-level Protocol ii's layout dataset (a) loses to the oracle (c). The same world annotator
architecture and training as `bench_protocol_ii_instances.py`, on two more datasets of (a)'s kept layouts:

- plan: the world itself renders each kept image's phrases in its boxes (`world.render_layout`), exact instances:
  what the layouts ask for, drawn perfectly;
- drawn: (a)'s own images, labelled by the world annotator's instances (all 12 classes; a diagnosis only, the
  annotator learnt every class from exact masks): what the generator drew, labelled (almost) perfectly.

(c) - plan is the cost of the layout plan, plan - drawn that of the drawing, drawn - (a) that of the labels.
`plan@KEY=VALUE,...` renders as many layouts of another plan instead (the dataset's `layouts` section with those
fields changed, layout stream 40), with exact instances: what that plan would give, drawn perfectly.

Run from the repository root: python benchmarks/adhoc/instance_gap.py WORK LAYOUT_DATASET STEPS [plan|drawn|plan@K=V,... ...]
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
from synthseg.dataset import load_dataset_recipe
from synthseg.formats import coco_annotation, coco_document, write_json_atomic
from synthseg.layouts import sample_layouts
from synthseg.train.annotator import load_annotator_recipe, train_world_annotator, world_mask_ap
from synthseg.world import WORLD_CLASSES, layout_scene, render_layout, scene_seed

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


def plan():
    for item in items:
        scene = render_layout(scene_seed(item["index"], held_out=False), item["phrases"], item["boxes"])
        yield scene.image, [(m, c) for m, c in zip(scene.masks, scene.classes) if m.any()]


def other_plan(changes):
    section = load_dataset_recipe("world", layouts=True, model="world-layout").layouts
    fields = {key: type(getattr(section, key))(value) for key, value in (pair.split("=") for pair in changes.split(","))}
    for layout in sample_layouts(replace(section, seed=40, **fields), list(WORLD_CLASSES), [], len(items)):
        scene = layout_scene(layout, held_out=False)
        yield scene.image, [(m, c) for m, c in zip(scene.masks, scene.classes) if m.any()]


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
        write(name, other_plan(name.partition("@")[2]) if "@" in name else {"plan": plan, "drawn": drawn}[name]())
    out = work / f"annotator-{name}"
    if not (out / "metrics.json").is_file():
        recipe = replace(load_annotator_recipe("world-annotator"), steps=steps, train_data=str(folder.resolve()))
        train_world_annotator(recipe, work / f"annotator-{name}-work", out)
        metrics = world_mask_ap(MaskRCNNAnnotator.from_pretrained(out), 500)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"{name}: mask AP {100 * metrics['mask_ap']:.1f} AP50 {100 * metrics['mask_ap50']:.1f} AP75 {100 * metrics['mask_ap75']:.1f}", flush=True)
