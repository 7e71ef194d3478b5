"""Ad hoc: the per-class world captioner (objective classes, pooling max) with a finer last grid: one stride-2 conv
instead of two, so a 16x16 latent gives 8x8 cells rather than 4x4 (each cell sees less of the image). Trained on the
captioner-world datasets and scored as captioner_objective.py scores, on held-out scenes 500-699, and with the
class prior (10, up to 3 classes).

Run from the repository root (the datasets as in captioner_objective.py):
    python benchmarks/adhoc/captioner_cells.py WORK DATASET [DATASET ...]
"""

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import synthseg.train.captioner as training
from synthseg.benchmark import benchmark
from synthseg.captioner import ImplicitCaptioner, Recogniser, _conv
from synthseg.classes import get_split
from synthseg.grounding import GroundingModule
from synthseg.latents import encode_images, pixel_tensor
from synthseg.pipeline import load_pipeline
from synthseg.readers import open_training_data, read_world
from synthseg.segment import GroundingSegmenter


class FineCells(ImplicitCaptioner):
    """The shipped architecture with its second stride-2 conv at stride 1."""

    def __init__(self, config):
        super().__init__(config)
        w = config.width
        self.encoder = nn.Sequential(_conv(config.latent_channels, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1), _conv(2 * w, 4 * w, 1))


training.ImplicitCaptioner = FineCells
work, folders = Path(sys.argv[1]), sys.argv[2:]
pipe = load_pipeline("world")
data = open_training_data([Path(f) for f in folders])
recipe = training.load_captioner_recipe("captioner-world")
captioner = training.train_captioner(pipe, data, recipe, work / "fine", work / "fine" / "captioner")
scenes = read_world(200, first=500)
names, module, split = list(scenes.class_names), GroundingModule.from_pretrained("world"), get_split("world")
truth = [set(scenes.classes_in(scenes[i][1])) for i in range(len(scenes))]
latents = torch.cat([encode_images(pipe, pixel_tensor(np.asarray(scenes[i][0]))) for i in range(len(scenes))])
print("| captioner | up to | exact set, 1 / 2 / 3 classes | precision | recall | class prior | seen | unseen | harmonic |\n"
      "|---|---|---|---|---|---|---|---|---|")
for name, model in (("shipped (4x4 cells)", ImplicitCaptioner.from_pretrained("world")), ("8x8 cells", captioner)):
    for most, prior in ((2, 0.0), (3, 10.0)):
        found = [set(f) for f in Recogniser(pipe, model, names, most)(latents)]
        exact = [np.mean([f == t for f, t in zip(found, truth) if len(t) == k]) for k in (1, 2, 3)]
        precision = sum(len(f & t) for f, t in zip(found, truth)) / sum(len(f) for f in found)
        recall = sum(len(f & t) for f, t in zip(found, truth)) / sum(len(t) for t in truth)
        segmenter = GroundingSegmenter(pipe, module, names, captioner=model, max_classes=most, class_prior=prior)
        r = benchmark(segmenter, scenes, split, model_name=name)
        print(f"| {name} | {most} | {' / '.join(f'{100 * e:.0f}' for e in exact)} | {100 * precision:.1f} | {100 * recall:.1f} | {prior:g} | "
              f"{100 * r.seen_miou:.1f} | {100 * r.unseen_miou:.1f} | {100 * r.harmonic_miou:.1f} |", flush=True)
