"""Ad hoc: the diffusion classifier as the judge among a layout's candidates (layout_candidates.py's record).

Each candidate is named by `classify.DiffusionClassifier` (the world model's denoising errors over lists of up to 4 of
the captioner's top 5 classes, 16 draws); the kept image is the captioner's likeliest (exact-set log-probability) among
the candidates named exactly the layout's classes, or among all where none is.

Run from the repository root: python benchmarks/adhoc/layout_candidates_classifier.py RECORD.json N
"""
import json
import sys

import numpy as np
import torch

from synthseg.captioner import ImplicitCaptioner, Recogniser, class_set_log_probability
from synthseg.classify import DiffusionClassifier
from synthseg.latents import encode_images, pixel_tensor
from synthseg.pipeline import load_pipeline
from synthseg.world import WORLD_CLASSES

path, n = sys.argv[1], int(sys.argv[2])
records, arrays = json.load(open(path)), np.load(path.replace(".json", ".npz"))
torch.set_num_threads(1)
pipe, names = load_pipeline("world"), list(WORLD_CLASSES)
recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world"), names, max_classes=4)
classifier = DiffusionClassifier(pipe, recogniser, "a photograph of {}")
rows = {k: dict(hits=[], counts=[], found=[]) for k in ("captioner", "diffusion classifier, then captioner")}
for i, record in enumerate(records):
    classes = list(dict.fromkeys(record["phrases"]))
    with torch.no_grad():
        latents = encode_images(pipe, pixel_tensor(arrays[f"images{i}"][:n]))
        score = class_set_log_probability(recogniser.class_logits(latents), [names.index(c) for c in classes]).numpy()
        named = classifier(latents, [i * n + k for k in range(n)])
    exact = [set(found) == set(classes) for found in named]
    pool = [k for k in range(n) if exact[k]] or list(range(n))
    for name, k in (("captioner", int(np.argmax(score))), ("diffusion classifier, then captioner", max(pool, key=lambda k: score[k]))):
        candidate = record["candidates"][k]
        rows[name]["hits"] += candidate["hits"]
        if len(record["phrases"]) >= 2:
            rows[name]["counts"].append(candidate["count"])
        if len(classes) >= 2:
            rows[name]["found"].append(candidate["found"])
    if i % 10 == 0:
        print(i, flush=True)
for name, r in rows.items():
    print(f"| {name} | {100 * np.mean(r['hits']):.1f}% | {100 * np.mean(r['counts']):.1f}% | {100 * np.mean(r['found']):.1f}% |")
