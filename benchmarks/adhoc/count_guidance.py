"""Ad hoc: counting guidance (`synthseg.layouts.CountGuidance`) with the world counter in world-layout's sampling.

Each layout's first candidate (its own seed) is made per scale on the same seeds, guided in the first G steps, and
judged by the annotator: boxes hit, right counts (2+ objects), all classes found (2+ classes).

Run from the repository root: python benchmarks/adhoc/count_guidance.py COUNT STREAMS SCALES GUIDED_STEPS
"""
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, "benchmarks")
import numpy as np
import torch
from bench_layouts import annotated, judge

from synthseg.annotators import load_annotator
from synthseg.counter import CountJudge
from synthseg.dataset import load_dataset_recipe
from synthseg.layouts import box_steering, count_steering, sample_layouts
from synthseg.pipeline import load_pipeline
from synthseg.registry import model_card
from synthseg.world import WORLD_CLASSES

count, streams = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")]
scales, guided = [float(s) for s in sys.argv[3].split(",")], int(sys.argv[4])
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
section = load_dataset_recipe("world", layouts=True, model="world-layout").layouts
card = model_card("world-layout")
pipe = load_pipeline("world-layout")
pipe.set_progress_bar_config(disable=True)
counter = CountJudge.from_pretrained("world-layout")
annotator = load_annotator("world")
layouts = [lay for s in streams for lay in sample_layouts(replace(section, seed=s), list(WORLD_CLASSES), [], count)]
multi = np.array([len(lay.phrases) >= 2 for lay in layouts])
two = np.array([len(set(lay.phrases)) >= 2 for lay in layouts])
for scale in scales:
    start, images = time.time(), []
    for layout in layouts:
        with box_steering(pipe, layout, section.box_attention, card.guidance_scale), count_steering(pipe, counter, layout, scale, guided):
            images += pipe(layout.prompt, gligen_phrases=layout.phrases, gligen_boxes=[list(b) for b in layout.boxes],
                           gligen_scheduled_sampling_beta=section.scheduled_sampling_beta, num_inference_steps=card.num_inference_steps,
                           guidance_scale=card.guidance_scale, generator=torch.Generator().manual_seed(layout.seed)).images
    r = judge(annotated(annotator, images, layouts), layouts)
    print(f"scale {scale:g} guided {guided}: boxes {100 * r['hits'].mean():.1f} counts {100 * r['counts'][multi].mean():.1f} "
          f"found {100 * r['found'][two].mean():.1f}  {time.time() - start:.0f}s", flush=True)
