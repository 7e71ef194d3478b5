"""Ad hoc: the quality filter and the captioner's choice among a layout's candidates (layout_candidates.py's record).

Per layout, which image is kept: the first candidate if it passes; the captioner's best if it passes (make-dataset's
order: choose, then filter); or the captioner's best among those that pass. A candidate passes, roughly as make-dataset
judges it on unrefined masks, when every box's instance fills 0.1 of it and every class has a pixel above 0.6.

Run from the repository root: python benchmarks/adhoc/layout_candidates_filter.py RECORD.json N
"""
import json
import sys

import numpy as np
import torch

from synthseg.captioner import ImplicitCaptioner, Recogniser, class_set_log_probability
from synthseg.latents import encode_images, pixel_tensor
from synthseg.pipeline import load_pipeline
from synthseg.world import WORLD_CLASSES

path, n = sys.argv[1], int(sys.argv[2])
records, arrays = json.load(open(path)), np.load(path.replace(".json", ".npz"))
torch.set_num_threads(1)
pipe, names = load_pipeline("world"), list(WORLD_CLASSES)
recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world"), names)
stats = {k: dict(kept=0, hits=[], counts=[]) for k in ("first", "captioner, then filter", "captioner among those that pass")}
for i, record in enumerate(records):
    images, probs = arrays[f"images{i}"][:n], arrays[f"probs{i}"][:n].astype(np.float32)
    classes = list(dict.fromkeys(record["phrases"]))
    with torch.no_grad():
        logits = recogniser.class_logits(encode_images(pipe, pixel_tensor(images)))
    score = class_set_log_probability(logits, [names.index(c) for c in classes]).numpy()
    candidates = record["candidates"][:n]
    passes = [min(c["fills"]) >= 0.1 and all((probs[k][j] > 0.6).any() for j in range(len(classes))) for k, c in enumerate(candidates)]
    best, passing = int(np.argmax(score)), [k for k in range(n) if passes[k]]
    picks = {"first": 0 if passes[0] else None, "captioner, then filter": best if passes[best] else None,
             "captioner among those that pass": max(passing, key=lambda k: score[k]) if passing else None}
    for name, k in picks.items():
        if k is not None:
            stats[name]["kept"] += 1
            stats[name]["hits"] += candidates[k]["hits"]
            if len(record["phrases"]) >= 2:
                stats[name]["counts"].append(candidates[k]["count"])
for name, s in stats.items():
    print(f"| {name} | {s['kept']} of {len(records)} | {100 * np.mean(s['hits']):.1f}% | {100 * np.mean(s['counts']):.1f}% |")
