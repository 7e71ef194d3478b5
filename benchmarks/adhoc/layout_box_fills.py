"""Per box of the kept layout images: its instance's fill and score, and whether the annotator hits it.

Ad hoc, run from the repository root: python benchmarks/adhoc/layout_box_fills.py (after bench_protocol_ii_instances.py)
"""
import json
import sys

sys.path.insert(0, "benchmarks")
from pathlib import Path

import numpy as np
from bench_layouts import box_hits
from PIL import Image
from pycocotools import mask as mask_utils

from synthseg.annotators import load_annotator
from synthseg.dataset import plan, read_recipe
from synthseg.layouts import box_fill

d = Path("runs/pii-instances/layouts")
r = read_recipe(d)
items = plan(r)
ann = load_annotator("world")
rows = []
for item in items:
    rec = json.loads((d / f"records/{item.index:06d}.json").read_text())
    if rec["dropped"]:
        continue
    image = Image.open(d / rec["file_name"]).convert("RGB")
    found = ann.annotate([image], [item.classes])[0]
    hits = box_hits(found, item)
    masks = [mask_utils.decode(i["segmentation"]).astype(bool) for i in rec["instances"]]
    # instances are in phrase order unless one was below min_instance_area
    if len(masks) != len(item.phrases):
        continue
    fills = [box_fill(m, b) for m, b in zip(masks, item.boxes)]
    for p, f, h in zip(item.phrases, fills, hits):
        rows.append((item.index, p, float(f), float(min(fills)), rec["scores"][p], bool(h), len(item.phrases)))
json.dump(rows, open("runs/layout_box_fills.json", "w"))
rows = np.array([(f, mf, s, h) for _, _, f, mf, s, h, _ in rows])
print(len(rows), "boxes; hit rate", rows[:, 3].mean())
for t in (0.1, 0.2, 0.3, 0.4, 0.5):
    keep = rows[:, 0] >= t
    print(f"fill>={t}: boxes {keep.mean():.2f} hit {rows[keep, 3].mean():.3f} | missing hit among dropped {rows[~keep, 3].mean() if (~keep).any() else 0:.3f}")
