"""Ad hoc: choose among each layout's candidates (layout_candidates.py's record) by several scores, offline.

Scores: the module's fit (mean box IoU of each phrase's instance, less the share of class masks outside their
boxes), the world captioner's (per-class probabilities of the whole image: log-likelihood of exactly the layout's
classes; per box, the captioner cells' similarity to its class against the best other class), and the annotator's
own choice (an upper bound). Rows: boxes hit, right counts (2+ objects), all classes found (2+ classes).

Run from the repository root: python benchmarks/adhoc/layout_candidates_choices.py RECORD.json [N]
"""
import sys
from dataclasses import replace

sys.path.insert(0, "benchmarks")

import numpy as np
import torch
import torch.nn.functional as F
from bench_layouts import CHOICE_SEEDS, annotator_picks, judge_picks, read_candidates
from scipy import ndimage

from synthseg.captioner import ImplicitCaptioner, Recogniser
from synthseg.dataset import load_dataset_recipe
from synthseg.latents import encode_images, pixel_tensor
from synthseg.layouts import sample_layouts
from synthseg.pipeline import load_pipeline
from synthseg.world import WORLD_CLASSES

records, arrays, n = read_candidates(sys.argv[1:])
torch.set_num_threads(1)
pipe = load_pipeline("world")
recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world"), list(WORLD_CLASSES))
names = list(WORLD_CLASSES)
section = load_dataset_recipe("world", layouts=True, model="world-layout").layouts
count = len(records) // len(CHOICE_SEEDS)
layouts = [lay for seed in CHOICE_SEEDS for lay in sample_layouts(replace(section, seed=seed), names, [], count)]


def box_cells(box, height, width):
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    inside = ((ys >= box[1]) & (ys <= box[3]))[:, None] & ((xs >= box[0]) & (xs <= box[2]))[None, :]
    return inside


features = []  # per layout, per candidate: dict of scores
for i, record in enumerate(records):
    images = arrays[f"images{i}"][:n]
    with torch.no_grad():
        latents = encode_images(pipe, pixel_tensor(images))
        logits = recogniser.class_logits(latents)  # (n, 12)
        cells = recogniser.cell_similarity(latents)  # (n, 12, h, w)
    phrases = record["phrases"]
    if phrases != list(layouts[i].phrases):
        raise SystemExit(f"layout {i} is not the record's")
    classes = list(dict.fromkeys(phrases))
    want = torch.tensor([name in classes for name in names])
    rows = []
    for k, cand in enumerate(record["candidates"][:n]):
        presence = F.logsigmoid(torch.where(want, logits[k], -logits[k])).sum().item()
        margins = []
        for phrase, box in zip(phrases, layouts[i].boxes):
            inside = box_cells(box, *cells.shape[2:])
            c = names.index(phrase)
            other = torch.cat([cells[k, :c], cells[k, c + 1:]]).amax(0)
            margins.append(float((cells[k, c] - other).numpy()[inside].mean()) if inside.any() else 0.0)
        probs = arrays[f"probs{i}"][k].astype(np.float32)
        components = [int((np.bincount(ndimage.label(probs[c] > 0.5)[0].ravel())[1:] >= 20).sum()) for c in range(len(classes))]
        counted = float(components == [phrases.count(c) for c in classes])
        rows.append(dict(counted=counted, cells=float(np.mean(margins)), min_cells=float(np.min(margins)),
                         module=float(np.mean(cand["ious"])) - float(np.mean(cand["outside"])),
                         ious=float(np.mean(cand["ious"])), min_iou=float(np.min(cand["ious"])),
                         presence=presence, fills=float(np.min(cand["fills"]))))
    features.append(rows)


def choose(score):
    return [int(np.argmax([score(record, k, rows[k]) for k in range(n)])) for record, rows in zip(records, features)]


table = {
    "first candidate": [0] * len(records),
    "module fit": choose(lambda r, k, f: f["module"]),
    "module mean box IoU": choose(lambda r, k, f: f["ious"]),
    "module min box IoU": choose(lambda r, k, f: f["min_iou"]),
    "captioner presence": choose(lambda r, k, f: f["presence"]),
    "captioner cells (mean)": choose(lambda r, k, f: f["cells"]),
    "captioner cells (min)": choose(lambda r, k, f: f["min_cells"]),
    "module fit + cells": choose(lambda r, k, f: f["module"] + f["cells"]),
    "module fit + presence/4 + cells": choose(lambda r, k, f: f["module"] + f["presence"] / 4 + f["cells"]),
    "module fit + presence/4": choose(lambda r, k, f: f["module"] + f["presence"] / 4),
    "module fit + presence/10": choose(lambda r, k, f: f["module"] + f["presence"] / 10),
    "presence + min cells": choose(lambda r, k, f: f["presence"] + f["min_cells"]),
    "presence + 4 min cells": choose(lambda r, k, f: f["presence"] + 4 * f["min_cells"]),
    "presence + min box IoU": choose(lambda r, k, f: f["presence"] + f["min_iou"]),
    "presence + 4 min box IoU": choose(lambda r, k, f: f["presence"] + 4 * f["min_iou"]),
    "module component count": choose(lambda r, k, f: f["counted"]),
    "presence + component count": choose(lambda r, k, f: f["presence"] + f["counted"]),
    "presence + 3 component count": choose(lambda r, k, f: f["presence"] + 3 * f["counted"]),
    "annotator (upper bound)": annotator_picks(records, n),
}
print(f"{len(records)} layouts, {n} candidates each")
for name, pick in table.items():
    print(f"| {name} | " + " | ".join(f"{v:.1f}%" for v in judge_picks(records, pick)) + " |")
