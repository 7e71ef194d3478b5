"""Ad hoc: the implicit captioner's cells as a class prior in `synthseg segment` (GroundingSegmenter's
`class_prior`), tuned on held-out scenes 500-699, which Protocol iii's test scenes (0-499) do not share: the shipped
world module with the shipped captioner (up to 2 classes), and given each scene's true classes (presence oracle).

Run from the repository root:
    python benchmarks/adhoc/class_prior.py [--priors 0 5 10 20 40] [--sources captioner2 true] [--captioner world|DIR]
        [--bias-shifts 0 ...]
--bias-shifts: added to the captioner's logit bias, so it names classes from a lower probability than 1/2 (0.5: 0.38,
1: 0.27, 2: 0.12).
Sources of each scene's class list: captionerK (the captioner, up to K classes), all (every class named), true.
"""

import argparse

from synthseg.benchmark import benchmark
from synthseg.captioner import ImplicitCaptioner
from synthseg.classes import get_split
from synthseg.grounding import GroundingModule
from synthseg.pipeline import load_pipeline
from synthseg.readers import read_world
from synthseg.segment import GroundingSegmenter

parser = argparse.ArgumentParser()
parser.add_argument("--priors", type=float, nargs="+", default=[0.0, 5.0, 10.0, 20.0, 40.0])
parser.add_argument("--sources", nargs="+", default=["captioner2", "true"])
parser.add_argument("--captioner", default="world")
parser.add_argument("--bias-shifts", type=float, nargs="+", default=[0.0])
args = parser.parse_args()
pipe, split = load_pipeline("world"), get_split("world")
module, captioner = GroundingModule.from_pretrained("world"), ImplicitCaptioner.from_pretrained(args.captioner)
scenes = read_world(200, first=500)
names = list(scenes.class_names)
truth = [scenes.classes_in(scenes[i][1]) for i in range(len(scenes))]


class Listed:
    """Names each scene's true classes (benchmark() visits the scenes in order, one per call), or every class; the
    captioner's cells still weigh them."""

    def __init__(self, recogniser, every: bool):
        self.cell_similarity, self.listed, self.every = recogniser.cell_similarity, iter(truth), every

    def __call__(self, latents):
        return [names] if self.every else [next(self.listed)]


bias = float(captioner.logit_bias)
print("| class_prior | classes from | bias shift | seen | unseen | harmonic |\n|---|---|---|---|---|---|")
for prior, source, shift in ((p, s, b) for p in args.priors for s in args.sources for b in args.bias_shifts):
    captioner.logit_bias.data.fill_(bias + shift)
    most = int(source[len("captioner"):]) if source.startswith("captioner") else 2
    segmenter = GroundingSegmenter(pipe, module, names, captioner=captioner, max_classes=most, class_prior=prior)
    if not source.startswith("captioner"):
        segmenter.recogniser = Listed(segmenter.recogniser, every=source == "all")
    r = benchmark(segmenter, scenes, split, True, model_name=f"prior {prior}, {source}")
    print(f"| {prior:g} | {source} | {shift:g} | {100 * r.seen_miou:.1f} | {100 * r.unseen_miou:.1f} | {100 * r.harmonic_miou:.1f} |", flush=True)
