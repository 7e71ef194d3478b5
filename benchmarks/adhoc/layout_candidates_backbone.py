"""Ad hoc: the world backbone (`resnet-world`, trained to name the classes of rendered scenes) as the judge among
each layout's candidates, against and beside the world captioner (layout_candidates.py's record).

Both score the log-probability that a candidate holds exactly the layout's classes under independent per-class
sigmoids (`captioner.class_set_log_probability`); the backbone reads the image itself (with its horizontal flip,
averaged), the captioner its VAE latents. Rows: boxes hit, right counts (2+ objects), all classes found (2+
classes), as layout_candidates_choices.py prints them.

Run from the repository root: python benchmarks/adhoc/layout_candidates_backbone.py RECORD.json [N]
"""
import sys

sys.path.insert(0, "benchmarks")

import numpy as np
import torch
from bench_layouts import annotator_picks, judge_picks, read_candidates
from transformers import ResNetForImageClassification

from synthseg.captioner import ImplicitCaptioner, Recogniser, class_set_log_probability
from synthseg.latents import encode_images, pixel_tensor
from synthseg.pipeline import load_pipeline
from synthseg.registry import resolve_backbone
from synthseg.segmenter import normalised_pixels
from synthseg.world import WORLD_CLASSES

records, arrays, n = read_candidates(sys.argv[1:])
torch.set_num_threads(1)
names = list(WORLD_CLASSES)
pipe = load_pipeline("world")
recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world"), names)
backbone = ResNetForImageClassification.from_pretrained(resolve_backbone("world")).float().eval()
if [backbone.config.id2label[i] for i in range(len(names))] != names:
    raise SystemExit("the backbone's labels are not the world's classes")


@torch.no_grad()
def backbone_logits(images: np.ndarray) -> torch.Tensor:
    pixels = normalised_pixels(images)
    return 0.5 * (backbone(pixel_values=pixels).logits + backbone(pixel_values=pixels.flip(-1)).logits)


scores = []  # per layout: (captioner, backbone) log-probabilities of exactly its classes, per candidate
for i, record in enumerate(records):
    images = arrays[f"images{i}"][:n]
    members = [names.index(c) for c in dict.fromkeys(record["phrases"])]
    with torch.no_grad():
        captioner = class_set_log_probability(recogniser.class_logits(encode_images(pipe, pixel_tensor(images))), members)
    scores.append((captioner.numpy(), class_set_log_probability(backbone_logits(images), members).numpy()))


def choose(score):
    return [int(np.argmax(score(cap, bb))) for cap, bb in scores]


table = {
    "first candidate": [0] * len(records),
    "captioner": choose(lambda cap, bb: cap),
    "backbone": choose(lambda cap, bb: bb),
    "captioner + backbone": choose(lambda cap, bb: cap + bb),
    "captioner + backbone / 2": choose(lambda cap, bb: cap + bb / 2),
    "captioner / 2 + backbone": choose(lambda cap, bb: cap / 2 + bb),
    "annotator (upper bound)": annotator_picks(records, n),
}
print(f"{len(records)} layouts, {n} candidates each")
for name, pick in table.items():
    print(f"| {name} | " + " | ".join(f"{v:.1f}%" for v in judge_picks(records, pick)) + " |")
