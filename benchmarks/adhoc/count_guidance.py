"""Ad hoc: counting guidance (`synthseg.guidance.CountGuidance`) with the world counter in world-layout's sampling.

Each layout's first candidate (its own seed) is made per scale on the same seeds, guided in the first G steps, and
judged by the annotator: boxes hit, right counts (2+ objects), all classes found (2+ classes).

BOX_TERM (MODE@WEIGHT, session 49): beside the whole image's counts, each box's crop of the decoded x0 (10% margin,
resized to the counter's size) adds WEIGHT x the counter's log-probability that the crop holds exactly one object of
the box's class and none of another (MODE exact), or one of its class (MODE class): a quarter of the layout boxes hold
another class's shape, which the whole image's counts do not see.

Run from the repository root: python benchmarks/adhoc/count_guidance.py COUNT STREAMS SCALES GUIDED_STEPS [BOX_TERM]
"""
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, "benchmarks")
import numpy as np
import torch
import torch.nn.functional as F
from bench_layouts import annotated, judge

from synthseg.annotators import load_annotator
from synthseg.counter import CountJudge
from synthseg.dataset import load_dataset_recipe
from synthseg.guidance import CountGuidance, count_steering
from synthseg.layouts import box_steering, sample_layouts
from synthseg.pipeline import load_pipeline
from synthseg.registry import model_card
from synthseg.world import WORLD_CLASSES


class BoxTermJudge:
    """The counter's `log_probability_torch` with the per-box term."""

    def __init__(self, counter, boxes, mode, weight, margin=0.1):
        self.counter, self.boxes, self.mode, self.weight, self.margin = counter, boxes, mode, weight, margin
        self.wanted = counter.wanted

    def log_probability_torch(self, pixels, rows):
        phrases = rows[0]  # one layout per call: every image's phrases are its
        total = self.counter.log_probability_torch(pixels, phrases)
        size, (height, width) = self.counter.image_size or pixels.shape[-1], pixels.shape[-2:]
        crops = []
        for x0, y0, x1, y1 in self.boxes:
            mx, my = self.margin * (x1 - x0), self.margin * (y1 - y0)
            left, right = max(0, int((x0 - mx) * width)), min(width, int(np.ceil((x1 + mx) * width)))
            top, bottom = max(0, int((y0 - my) * height)), min(height, int(np.ceil((y1 + my) * height)))
            crops.append(F.interpolate(pixels[:, :, top:bottom, left:right], size=(size, size), mode="bilinear", align_corners=False))
        logp = self.counter.count_log_probs_torch(torch.cat(crops)).view(len(crops), len(pixels), len(self.counter.names), -1)
        for k, phrase in enumerate(phrases):
            if self.mode == "exact":  # one of the box's class, none of another: the counts a one-object layout asks for
                want = self.counter.wanted([phrase]).to(pixels.device)
                total = total + self.weight * logp[k].gather(2, want[None, :, None].expand(len(pixels), -1, 1)).sum((1, 2))
            else:
                total = total + self.weight * logp[k][:, self.counter.names.index(phrase), 1]
        return total


count, streams = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")]
scales, guided = [float(s) for s in sys.argv[3].split(",")], int(sys.argv[4])
box_mode, box_weight = (sys.argv[5].split("@") if len(sys.argv) > 5 else ("exact", "0"))
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
        steering = (CountGuidance(pipe, BoxTermJudge(counter, layout.boxes, box_mode, float(box_weight)), [list(layout.phrases)], scale, guided)
                    if float(box_weight) else count_steering(pipe, counter, [list(layout.phrases)], scale, guided))
        with box_steering(pipe, layout, section.box_attention, card.guidance_scale), steering:
            images += pipe(layout.prompt, gligen_phrases=layout.phrases, gligen_boxes=[list(b) for b in layout.boxes],
                           gligen_scheduled_sampling_beta=section.scheduled_sampling_beta, num_inference_steps=card.num_inference_steps,
                           guidance_scale=card.guidance_scale, generator=torch.Generator().manual_seed(layout.seed)).images
    r = judge(annotated(annotator, images, layouts), layouts)
    print(f"scale {scale:g} guided {guided} box term {box_mode}@{box_weight}: boxes {100 * r['hits'].mean():.1f} counts {100 * r['counts'][multi].mean():.1f} "
          f"found {100 * r['found'][two].mean():.1f}  {time.time() - start:.0f}s", flush=True)
