"""Ad hoc: the diffusion classifier (`synthseg.classify`) as the judge among a prompt's candidates.

The fidelity bench's prompts of a stream, N candidates each (plain sampling, `candidates.candidate_seeds`). Each
candidate is read by the diffusion classifier of a pipeline (`--judge`: the generator itself, or another world model on
the same VAE), with the world captioner choosing its candidate lists; a candidate agrees when the classifier names
exactly the prompt's classes. Kept: the captioner's best among those that agree (among all where none does). The world
annotator judges the kept one. Prints rows for the captioner alone and with the classifier; writes nothing.

    cd benchmarks && python adhoc/classifier_choice.py --model world-dit --judge world-dit --candidates 4 --stream 1 [--count 200]
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
    parser.add_argument("--judge", default="world-dit", help="the pipeline whose denoiser classifies")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--stream", type=int, default=1)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--pairs-only", action="store_true", help="only the two-class prompts")
    args = parser.parse_args()

    from synthseg.annotators import load_annotator
    from synthseg.candidates import candidate_seeds
    from synthseg.captioner import ImplicitCaptioner, Recogniser, class_set_log_probability
    from synthseg.classify import DiffusionClassifier
    from synthseg.latents import encode_images, pixel_tensor
    from synthseg.pipeline import load_pipeline
    from synthseg.prompts import caption
    from synthseg.registry import BUNDLES, model_card
    from synthseg.world import WORLD_CLASSES

    card = model_card(args.model)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    judge = pipe if args.judge == args.model else load_pipeline(args.judge)
    captioner = ImplicitCaptioner.from_pretrained(BUNDLES[args.model].captioner)
    recogniser = Recogniser(pipe, captioner, list(WORLD_CLASSES))
    classifier = DiffusionClassifier(judge, Recogniser(judge, captioner, list(WORLD_CLASSES)), "a photograph of {}", draws=args.draws)
    annotator = load_annotator("world")
    groups = prompt_groups(args.count, args.stream)
    base = [args.stream * 100_000 + i for i in range(len(groups))]
    if args.pairs_only:
        groups, base = groups[args.count :], base[args.count :]
    prompts = [caption(g) for g in groups]
    found, scores, agree = [], [], []
    for k in range(args.candidates):
        seeds = [candidate_seeds(s, args.candidates)[k] for s in base]
        images = sample(pipe, prompts, seeds, card.num_inference_steps, card.guidance_scale, 25)
        found.append(found_classes(annotator, images, groups, 25))
        with torch.no_grad():
            latents = torch.cat([encode_images(pipe, pixel_tensor(np.stack([np.asarray(im) for im in images[i : i + 25]])))
                                 for i in range(0, len(images), 25)])
        logits = recogniser.class_logits(latents)
        scores.append(np.array([float(class_set_log_probability(logits[j], [WORLD_CLASSES.index(n) for n in g])) for j, g in enumerate(groups)]))
        named = [classifier(latents[j : j + 1], [j])[0] for j in range(len(groups))]
        agree.append(np.array([sorted(n) == sorted(g) for n, g in zip(named, groups)]))
        print(f"candidate {k}: found {100 * found[-1].mean():.1f}%, classifier agrees {100 * agree[-1].mean():.1f}% "
              f"(found where it agrees {100 * found[-1][agree[-1]].mean():.1f}%, where not {100 * found[-1][~agree[-1]].mean():.1f}%)", flush=True)
    found, scores, agree = np.stack(found), np.stack(scores), np.stack(agree)
    columns, single = np.arange(len(groups)), np.array([len(g) == 1 for g in groups])
    print("| candidates | chosen by | one class | two classes |\n|---|---|---|---|")
    for n in sorted({1, 2, 4, args.candidates} & set(range(1, args.candidates + 1))):
        for chooser, score in (("the captioner", scores), ("the classifier, then the captioner", scores + 1000 * agree),
                               ("any (an oracle)", found.astype(float))):
            kept = found[:n][score[:n].argmax(0), columns]
            one = f"{100 * kept[single].mean():.1f}%" if single.any() else ""
            print(f"| {n} | {chooser} | {one} | {100 * kept[~single].mean():.1f}% |", flush=True)


if __name__ == "__main__":
    main()
