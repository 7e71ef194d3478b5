"""Ad hoc: per-box prompts (MultiDiffusion's region-based generation, Bar-Tal et al. 2023) over world-layout.

While GLIGEN's gated layers run (or at every step: MODE boxall), the conditional noise prediction inside each box
is replaced by one from a prompt naming only that box's object ("a star") with GLIGEN given only that box (MODE box),
or only that class's boxes (MODE class); overlaps are averaged, the unconditional half is left as it is.

Run from the repository root: python benchmarks/adhoc/box_prompts.py COUNT STREAM MODE@BOX_ATTENTION ...
(MODE none: the pipeline as shipped). Scored as bench_layouts.py scores layouts, by the world annotator.
"""

import sys
import time
from dataclasses import replace

import numpy as np
import torch
from diffusers.models.attention import GatedSelfAttentionDense

sys.path.insert(0, "benchmarks")
from bench_layouts import annotated, judge, with_boxes  # noqa: E402

import synthseg.layouts as L  # noqa: E402
from synthseg.annotators import load_annotator  # noqa: E402
from synthseg.dataset import load_dataset_recipe  # noqa: E402
from synthseg.layouts import box_region, sample_layouts  # noqa: E402
from synthseg.pipeline import load_pipeline  # noqa: E402
from synthseg.prompts import describe  # noqa: E402
from synthseg.registry import model_card  # noqa: E402
from synthseg.world import WORLD_CLASSES  # noqa: E402


class BoxPrompts:
    """Forward hook on the GLIGEN UNet: blends per-box (or per-class) conditional predictions into the batch's.
    `inside`: a per-box pass is running (the UNet hook and BoxAttention's bias leave it alone)."""

    inside = False

    def __init__(self, pipe, layout, classifier_free_guidance: bool, mode: str):
        self.pipe, self.layout, self.cfg, self.mode = pipe, layout, classifier_free_guidance, mode
        self.groups = ([[j] for j in range(len(layout.phrases))] if mode in ("box", "boxall")
                       else [[j for j, p in enumerate(layout.phrases) if p == c] for c in layout.classes])
        full = describe(layout.phrases)
        prompts = [layout.prompt.replace(full, describe([layout.phrases[j] for j in g])) for g in self.groups]
        with torch.no_grad():
            self.embeds = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
        self.gate = next(m for m in pipe.unet.modules() if isinstance(m, GatedSelfAttentionDense))

    def __enter__(self):
        self.handle = self.pipe.unet.register_forward_hook(self.after, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def after(self, module, args, kwargs, output):
        if BoxPrompts.inside or (self.mode != "boxall" and not self.gate.enabled):
            return None
        sample, timestep = args[0], args[1]
        eps = (output[0] if isinstance(output, tuple) else output.sample).clone()
        gligen = kwargs["cross_attention_kwargs"]["gligen"]
        row, n = sample.shape[0] // 2 if self.cfg else 0, len(self.groups)
        masks = torch.zeros(n, gligen["masks"].shape[1])
        for i, group in enumerate(self.groups):
            masks[i, group] = 1
        own = {"boxes": gligen["boxes"][row:row + 1].expand(n, -1, -1),
               "positive_embeddings": gligen["positive_embeddings"][row:row + 1].expand(n, -1, -1), "masks": masks}
        BoxPrompts.inside = True
        try:
            region_eps = module(sample[row:row + 1].expand(n, -1, -1, -1), timestep, encoder_hidden_states=self.embeds,
                                cross_attention_kwargs={"gligen": own}, return_dict=False)[0]
        finally:
            BoxPrompts.inside = False
        h, w = sample.shape[-2:]
        weights = torch.stack([box_region([self.layout.boxes[j] for j in g], h, w).float().reshape(h, w) for g in self.groups])
        weights = weights / weights.sum(0).clamp(min=1)
        eps[row] = (1 - weights.sum(0)) * eps[row] + (weights[:, None] * region_eps).sum(0)
        return (eps,) if isinstance(output, tuple) else type(output)(sample=eps)


box_bias = L._BoxBiasProcessor.__call__


def biased(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
    """BoxAttention's processor, except in the per-box passes: their prompts name one class, and the bias is built
    for the pipeline's [unconditional; conditional] batch."""
    if BoxPrompts.inside:
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
    return box_bias(self, attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


L._BoxBiasProcessor.__call__ = biased
section = load_dataset_recipe("world", layouts=True, model="world-layout").layouts
card = model_card("world-layout")
layouts = sample_layouts(replace(section, seed=int(sys.argv[2])), list(WORLD_CLASSES), [], int(sys.argv[1]))
many, mixed = np.array([len(x.phrases) >= 2 for x in layouts]), np.array([len(x.classes) >= 2 for x in layouts])
annotator, pipe = load_annotator("world"), load_pipeline("world-layout")
pipe.set_progress_bar_config(disable=True)
for spec in sys.argv[3:]:
    mode, strength = spec.split("@")
    start, images = time.time(), []
    for layout in layouts:
        with BoxPrompts(pipe, layout, card.guidance_scale > 1, mode) if mode != "none" else torch.no_grad():
            images += with_boxes(pipe, [layout], card.num_inference_steps, card.guidance_scale, section.scheduled_sampling_beta, float(strength))
    s = judge(annotated(annotator, images, layouts), layouts)
    print(f"{spec}: hits {100 * s['hits'].mean():.1f} counts {100 * s['counts'][many].mean():.1f} "
          f"found {100 * s['found'][mixed].mean():.1f} ({time.time() - start:.0f}s)", flush=True)
