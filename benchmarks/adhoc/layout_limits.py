"""Ad hoc: the layout limits datasets draw with (max_overlap, sizes), on the choice streams 5 and 6.

Each setting draws COUNT layouts from each stream with the shipped world-layout card's section and the given fields
over it, generates them as bench_layouts.py's one-image rows do (the card's steps, guidance, beta and box attention),
and scores them by the world annotator as that bench does; the same layouts rendered exactly give the annotator's own
ceiling. Counts per class are also split by objects per layout, since fewer boxes fit when they may not overlap.

Run from the repository root: python benchmarks/adhoc/layout_limits.py [--model MODEL] COUNT SETTING ...
(SETTING: `card`, or comma-separated FIELD=VALUE such as max_overlap=0.0,max_size=0.55; MODEL: a GLIGEN export folder,
world-layout by default, whose own card gives the sampling settings)
"""
import sys
import time
from dataclasses import replace

sys.path.insert(0, "benchmarks")

import numpy as np
import torch
from bench_layouts import CHOICE_SEEDS, annotated, judge, with_boxes

from synthseg.annotators import load_annotator
from synthseg.dataset import load_dataset_recipe
from synthseg.layouts import sample_layouts
from synthseg.pipeline import load_pipeline
from synthseg.registry import model_card
from synthseg.world import WORLD_CLASSES, layout_scene

model = "world-layout"
if sys.argv[1] == "--model":
    model = sys.argv[2]
    del sys.argv[1:3]
count = int(sys.argv[1])
torch.set_num_threads(2)
section = load_dataset_recipe("world", layouts=True, model=model, captioner="world").layouts
card = model_card(model)
annotator = load_annotator("world")
pipe = load_pipeline(model)
pipe.set_progress_bar_config(disable=True)
print("| setting | boxes | boxes hit | right count (2-4 objects) | 2 / 3 / 4 objects: layouts, right count | all classes found (2+ classes) "
      "| rendered: boxes hit, right count |\n|---|---|---|---|---|---|---|")
for setting in sys.argv[2:]:
    fields = {} if setting == "card" else {k: float(v) for k, v in (item.split("=") for item in setting.split(","))}
    drawn = replace(section, **fields)
    layouts = [lay for seed in CHOICE_SEEDS for lay in sample_layouts(replace(drawn, seed=seed), list(WORLD_CLASSES), [], count)]
    objects = np.array([len(lay.phrases) for lay in layouts])
    mixed = np.array([len(lay.classes) >= 2 for lay in layouts])
    start = time.perf_counter()
    images = with_boxes(pipe, layouts, card.num_inference_steps, card.guidance_scale, drawn.scheduled_sampling_beta, drawn.box_attention)
    scores = judge(annotated(annotator, images, layouts), layouts)
    rendered = judge(annotated(annotator, [layout_scene(lay, held_out=True, fit=drawn.fit).image for lay in layouts], layouts), layouts)
    split = " / ".join(f"{int((objects == n).sum())}, {100 * scores['counts'][objects == n].mean():.0f}%" for n in (2, 3, 4))
    print(f"| {setting} | {objects.sum()} | {100 * scores['hits'].mean():.1f}% | {100 * scores['counts'][objects >= 2].mean():.1f}% | {split} "
          f"| {100 * scores['found'][mixed].mean():.1f}% | {100 * rendered['hits'].mean():.1f}%, {100 * rendered['counts'][objects >= 2].mean():.1f}% |"
          f"  ({time.perf_counter() - start:.0f} s)", flush=True)
