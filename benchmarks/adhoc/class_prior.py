"""Ad hoc: the implicit captioner's cells as a class prior in `synthseg segment` (GroundingSegmenter's
`class_prior`), tuned on held-out scenes 500-699, which Protocol iii's test scenes (0-499) do not share: the shipped
world module with the shipped captioner (up to 2 classes), and given each scene's true classes (presence oracle).

Run from the repository root:
    python benchmarks/adhoc/class_prior.py [--priors 0 5 10 20 40] [--sources captioner2 true] [--captioner world|DIR]
        [--bias-shifts 0 ...] [--module world|DIR] [--thresholds 0.5 ...] [--one-prompt-per-class] [--upscale 1.0]
        [--refine 0 ...] [--dilations 1 2 4 8] [--classifier-draws 0 ...] [--classifier-tops 5 ...]
        [--classifier-weight 50]
--thresholds: the probability a pixel's best class must pass to be labelled (GroundingSegmenter's `threshold`).
--refine: PAMR iterations on the masks (GroundingSegmenter's `refine`, synthseg.refine); --dilations: its neighbourhoods
(default synthseg.refine.PAMR_DILATIONS).
--upscale: each scene resized by this factor (bicubic) before it is segmented, its labels resized back (nearest).
--bias-shifts: added to the captioner's logit bias, so it names classes from a lower probability than 1/2 (0.5: 0.38,
1: 0.27, 2: 0.12).
--classifier-draws: the diffusion classifier's draws (GroundingSegmenter's `classifier_draws`, synthseg.classify; 0: the
captioner's own choice), over the lists of its --classifier-tops best classes; with the captioner sources only.
Sources of each scene's class list: captionerK (the captioner, up to K classes), all (every class named), true.
"""

import argparse
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, "benchmarks")
from bench_protocol_iii import TrueClasses  # noqa: E402

from synthseg import classify, refine as refinement  # noqa: E402
from synthseg.benchmark import benchmark  # noqa: E402
from synthseg.captioner import ImplicitCaptioner  # noqa: E402
from synthseg.classes import get_split  # noqa: E402
from synthseg.grounding import GroundingModule  # noqa: E402
from synthseg.pipeline import load_pipeline  # noqa: E402
from synthseg.readers import read_world  # noqa: E402
from synthseg.segment import GroundingSegmenter  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--priors", type=float, nargs="+", default=[0.0, 5.0, 10.0, 20.0, 40.0])
parser.add_argument("--sources", nargs="+", default=["captioner2", "true"])
parser.add_argument("--captioner", default="world")
parser.add_argument("--bias-shifts", type=float, nargs="+", default=[0.0])
parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5])
parser.add_argument("--one-prompt-per-class", action="store_true")
parser.add_argument("--refine", type=int, nargs="+", default=[0])
parser.add_argument("--dilations", type=int, nargs="+")
parser.add_argument("--classifier-draws", type=int, nargs="+", default=[0])
parser.add_argument("--classifier-tops", type=int, nargs="+", default=[5])
parser.add_argument("--classifier-weight", type=float, help="synthseg.classify.DENOISING_WEIGHT, for every row")
parser.add_argument("--upscale", type=float, default=1.0)
parser.add_argument("--module", default="world", help="the grounding module: the shipped one, or a folder of another on the world")
args = parser.parse_args()
if args.classifier_weight is not None:
    classify.DENOISING_WEIGHT = args.classifier_weight
if args.dilations:
    refinement.PAMR_DILATIONS = tuple(args.dilations)  # at the scenes' 64 px, as given (`refine.dilations_for`)
pipe, split = load_pipeline("world"), get_split("world")
module, captioner = GroundingModule.from_pretrained(args.module), ImplicitCaptioner.from_pretrained(args.captioner)
scenes = read_world(200, first=500)
names = list(scenes.class_names)
truth = [scenes.classes_in(scenes[i][1]) for i in range(len(scenes))]


class Upscaled:
    """Segments each scene resized by `--upscale`, its labels resized back."""

    def __init__(self, segmenter):
        self.segmenter, self.class_names = segmenter, segmenter.class_names

    def predict(self, image):
        labels = self.segmenter.predict(image.resize([round(args.upscale * side) for side in image.size], Image.BICUBIC))
        return np.asarray(Image.fromarray(labels.astype(np.uint8)).resize(image.size, Image.NEAREST))


bias = float(captioner.logit_bias)
print("| class_prior | classes from | bias shift | threshold | refine | classifier draws, top | seen | unseen | harmonic |\n"
      "|---|---|---|---|---|---|---|---|---|")
settings = [(p, s, b, t, r, d, k) for p in args.priors for s in args.sources for b in args.bias_shifts for t in args.thresholds
            for r in args.refine for d in args.classifier_draws for k in args.classifier_tops]
for prior, source, shift, threshold, refine, draws, top in settings:
    captioner.logit_bias.data.fill_(bias + shift)
    most = int(source[len("captioner"):]) if source.startswith("captioner") else 2
    segmenter = GroundingSegmenter(pipe, module, names, captioner=captioner, max_classes=most, class_prior=prior,
                                   threshold=threshold, one_prompt_per_class=args.one_prompt_per_class,
                                   refine=refine, classifier_draws=draws if source.startswith("captioner") else 0, classifier_top=top)
    if not source.startswith("captioner"):
        segmenter.recogniser = TrueClasses([names] * len(truth) if source == "all" else truth, segmenter.recogniser)
    r = benchmark(Upscaled(segmenter) if args.upscale != 1 else segmenter, scenes, split, True, model_name=f"prior {prior}, {source}")
    scores = " | ".join(f"{100 * v:.1f}" for v in (r.seen_miou, r.unseen_miou, r.harmonic_miou))
    print(f"| {prior:g} | {source} | {shift:g} | {threshold:g} | {refine} | {draws}, {top} | {scores} |", flush=True)
