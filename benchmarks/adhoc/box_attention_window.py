"""Prototype: box attention over the first `share` of the steps instead of the gated window (stream 5/6).

Ad hoc, run from the repository root: python benchmarks/adhoc/box_attention_window.py COUNT STREAMS BIAS@SHARE ...
"""
import sys
import time

sys.path.insert(0, "benchmarks")
from dataclasses import replace

import numpy as np
from bench_layouts import annotated, judge, with_boxes

import synthseg.layouts as L
from synthseg.annotators import load_annotator
from synthseg.dataset import load_dataset_recipe
from synthseg.layouts import sample_layouts
from synthseg.pipeline import load_pipeline
from synthseg.registry import model_card
from synthseg.world import WORLD_CLASSES

SHARE = {"v": None}
orig_before = L.BoxAttention._before_unet


def before(self, module, args, kwargs):
    self.calls = getattr(self, "calls", 0) + 1
    return orig_before(self, module, args, kwargs)


L.BoxAttention._before_unet = before


def call(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
    on = self.fuser.enabled if SHARE["v"] is None else self.context.calls <= SHARE["v"] * STEPS
    if on and encoder_hidden_states is not None and attention_mask is None:
        bias = self.context.bias(hidden_states.shape[1], encoder_hidden_states.shape[1])
        attention_mask = bias.to(hidden_states.device, hidden_states.dtype)
    return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


L._BoxBiasProcessor.__call__ = call

section = load_dataset_recipe("world", layouts=True, model="world-layout").layouts
card = model_card("world-layout")
STEPS = card.num_inference_steps
beta = section.scheduled_sampling_beta
count = int(sys.argv[1])
seeds = [int(s) for s in sys.argv[2].split(",")]
layouts = [lay for seed in seeds for lay in sample_layouts(replace(section, seed=seed), list(WORLD_CLASSES), [], count)]
many = np.array([len(lay.phrases) >= 2 for lay in layouts])
mixed = np.array([len(lay.classes) >= 2 for lay in layouts])
annotator = load_annotator("world")
pipe = load_pipeline("world-layout")
pipe.set_progress_bar_config(disable=True)
print("beta", beta, "steps", STEPS, "guidance", card.guidance_scale, flush=True)
for spec in sys.argv[3:]:
    strength, share = spec.split("@")
    SHARE["v"] = None if share == "gated" else float(share)
    t = time.time()
    s = judge(annotated(annotator, with_boxes(pipe, layouts, STEPS, card.guidance_scale, beta, float(strength)), layouts), layouts)
    print(f"{spec}: hits {100 * s['hits'].mean():.1f} counts {100 * s['counts'][many].mean():.1f} "
          f"found {100 * s['found'][mixed].mean():.1f} ({time.time() - t:.0f}s)", flush=True)
