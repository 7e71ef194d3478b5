"""Ad hoc: a world model's fidelity when the world captioner keeps the best of N images per prompt.

The fidelity bench's prompts and seeds (candidate 0 is the bench's own image), N images per prompt, the
captioner of the model's bundle scoring each by `class_set_log_probability` of exactly the prompt's classes;
the world annotator judges the kept one; with the counter of world-layout's bundle added (the log-probability of
exactly one object of each prompted class), and with the counter alone. Prints one row per N (the first N candidates)
and chooser, and writes nothing.

    cd benchmarks && python adhoc/text_candidates.py --model world-dit --candidates 8 [--count 200] [--stream 0] [--guidance G]
        [--count-guidance S] [--two-only]

With `--count-guidance S`, every image is sampled with counting guidance S by the same counter toward one object of each
prompted class (`synthseg.guidance.prompt_steering`); `--two-only` leaves out the one-class prompts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_world_fidelity import found_classes, prompt_groups, sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="world-dit")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--stream", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=None, help="default: the model card's")
    parser.add_argument("--count-guidance", type=float, default=0.0)
    parser.add_argument("--two-only", action="store_true")
    args = parser.parse_args()

    from synthseg.annotators import load_annotator
    from synthseg.captioner import ImplicitCaptioner, Recogniser, class_set_log_probability
    from synthseg.counter import CountJudge
    from synthseg.latents import encode_images, pixel_tensor
    from synthseg.pipeline import load_pipeline
    from synthseg.prompts import caption
    from synthseg.registry import BUNDLES, model_card
    from synthseg.world import WORLD_CLASSES

    card = model_card(args.model)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained(BUNDLES[args.model].captioner), list(WORLD_CLASSES))
    counter = CountJudge.from_pretrained(BUNDLES["world-layout"].counter)
    annotator = load_annotator("world")
    groups = prompt_groups(args.count, args.stream)
    ones = 0 if args.two_only else args.count  # where the two-class prompts start
    groups = groups[args.count - ones :]
    prompts = [caption(g) for g in groups]
    base = [args.stream * 100_000 + args.count - ones + i for i in range(len(prompts))]  # the same seeds with or without --two-only
    found, scores, counts = [], [], []
    for k in range(args.candidates):
        seeds = base if k == 0 else [int(np.random.default_rng([s, k]).integers(2**31)) for s in base]
        images = sample(pipe, prompts, seeds, card.num_inference_steps, card.guidance_scale if args.guidance is None else args.guidance, 25,
                        groups, counter, args.count_guidance)
        found.append(found_classes(annotator, images, groups, 25))
        with torch.no_grad():
            logits = torch.cat([recogniser.class_logits(encode_images(pipe, pixel_tensor(np.stack([np.asarray(im) for im in images[i : i + 25]]))))
                                for i in range(0, len(images), 25)])
        scores.append(np.array([float(class_set_log_probability(logits[j], [WORLD_CLASSES.index(n) for n in g])) for j, g in enumerate(groups)]))
        counts.append(np.array([float(counter.log_probability(np.asarray(im)[None], g)[0]) for im, g in zip(images, groups)]))
        print(f"candidate {k}: one class {100 * found[-1][:ones].mean():.1f}%, two {100 * found[-1][ones:].mean():.1f}%", flush=True)
    found, scores, counts = np.stack(found), np.stack(scores), np.stack(counts)  # (N, P)
    print("| candidates | chosen by | one class | two classes |\n|---|---|---|---|")
    for n in sorted({1, 2, 4, 6, 8, args.candidates} & set(range(1, args.candidates + 1))):
        for chooser, score in (("the captioner", scores), ("the captioner and counter", scores + counts), ("the counter", counts),
                               ("any (an oracle)", found.astype(float))):
            kept = found[:n][score[:n].argmax(0), np.arange(found.shape[1])]
            print(f"| {n} | {chooser} | {100 * kept[:ones].mean():.1f}% | {100 * kept[ones:].mean():.1f}% |", flush=True)


if __name__ == "__main__":
    main()
