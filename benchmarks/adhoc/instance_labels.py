"""Ad hoc: how instance-level Protocol ii's layout dataset (a) labels its instances, tried without generating again.
RESULTS.md, "Ad hoc trials (world)", session 52.

`make WORK`: builds (a) exactly as `bench_protocol_ii_instances.py` does (WORK/layouts), and also saves each item's
module probabilities and layout (WORK/probs/NNNNNN.npz), through a wrapper around `dataset.write_item`.
`relabel WORK NAME KEY=VALUE,...`: writes WORK/NAME, the dataset (a) would be with those `layouts` fields changed
(e.g. margin=0.05; a field of the recipe's top level, such as min_instance_area, where the section has none): the same
images, each item's instances cut again by `LayoutGeneration.cut` and written by `dataset.write_item` and
`dataset.finalize`, as make-dataset would (the images do not depend on these fields; the probabilities are kept in
fp16, which moves 41 pixels of the 534,176 in base's instances).
`judge WORK NAME...`: each relabelled dataset's instances against the world annotator's on the same images (a
diagnosis: the annotator learnt every class from exact masks): instances matched one to one by mask IoU, and the
share of annotator instances matched at IoU >= 0.5 and 0.75, of module instances matched at 0.5, and the mean IoU of
those matched at 0.5.
`swap WORK NAME masks|clean`: a diagnosis of the (a) dataset WORK/base, written as WORK/NAME-masks or NAME-clean:
"masks", each instance of ours that the annotator matches (as `judge` matches them) takes the annotator's mask; "clean",
each instance of ours that the annotator does not match is left out.
`train WORK STEPS NAME...`: the world annotator's architecture trained on each, scored by mask AP on the 500 held-out
scenes, as the bench does.

Run from the repository root: python benchmarks/adhoc/instance_labels.py make|relabel|judge|train WORK ...
"""
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import synthseg.dataset as dataset
from synthseg.dataset import build_dataset, finalize, load_dataset_recipe, plan, read_recipe
from synthseg.layouts import LayoutGeneration

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
mode, work = sys.argv[1], Path(sys.argv[2])


def make():
    recipe = load_dataset_recipe("world", model="world-layout", grounding="world", per_class=50, per_pair=0, layouts=True, spare=0.5)
    (work / "probs").mkdir(parents=True, exist_ok=True)
    write_item = dataset.write_item

    def saving(directory, item, image, probs, recipe, provenance, layout=None):
        np.savez_compressed(work / "probs" / f"{item.index:06d}.npz", probs=probs.numpy().astype(np.float16))
        image.save(work / "probs" / f"{item.index:06d}.png")  # dropped items' too
        write_item(directory, item, image, probs, recipe, provenance, layout)

    dataset.write_item = saving
    print(build_dataset(recipe, work / "layouts"))


def relabel(name, changes):
    from PIL import Image

    source = read_recipe(work / "layouts")
    pairs = [pair.split("=") for pair in changes.split(",") if pair]
    fields = {key: type(getattr(source.layouts, key))(value) for key, value in pairs if hasattr(source.layouts, key)}
    top = {key: type(getattr(source, key))(value) for key, value in pairs if not hasattr(source.layouts, key)}
    recipe = replace(source, layouts=replace(source.layouts, **fields), **top)
    out = work / name
    dataset.claim(out, recipe)
    for sub in ("images", "masks", "records"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for item in plan(recipe):
        old = json.loads((work / "layouts" / "records" / f"{item.index:06d}.json").read_text())
        provenance = {k: old[k] for k in ("model", "model_hash", "grounding_hash", "captioner_hash", "counter_hash") if k in old}
        probs = torch.from_numpy(np.load(work / "probs" / f"{item.index:06d}.npz")["probs"].astype(np.float32))
        image = Image.open(work / "probs" / f"{item.index:06d}.png").convert("RGB")
        generation = LayoutGeneration.cut(item, image, probs, recipe.layouts.margin)
        dataset.write_item(out, item, image, probs, recipe, provenance, generation)
    print(name, finalize(out, recipe))


def annotator_instances(stems):
    """The world annotator's instances on each item's image, cached under WORK/annotator: stem -> [(mask, class)]."""
    from PIL import Image

    from synthseg.annotators import load_annotator
    from synthseg.world import WORLD_CLASSES

    cache = work / "annotator"
    cache.mkdir(exist_ok=True)
    todo = [s for s in stems if not (cache / f"{s}.npz").is_file()]
    annotator = load_annotator("world") if todo else None
    for start in range(0, len(todo), 16):
        chunk = todo[start:start + 16]
        images = [np.array(Image.open(work / "probs" / f"{s}.png").convert("RGB")) for s in chunk]
        with torch.no_grad():
            found = annotator.annotate(images, [list(WORLD_CLASSES)] * len(images))
        for s, instances in zip(chunk, found):
            masks = np.stack([i.mask for i in instances]) if instances else np.zeros((0, *images[0].shape[:2]), bool)
            np.savez_compressed(cache / f"{s}.npz", masks=masks, classes=np.array([i.class_name for i in instances], dtype=str))
    out = {}
    for s in stems:
        data = np.load(cache / f"{s}.npz")
        out[s] = list(zip(data["masks"], data["classes"].tolist()))
    return out


def judge(name):
    from pycocotools.coco import COCO

    coco = COCO(str(work / name / "annotations.json"))
    stems = {i: Path(coco.loadImgs(i)[0]["file_name"]).stem for i in sorted(coco.getImgIds())}
    truth = annotator_instances(list(stems.values()))
    ious = [np.logical_and(m, t).sum() / np.logical_or(m, t).sum() for image_id, stem in stems.items()
            for m, _, t in matches(coco, image_id, truth[stem]) if t is not None]
    found, ours = sum(len(truth[s]) for s in stems.values()), len(coco.getAnnIds())
    hit5, hit75 = len(ious), sum(iou >= 0.75 for iou in ious)
    print(f"{name}: {len(stems)} images; annotator instances {found}, ours {ours}; annotator's matched at 0.5 {hit5 / found:.1%}, "
          f"at 0.75 {hit75 / found:.1%}; ours matched at 0.5 {hit5 / ours:.1%}; mean IoU of matches {np.mean(ious):.3f}", flush=True)


def swap(name, how):
    """Write WORK/NAME-HOW from WORK/base: its images (linked) and its instances, changed as `how` says."""
    from pycocotools.coco import COCO

    from synthseg.formats import coco_annotation, coco_document, write_json_atomic
    from synthseg.world import WORLD_CLASSES

    base, out = work / "base", work / f"{name}-{how}"
    coco = COCO(str(base / "annotations.json"))
    stems = {i: Path(coco.loadImgs(i)[0]["file_name"]).stem for i in sorted(coco.getImgIds())}
    truth = annotator_instances(list(stems.values()))
    annotations = []
    for image_id, stem in stems.items():
        for mask, class_name, match in matches(coco, image_id, truth[stem]):
            if match is None and how == "clean":
                continue
            mask = match if match is not None and how == "masks" else mask
            annotations.append(coco_annotation(len(annotations) + 1, image_id, WORLD_CLASSES.index(class_name) + 1, mask))
    out.mkdir(exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to((base / "images").resolve())
    write_json_atomic(out / "annotations.json", coco_document(coco.dataset["images"], annotations, WORLD_CLASSES, f"instance labels: {how}"))
    print(f"{out.name}: {len(annotations)} instances", flush=True)


def matches(coco, image_id, theirs):
    """[(our mask, class, the annotator's matched mask or None)] for one image: one to one, greedy by mask IoU >= 0.5,
    same class."""
    from synthseg.world import WORLD_CLASSES

    mine = [(coco.annToMask(a).astype(bool), WORLD_CLASSES[a["category_id"] - 1]) for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
    pairs = sorted(((np.logical_and(m, t).sum() / max(np.logical_or(m, t).sum(), 1), i, j)
                    for i, (m, c) in enumerate(mine) for j, (t, d) in enumerate(theirs) if c == d), reverse=True)
    matched, used = {}, set()
    for iou, i, j in pairs:
        if iou >= 0.5 and i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return [(m, c, theirs[matched[i]][0] if i in matched else None) for i, (m, c) in enumerate(mine)]


def train(steps, name):
    from synthseg.annotators import MaskRCNNAnnotator
    from synthseg.train.annotator import load_annotator_recipe, train_world_annotator, world_mask_ap

    out = work / f"annotator-{name}"
    if not (out / "metrics.json").is_file():
        recipe = replace(load_annotator_recipe("world-annotator"), steps=steps, train_data=str((work / name).resolve()))
        train_world_annotator(recipe, work / f"annotator-{name}-work", out)
        (out / "metrics.json").write_text(json.dumps(world_mask_ap(MaskRCNNAnnotator.from_pretrained(out), 500), indent=2) + "\n")
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"{name}: mask AP {100 * metrics['mask_ap']:.1f} AP50 {100 * metrics['mask_ap50']:.1f} AP75 {100 * metrics['mask_ap75']:.1f}", flush=True)


if mode == "make":
    make()
elif mode == "relabel":
    relabel(sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
elif mode == "judge":
    for name in sys.argv[3:]:
        judge(name)
elif mode == "swap":
    swap(sys.argv[3], sys.argv[4])
elif mode == "train":
    for name in sys.argv[4:]:
        train(int(sys.argv[3]), name)
