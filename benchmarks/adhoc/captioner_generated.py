"""Ad hoc: is the world captioner's weakness on scenes of several objects the gap between generated and rendered
images? Scores captioners on a generated dataset they did not train on (a `make-dataset --layouts` folder of another
seed, 1-4 objects an image), by the image's number of classes.

Run from the repository root:
    synthseg make-dataset --layouts --per-class 10 --per-pair 0 --seed 5 --out runs/diag-layouts5
    python benchmarks/adhoc/captioner_generated.py runs/diag-layouts5 world runs/capobj/classes/captioner
Each captioner (a bundled name or a folder) is asked for up to 3 classes an image.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from synthseg.captioner import ImplicitCaptioner, Recogniser
from synthseg.latents import encode_images, pixel_tensor
from synthseg.pipeline import load_pipeline
from synthseg.readers import open_training_data

pipe = load_pipeline("world")
data = open_training_data([Path(sys.argv[1])])
names = list(data.class_names)
truth = [set(data.classes_in(data[i][1])) for i in range(len(data))]
latents = torch.cat([encode_images(pipe, pixel_tensor(np.asarray(data[i][0].convert("RGB")))) for i in range(len(data))])
counts = [sum(len(t) == k for t in truth) for k in (1, 2, 3, 4)]
print(f"{len(data)} images of {sys.argv[1]}; images of 1 / 2 / 3 / 4 classes: {' / '.join(map(str, counts))}")
print("| captioner | exact class set, images of 1 / 2 / 3 / 4 classes (%) | recall |\n|---|---|---|")
for name in sys.argv[2:]:
    found = [set(f) for f in Recogniser(pipe, ImplicitCaptioner.from_pretrained(name), names, 3)(latents)]
    exact = [np.mean([f == t for f, t in zip(found, truth) if len(t) == k]) if n else float("nan") for k, n in zip((1, 2, 3, 4), counts)]
    recall = sum(len(f & t) for f, t in zip(found, truth)) / sum(len(t) for t in truth)
    print(f"| {name} | {' / '.join(f'{100 * e:.0f}' for e in exact)} | {100 * recall:.1f} |")
