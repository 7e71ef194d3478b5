"""Ad hoc: does the grounding module's own output help choose among a two-class prompt's candidates?

Where a generator draws one object for two prompted classes, the module, asked for both, tends to put both masks on
it. So each candidate's score is the captioner's (`candidates.best_candidate`) minus W times the overlap of the two
class masks: soft, the sum of min(p1, p2) over the smaller mask's sum; hard, the same of the masks at 0.5 (areas floored
at one pixel). The fidelity bench's two-class prompts of a stream,
N candidates each, through `generate_grounded` (the model's own module), judged by the world annotator; prints one row
per W and writes nothing.

    cd benchmarks && python adhoc/mask_overlap_choice.py --model world-dit --candidates 4 --stream 1 --weights 0 1 3 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_world_fidelity import found_classes, prompt_groups  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="world-dit")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--stream", type=int, default=1)
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 1, 3, 10])
    args = parser.parse_args()

    from synthseg.annotators import load_annotator
    from synthseg.candidates import candidate_seeds
    from synthseg.captioner import ImplicitCaptioner, Recogniser, class_set_log_probability
    from synthseg.generate import generate_grounded
    from synthseg.grounding import GroundingModule
    from synthseg.latents import encode_images, pixel_tensor
    from synthseg.pipeline import load_pipeline
    from synthseg.prompts import caption
    from synthseg.registry import BUNDLES, model_card
    from synthseg.world import WORLD_CLASSES

    card = model_card(args.model)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    module = GroundingModule.from_pretrained(args.model).eval()
    recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained(BUNDLES[args.model].captioner), list(WORLD_CLASSES))
    annotator = load_annotator("world")
    groups = prompt_groups(args.count, args.stream)[args.count :]  # the two-class prompts
    prompts = [caption(g) for g in groups]
    base = [args.stream * 100_000 + args.count + i for i in range(len(prompts))]  # their seeds in the bench's numbering
    found, captioned, soft, hard = [], [], [], []
    for k in range(args.candidates):
        seeds = [candidate_seeds(s, args.candidates)[k] for s in base]
        images, masks = [], []
        for i in range(0, len(prompts), 25):
            result = generate_grounded(pipe, module, prompts[i : i + 25], groups[i : i + 25], seeds[i : i + 25],
                                       guidance_scale=card.guidance_scale, num_inference_steps=card.num_inference_steps)
            images += result.images
            masks += result.masks
        found.append(found_classes(annotator, images, groups, 25))
        with torch.no_grad():
            logits = torch.cat([recogniser.class_logits(encode_images(pipe, pixel_tensor(np.stack([np.asarray(im) for im in images[i : i + 25]]))))
                                for i in range(0, len(images), 25)])
        captioned.append(np.array([float(class_set_log_probability(logits[j], [WORLD_CLASSES.index(n) for n in g])) for j, g in enumerate(groups)]))
        for kind, rows in ((soft, masks), (hard, [m > 0.5 for m in masks])):
            kind.append(np.array([float(torch.minimum(m[0], m[1]).float().sum() / m.float().sum((1, 2)).min().clamp(min=1)) for m in rows]))
        print(f"candidate {k}: two classes {100 * found[-1].mean():.1f}%; mean soft / hard overlap, found "
              f"{soft[-1][found[-1]].mean():.2f} / {hard[-1][found[-1]].mean():.2f}, missed {soft[-1][~found[-1]].mean():.2f} / "
              f"{hard[-1][~found[-1]].mean():.2f}", flush=True)
    found, captioned, columns = np.stack(found), np.stack(captioned), np.arange(len(groups))
    print("| weight of the overlap | soft | hard |\n|---|---|---|")
    for weight in args.weights:
        kept = [found[(captioned - weight * np.stack(kind)).argmax(0), columns].mean() for kind in (soft, hard)]
        print(f"| {weight:g} | {100 * kept[0]:.1f}% | {100 * kept[1]:.1f}% |", flush=True)
    alone = [found[(-np.stack(kind)).argmax(0), columns].mean() for kind in (soft, hard)]
    print(f"| overlap alone | {100 * alone[0]:.1f}% | {100 * alone[1]:.1f}% |\n| any (an oracle) | {100 * found.any(0).mean():.1f}% | |")


if __name__ == "__main__":
    main()
