"""Ad hoc: repair a layout's image box by box instead of choosing among whole images.

Each layout of the choice streams (5 and 6, or STREAMS) is generated once by `world-layout` at its card's settings
(box attention, no capture). Each box is then read alone (cropped with a 10% margin and resized to the image) by the
world captioner and the world backbone; a box passes when its class has the highest summed logit of the 12. The
boxes that fail are generated again with another seed, up to ROUNDS times: the same call (prompt, every box, box
attention), with the latents outside the failing boxes (one latent pixel of margin) replaced after every step by
the previous pass's at that step (blended latent diffusion), so the boxes that passed stay as they were. The annotator
then judges the first and the last image of each layout as bench_layouts.py judges (boxes hit, right counts of
2-4-object layouts, all classes found in layouts of 2+ classes); it also scores the per-box judges on the first
images.

Run from the repository root: python benchmarks/adhoc/layout_box_repair.py COUNT ROUNDS [STREAMS]
"""
import sys
from collections import Counter
from dataclasses import replace

sys.path.insert(0, "benchmarks")

import numpy as np
import torch
from bench_layouts import CHOICE_SEEDS, box_hits
from PIL import Image
from transformers import ResNetForImageClassification

from synthseg.annotators import load_annotator
from synthseg.captioner import ImplicitCaptioner, Recogniser
from synthseg.dataset import load_dataset_recipe
from synthseg.latents import encode_images, pixel_tensor
from synthseg.layouts import box_steering, sample_layouts
from synthseg.pipeline import load_pipeline
from synthseg.registry import model_card, resolve_backbone
from synthseg.segmenter import normalised_pixels
from synthseg.world import WORLD_CLASSES

count, rounds = int(sys.argv[1]), int(sys.argv[2])
streams = [int(k) for k in sys.argv[3].split(",")] if len(sys.argv) > 3 else CHOICE_SEEDS
torch.set_num_threads(1)
names = list(WORLD_CLASSES)
section = load_dataset_recipe("world", layouts=True, model="world-layout").layouts
card = model_card("world-layout")
pipe = load_pipeline("world-layout")
pipe.set_progress_bar_config(disable=True)
annotator = load_annotator("world")
recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world"), names)
backbone = ResNetForImageClassification.from_pretrained(resolve_backbone("world")).float().eval()
layouts = [lay for seed in streams for lay in sample_layouts(replace(section, seed=seed), names, [], count)]


def generate(layout, seed: int, keep=None, mask=None):
    """One image of `layout` and its latents after each step; with `keep` (an earlier pass's) and `mask` (1 where
    generated again), the latents outside the mask are the earlier pass's after every step."""
    recorded = []

    def blend(step, timestep, latents):
        if keep is not None:
            latents.copy_(mask * latents + (1 - mask) * keep[step])
        recorded.append(latents.clone())

    with box_steering(pipe, layout, section.box_attention, card.guidance_scale):
        image = pipe([layout.prompt], gligen_phrases=list(layout.phrases), gligen_boxes=[list(b) for b in layout.boxes],
                     gligen_scheduled_sampling_beta=section.scheduled_sampling_beta, num_inference_steps=card.num_inference_steps,
                     guidance_scale=card.guidance_scale, generator=torch.Generator().manual_seed(seed), callback=blend,
                     callback_steps=1).images[0]
    return image, recorded


def crops(image: Image.Image, boxes) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    out = []
    for x0, y0, x1, y1 in boxes:
        mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
        a, b = int(max(0, (x0 - mx) * width)), int(max(0, (y0 - my) * height))
        c, d = int(min(width, np.ceil((x1 + mx) * width))), int(min(height, np.ceil((y1 + my) * height)))
        out.append(np.asarray(Image.fromarray(pixels[b:d, a:c]).resize((width, height), Image.BILINEAR)))
    return np.stack(out)


@torch.no_grad()
def box_logits(image: Image.Image, layout) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes, 12) logits of each box's crop: the captioner's and the backbone's."""
    views = crops(image, layout.boxes)
    captioner = recogniser.class_logits(encode_images(pipe, pixel_tensor(views)))
    return captioner, backbone(pixel_values=normalised_pixels(views)).logits


def passes(logits: torch.Tensor, layout) -> np.ndarray:
    wanted = torch.tensor([names.index(p) for p in layout.phrases])
    return (logits.argmax(1) == wanted).numpy()


def box_mask(boxes, size: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    for x0, y0, x1, y1 in boxes:
        mask[..., max(0, int(y0 * size) - 1):min(size, int(np.ceil(y1 * size)) + 1), max(0, int(x0 * size) - 1):min(size, int(np.ceil(x1 * size)) + 1)] = 1
    return mask


def judge(images) -> tuple[float, float, float]:
    hits, counts, found = [], [], []
    for image, layout in zip(images, layouts):
        instances = annotator.annotate([image], [layout.classes])[0]
        hits += box_hits(instances, layout)
        if len(layout.phrases) >= 2:
            counts.append(Counter(i.class_name for i in instances) == Counter(layout.phrases))
        if len(layout.classes) >= 2:
            found.append(set(layout.classes) <= {i.class_name for i in instances})
    return 100 * np.mean(hits), 100 * np.mean(counts), 100 * np.mean(found)


first, last, judged, calls = [], [], [], 0
for i, layout in enumerate(layouts):
    image, recorded = generate(layout, layout.seed)
    calls += 1
    first.append(image)
    captioner, backbone_out = box_logits(image, layout)
    hits = box_hits(annotator.annotate([image], [layout.classes])[0], layout)
    judged.append((np.array(hits), passes(captioner, layout), passes(backbone_out, layout), passes(captioner + backbone_out, layout)))
    ok = judged[-1][3]
    for r in range(1, rounds + 1):
        if ok.all():
            break
        failing = [box for box, good in zip(layout.boxes, ok) if not good]
        size = recorded[0].shape[-1]
        image, recorded = generate(layout, int(np.random.default_rng([layout.seed, 100 + r]).integers(2**31)), recorded,
                                   box_mask(failing, size))
        calls += 1
        ok = ok | passes(sum(box_logits(image, layout)), layout)
    last.append(image)
    if i % 20 == 0:
        print(i, flush=True)

hit = np.concatenate([j[0] for j in judged])
for k, name in ((1, "captioner"), (2, "backbone"), (3, "captioner + backbone")):
    good = np.concatenate([j[k] for j in judged])
    print(f"per-box judge {name}: passes {100 * good.mean():.1f}% of {len(good)} boxes; annotator hit among passed "
          f"{100 * hit[good].mean():.1f}%, among failed {100 * hit[~good].mean():.1f}% (all: {100 * hit.mean():.1f}%)")
print(f"{len(layouts)} layouts, {calls} calls ({calls / len(layouts):.2f} a layout)")
print("| first image | " + " | ".join(f"{v:.1f}%" for v in judge(first)) + " |")
print(f"| repaired, up to {rounds} rounds | " + " | ".join(f"{v:.1f}%" for v in judge(last)) + " |")
