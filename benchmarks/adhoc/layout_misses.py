"""Ad hoc: what a missed layout box holds, for the shipped world-layout at its card's settings.

Run from the repository root: python benchmarks/adhoc/layout_misses.py COUNT STREAM [BOX_ATTENTION]
COUNT layouts of layout stream STREAM (the layout section's seed; bench_layouts.py reads stream 0, the choices 5 and 6)
are generated as make-dataset --layouts does (the card's guidance, beta and, unless given, box attention) and
annotated with all 12 world classes. Each box is a hit (an object of its class at box IoU >= 0.5), another class
(an object of another class there instead) or nothing; a class whose count comes out short is a merge when one
found object of it covers the centres of two of its boxes.
"""

import sys
from collections import Counter

import numpy as np

sys.path.insert(0, "benchmarks")
from dataclasses import replace  # noqa: E402

from bench_layouts import box_hits, with_boxes  # noqa: E402

from synthseg.annotators import load_annotator  # noqa: E402
from synthseg.dataset import load_dataset_recipe  # noqa: E402
from synthseg.layouts import box_iou, sample_layouts  # noqa: E402
from synthseg.pipeline import load_pipeline  # noqa: E402
from synthseg.registry import model_card  # noqa: E402
from synthseg.world import WORLD_CLASSES, mask_box  # noqa: E402

count, stream = int(sys.argv[1]), int(sys.argv[2])
section = load_dataset_recipe("world", layouts=True, model="world-layout").layouts
strength = float(sys.argv[3]) if len(sys.argv) > 3 else section.box_attention
card = model_card("world-layout")
layouts = sample_layouts(replace(section, seed=stream), list(WORLD_CLASSES), [], count)
pipe = load_pipeline("world-layout")
pipe.set_progress_bar_config(disable=True)
images = with_boxes(pipe, layouts, card.num_inference_steps, card.guidance_scale, section.scheduled_sampling_beta, strength)
annotator = load_annotator("world")
kinds, swaps, short, merges = Counter(), Counter(), 0, 0
for image, layout in zip(images, layouts):
    found = annotator.annotate([image], [list(WORLD_CLASSES)])[0]
    boxes = [(inst.class_name, mask_box(inst.mask)) for inst in found]
    for hit, phrase, box in zip(box_hits(found, layout), layout.phrases, layout.boxes):
        if hit:
            kinds["hit"] += 1
            continue
        others = [(box_iou(box, b), name) for name, b in boxes if b is not None and name != phrase]
        best = max(others, default=(0.0, None))
        kinds["another class" if best[0] >= 0.5 else "nothing"] += 1
        if best[0] >= 0.5:
            swaps[f"{phrase} -> {best[1]}"] += 1
    for name in set(layout.phrases):
        asked = [b for p, b in zip(layout.phrases, layout.boxes) if p == name]
        got = [b for n, b in boxes if n == name and b is not None]
        if len(got) < len(asked):
            short += 1
            centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in asked]
            merges += any(sum(g[0] <= x <= g[2] and g[1] <= y <= g[3] for x, y in centres) >= 2 for g in got)
total = sum(kinds.values())
print(f"world-layout, stream {stream}, {count} layouts, box attention {strength:g}: {total} boxes")
for kind in ("hit", "another class", "nothing"):
    print(f"  {kind}: {kinds[kind]} ({100 * kinds[kind] / total:.1f}%)")
print(f"  most frequent swaps: {', '.join(f'{k} {v}' for k, v in swaps.most_common(6))}")
print(f"  classes short of their count: {short}, of them merges of two boxes into one object: {merges}")
print(f"  objects per layout: {np.mean([len(lay.phrases) for lay in layouts]):.2f}")
