"""Ad hoc: are the grounding module's masks as good on world-dit's count-guided, chosen images as on plain ones?

Protocol i's prompts (`PromptPlanner.evaluation` of split world, Protocol i's seed), made the way make-dataset makes them
(`generate_grounded`): at world-dit's card (count guidance and the best of its candidates by its bundle's captioner and
counter), and as one plain image per prompt (no guidance, no choice). The module's masks (at 0.5) are scored against
the world annotator's, as Protocol i scores them (a class the annotator does not find is not scored). Prints one row per
way, and writes nothing.

    python benchmarks/adhoc/guided_masks.py [--per-class 10] [--pairs 60]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=60)
    args = parser.parse_args()

    from synthseg.annotators import load_annotator
    from synthseg.captioner import ImplicitCaptioner, Recogniser
    from synthseg.classes import get_split
    from synthseg.counter import CountJudge
    from synthseg.evaluation import COLUMNS
    from synthseg.generate import generate_grounded
    from synthseg.grounding import GroundingModule
    from synthseg.metrics import MaskIoU
    from synthseg.pipeline import load_pipeline
    from synthseg.prompts import PromptPlanner
    from synthseg.registry import model_card
    from synthseg.train.grounding import load_grounding_recipe
    from synthseg.triplets import target_masks

    recipe, card = load_grounding_recipe("world-dit-grounding"), model_card("world-dit")
    split = get_split(recipe.split)
    classes = list(split.all_classes)
    pipe, module, annotator = load_pipeline("world-dit"), GroundingModule.from_pretrained("world-dit"), load_annotator("world")
    pipe.set_progress_bar_config(disable=True)
    recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world-dit"), classes)
    counter = CountJudge.from_pretrained("world-dit")
    prompts = PromptPlanner(recipe.triplets.templates, 1_000_000).evaluation(classes, args.per_class, args.pairs)
    ways = {"the card: count guidance and the best of its candidates": dict(candidates=card.candidates, recogniser=recogniser,
                                                                            counter=counter, count_guidance=card.count_guidance),
            "one plain image": {}}
    print("| images | seen, 1 class | seen, 2 classes | unseen, 1 class | unseen, 2 classes | scored masks | both of two found |")
    print("|---|---|---|---|---|---|---|")
    for way, options in ways.items():
        start, scores, found_both = time.time(), {n: MaskIoU(classes) for n in (1, 2)}, []
        for i in range(0, len(prompts), 10):
            batch = prompts[i : i + 10]
            names = [p.classes for p in batch]
            result = generate_grounded(pipe, module, [p.prompt for p in batch], names, [p.seed for p in batch],
                                       guidance_scale=card.guidance_scale, num_inference_steps=card.num_inference_steps, **options)
            size = result.images[0].size[::-1]
            for j, found in enumerate(annotator.annotate([np.asarray(im) for im in result.images], names)):
                truth, missing, _ = target_masks(found, names[j], size, "union")
                if len(names[j]) == 2:
                    found_both.append(not any(missing))
                for q, name in enumerate(names[j]):
                    if not missing[q]:
                        scores[len(names[j])].update(name, result.masks[j][q].numpy() > 0.5, truth[q].astype(bool))
        groups = {"seen": split.seen, "unseen": split.unseen}
        cells = " | ".join(f"{100 * scores[n].mean(groups[s]):.1f}" for s, n in COLUMNS)
        counted = sum(int(scores[n].count.sum()) for n in (1, 2))
        print(f"| {way} | {cells} | {counted} | {100 * np.mean(found_both):.1f}% |  ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
