"""Ad hoc: best of N candidates per layout, chosen by the grounding module's masks against the boxes.

Each layout of the choice streams (5 and 6) is generated N times (seeds layout.seed + k * 7919) as
`generate_layout` does (box attention, capture, module); per candidate it records, per box, the box IoU of its
instance mask's bounding box and its fill, per class the share of its mask outside that class's (widened) boxes,
and the annotator's judgement; the images and the module's probabilities go to OUT.npz. Choices are then made
offline from the record.

Run from the repository root: python benchmarks/adhoc/layout_candidates.py COUNT N OUT.json [STREAMS]
(STREAMS: comma-separated layout streams instead of the choice streams, e.g. 14,15 to check a choice on fresh ones)
"""
import json
import sys
from dataclasses import replace

sys.path.insert(0, "benchmarks")
from collections import Counter

import numpy as np
import torch
from bench_layouts import CHOICE_SEEDS, box_hits

from synthseg.annotators import load_annotator
from synthseg.dataset import load_dataset_recipe
from synthseg.generate import capture_pass, predict_masks
from synthseg.grounding import GroundingModule
from synthseg.layouts import _box_weight, box_fill, box_iou, box_steering, instance_masks, sample_layouts
from synthseg.pipeline import load_pipeline
from synthseg.registry import model_card, resolve_grounding
from synthseg.world import WORLD_CLASSES, mask_box

count, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
streams = [int(k) for k in sys.argv[4].split(",")] if len(sys.argv) > 4 else CHOICE_SEEDS
torch.set_num_threads(1)
section = load_dataset_recipe("world", layouts=True, model="world-layout").layouts
card = model_card("world-layout")
pipe = load_pipeline("world-layout")
pipe.set_progress_bar_config(disable=True)
grounding = GroundingModule.from_pretrained(resolve_grounding("world")).eval()
annotator = load_annotator("world")
layouts = [lay for seed in streams for lay in sample_layouts(replace(section, seed=seed), list(WORLD_CLASSES), [], count)]
records, arrays = [], {}
for i, layout in enumerate(layouts):
    boxes = dict(gligen_phrases=list(layout.phrases), gligen_boxes=[list(b) for b in layout.boxes],
                 gligen_scheduled_sampling_beta=section.scheduled_sampling_beta)
    seeds = [layout.seed + k * 7919 for k in range(n)]
    with box_steering(pipe, layout, section.box_attention, card.guidance_scale, copies=n):
        run = capture_pass(pipe, [layout.prompt] * n, [layout.classes] * n, seeds, guidance_scale=card.guidance_scale,
                           num_inference_steps=card.num_inference_steps, attention=grounding.config.needs_attention,
                           blocks=grounding.config.feature_blocks or None, pipeline_kwargs=boxes)
    probs = predict_masks(grounding, run.features, run.prompt_embeds, run.spans, run.images[0].size[::-1])
    cands = []
    for image, p in zip(run.images, probs):
        p = p.numpy()
        masks = instance_masks(p, layout.classes, layout, section.margin)
        ious = [box_iou(box, mask_box(m)) if m.any() else 0.0 for m, box in zip(masks, layout.boxes)]
        fills = [box_fill(m, box) for m, box in zip(masks, layout.boxes)]
        h, w = p.shape[1:]
        outside = []
        for c, name in enumerate(layout.classes):
            region = np.zeros((h, w), bool)
            for phrase, box in zip(layout.phrases, layout.boxes):
                if phrase == name:
                    region |= _box_weight(box, h, w, section.margin) > 0
            mask = p[c] > 0.5
            outside.append(float((mask & ~region).sum() / max(mask.sum(), 1)))
        found = annotator.annotate([image], [layout.classes])[0]
        cands.append(dict(ious=[float(x) for x in ious], fills=fills, outside=outside, hits=[bool(h) for h in box_hits(found, layout)],
                          count=Counter(x.class_name for x in found) == Counter(layout.phrases),
                          found=set(layout.classes) <= {x.class_name for x in found}))
    records.append(dict(index=i, phrases=list(layout.phrases), candidates=cands))
    arrays[f"images{i}"] = np.stack([np.array(image) for image in run.images])
    arrays[f"probs{i}"] = np.stack([p.numpy() for p in probs]).astype(np.float16)
    if i % 10 == 0:
        print(i, flush=True)
json.dump(records, open(out, "w"))
np.savez_compressed(out.replace(".json", ".npz"), **arrays)
